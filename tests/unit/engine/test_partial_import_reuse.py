"""What a decode engine keeps after a partial import is right for the next turn.

A partial import leaves the receiver's own cached prefix out of the transfer and puts it back in
front of the received K/V; when the request finishes, the blocks of the assembled cache (prompt
and output) stay in the receiver's prefix cache. Here a three-turn conversation runs on one
receiver: turn 1 arrives whole, turns 2 and 3 each leave out what the receiver holds, so turn 3's
prefix includes blocks kept from turn 2's assembled cache (local prefix, received tokens and
decoded tokens). Every turn decodes in a batch with a longer local request that finishes on the
same step, so the kept blocks come from the batch cache split back into its rows. Each turn's
tokens and logits are compared with an engine that computes the whole prompt itself, on a dense
model, a linear-attention hybrid and a sliding-window model; on the dense model a fourth turn,
prefilled locally, reuses the kept blocks too. Negative control: a kept block changed on the way in
changes turn 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from engine_kit import drain, emitted, greedy, prompt, tiny

from prfaas.engine import Engine, ExportedState
from prfaas.messages import GenerateRequest, KVManifest
from prfaas.prefix_cache.config import PrefixCacheConfig

B = 16  # tokens per block
BUDGET_BYTES = 64 * 2**20
# dense GQA; Gated DeltaNet + full attention; sliding window (64 tokens) + full attention
FAMILIES = ["llama", "qwen3_next", "gemma3_text"]
LOGIT_ATOL = 5e-3  # as test_prefix_reuse: qwen3_next's chunked kernel moves logits by ~2e-3
TURN1_TOKENS = 40  # + 8 decoded tokens computed: the receiver keeps 3 blocks (48 tokens)
TURN2_TAIL = 20  # 48 held + 20 = 68 prompt tokens; + 12 decoded computed: 5 blocks kept (80)
TURN3_TAIL = 15  # 80 held + 15 = 95 prompt tokens
HELD_TOKENS = {1: 0, 2: 48, 3: 80}
MAX_TOKENS = {1: 9, 2: 13, 3: 6}
MATE_EXTRA_TOKENS = 24  # the batch mate's prompt is longer: the turn's row is left-padded


@dataclass
class Turn:
    """One turn as the receiver served it."""

    prompt_token_ids: tuple[int, ...]
    num_held_tokens: int  # prefix left out of the transfer: the receiver supplied it
    output: list[int]
    logits: list[torch.Tensor]  # per decoded token (the first token's were the sender's)


def _tail(num_tokens: int, offset: int) -> tuple[int, ...]:
    """Tokens that differ from `prompt`'s (another stride)."""
    return tuple((11 * i + 5 * offset + 2) % 251 for i in range(num_tokens))


def _receiver(name: str) -> Engine:
    return Engine(tiny(name), prefix_cache=PrefixCacheConfig(B, BUDGET_BYTES), record_logits=True)


def _over_the_wire(exported: ExportedState) -> tuple[KVManifest, list[bytearray]]:
    """What a receiver gets: the manifest through JSON, the payload in fresh writable buffers."""
    manifest = KVManifest.from_dict(json.loads(json.dumps(exported.manifest.to_dict())))
    return manifest, [bytearray(b) for b in exported.buffers]


def _zero_leading_tokens(manifest: KVManifest, buffers: list[bytearray], num_tokens: int) -> None:
    """Zero the first `num_tokens` carried tokens of every full-attention layer's K/V."""
    index = 0
    for layer in manifest.layers:
        is_full_attention = "sliding_window" not in layer.flags.get("attrs", {})
        for entry in layer.tensors:
            if is_full_attention and entry.name.rsplit("/", 1)[-1] in ("keys", "values"):
                dtype = getattr(torch, entry.dtype)
                kv = torch.frombuffer(buffers[index], dtype=dtype).view(entry.shape)
                kv[:, :, :num_tokens] = 0  # [1, heads, carried tokens, dim]
            index += 1


def _serve_turn(
    name: str, receiver: Engine, turn: int, prompt_ids: tuple[int, ...], corrupt_tokens: int = 0
) -> Turn:
    """Prefill `prompt_ids` on a sender that computes all of it, leave out what the receiver
    holds, import there and decode in a batch with a longer local request; free both (the
    receiver keeps their blocks). `corrupt_tokens` > 0 zeroes that many leading received tokens
    of every full-attention layer's K/V before the import."""
    req_id = f"turn{turn}"
    sampling = greedy(MAX_TOKENS[turn])
    held = receiver.cached_prefix_tokens(prompt_ids)
    if held:
        assert receiver.pin_prefix(req_id, prompt_ids, held)
    mate_ids = prompt(len(prompt_ids) + MATE_EXTRA_TOKENS, offset=turn)
    receiver.add_request(GenerateRequest(f"mate{turn}", mate_ids, sampling))
    receiver.step()  # prefills the mate: it holds its first token, as the import will
    sender = Engine(tiny(name))
    sender.prefill([GenerateRequest(req_id, prompt_ids, sampling)], skip_tokens={req_id: held})
    manifest, buffers = _over_the_wire(sender.export(req_id, num_prefix_tokens=held))
    if corrupt_tokens:
        _zero_leading_tokens(manifest, buffers, corrupt_tokens)
    receiver.import_(manifest, buffers, sampling, prompt_token_ids=prompt_ids)
    first = receiver.first_delta(req_id)
    deltas = drain(receiver)
    assert deltas[f"mate{turn}"][-1].finish_reason == deltas[req_id][-1].finish_reason == "length"
    assert receiver.num_cached_tokens(req_id) == held
    logits = receiver.requests[req_id].logits
    receiver.free(req_id)
    receiver.free(f"mate{turn}")
    return Turn(prompt_ids, held, [*first.token_ids, *emitted(deltas[req_id])], logits)


def _conversation(name: str, receiver: Engine, corrupt_turn2_tokens: int = 0) -> list[Turn]:
    """Three turns, each the last one's prompt and output (as far as computed) plus new tokens."""
    turn1 = _serve_turn(name, receiver, 1, prompt(TURN1_TOKENS))
    ids2 = (*turn1.prompt_token_ids, *turn1.output)[: HELD_TOKENS[2]] + _tail(TURN2_TAIL, 2)
    turn2 = _serve_turn(name, receiver, 2, ids2, corrupt_turn2_tokens)
    ids3 = (*turn2.prompt_token_ids, *turn2.output)[: HELD_TOKENS[3]] + _tail(TURN3_TAIL, 3)
    return [turn1, turn2, _serve_turn(name, receiver, 3, ids3)]


def _fresh(
    name: str, turn: int, prompt_ids: tuple[int, ...]
) -> tuple[list[int], list[torch.Tensor]]:
    """Tokens and per-token logits of an engine without a cache that computes the whole prompt."""
    engine = Engine(tiny(name), record_logits=True)
    req_id = f"turn{turn}"
    out = engine.generate([GenerateRequest(req_id, prompt_ids, greedy(MAX_TOKENS[turn]))])
    return out[req_id], engine.requests[req_id].logits


def _max_logit_diff(turn: Turn, fresh_logits: list[torch.Tensor]) -> float:
    """Largest logit difference over the turn's decoded tokens."""
    assert len(turn.logits) == len(fresh_logits) - 1 > 0
    pairs = zip(turn.logits, fresh_logits[1:], strict=True)
    return max(float((got - want).abs().max()) for got, want in pairs)


@pytest.mark.parametrize("name", FAMILIES)
def test_third_turn_reuses_blocks_kept_from_a_partial_import(name: str) -> None:
    receiver = _receiver(name)
    turns = _conversation(name, receiver)
    assert [t.num_held_tokens for t in turns] == list(HELD_TOKENS.values())
    for number, turn in enumerate(turns, start=1):
        want, want_logits = _fresh(name, number, turn.prompt_token_ids)
        assert turn.output == want, f"turn {number}"
        assert _max_logit_diff(turn, want_logits) < LOGIT_ATOL, f"turn {number}"
    assert len(set(turns[2].output)) > 1  # not a model that repeats one token


def test_a_local_prefill_reuses_blocks_kept_from_a_partial_import() -> None:
    """Attention-only models resume a prefill from kept blocks without a state checkpoint."""
    receiver = _receiver("llama")
    turns = _conversation("llama", receiver)
    ids4 = (*turns[2].prompt_token_ids, *turns[2].output)[:96] + _tail(9, 4)
    out = receiver.generate([GenerateRequest("turn4", ids4, greedy(6))])["turn4"]
    assert receiver.num_cached_tokens("turn4") == 96  # blocks kept by turns 1 (0-2), 2 and 3
    fresh = Engine(tiny("llama")).generate([GenerateRequest("turn4", ids4, greedy(6))])
    assert out == fresh["turn4"]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_changed_kept_block_changes_the_third_turn(name: str) -> None:
    """Negative control: turn 2's first received block (tokens 48..63, kept for turn 3) arrives
    with its full-attention K/V zeroed; turn 3's own transfer is intact, yet its logits move."""
    turns = _conversation(name, _receiver(name), corrupt_turn2_tokens=B)
    assert turns[2].num_held_tokens >= 64  # turn 3 takes the changed block from the receiver
    _, want_logits = _fresh(name, 3, turns[2].prompt_token_ids)
    assert _max_logit_diff(turns[2], want_logits) > 10 * LOGIT_ATOL
