"""Engine prefix cache: prefill reuse per layer family, the exact-length rule, partial export and
import with a local prefix, decode-side retention, transfer reservations, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from engine_kit import drain, emitted, greedy, prompt, tiny

from prfaas.engine import runner
from prfaas.engine.prefix_store import PrefixCacheConfig, PrefixMiss
from prfaas.engine.protocol import LayerState
from prfaas.engine.runner import Engine, chunk_bounds
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, KVManifest
from prfaas.prefix_cache.pool import PoolPart

B = 16  # tokens per block
BUDGET_BYTES = 64 * 2**20
# one preset per family: Gated DeltaNet, KDA + MLA, sliding window, Mamba2 (+ Falcon-H1's Mamba2
# and K/V in every layer), short conv, dense GQA
FAMILIES = ["qwen3_next", "kimi_linear", "mimo_v2_flash", "bamba", "falcon_h1", "lfm2", "llama"]
# Resuming from a cached prefix is a chunked prefill cut at the prefix: qwen3_next's logits move
# by up to 2.2e-3 from one-shot (Gated DeltaNet's chunked kernel), exactly as a fresh engine
# chunked at the same boundaries does; the other families stay within 1e-4. A wrong prefix moves
# logits by whole units.
LOGIT_ATOL = 5e-3


def _tail(num_tokens: int, offset: int) -> tuple[int, ...]:
    """Tokens that differ from `prompt`'s at every position (another stride)."""
    return tuple((11 * i + 5 * offset + 2) % 251 for i in range(num_tokens))


def _cached_engine(name: str, **kwargs: object) -> Engine:
    return Engine(tiny(name), prefix_cache=PrefixCacheConfig(B, BUDGET_BYTES), **kwargs)  # type: ignore[arg-type]


def _run(engine: Engine, req_id: str, tokens: tuple[int, ...], max_tokens: int = 6) -> list[int]:
    return engine.generate([GenerateRequest(req_id, tokens, greedy(max_tokens))])[req_id]


def _max_logit_diff(a: Engine, b: Engine, req_a: str, req_b: str) -> float:
    """Largest logit difference over the last common steps (an importer has no first-token
    logits: they were the sender's)."""
    logits_a, logits_b = a.requests[req_a].logits, b.requests[req_b].logits
    num_steps = min(len(logits_a), len(logits_b))
    assert num_steps > 0
    pairs = zip(logits_a[-num_steps:], logits_b[-num_steps:], strict=True)
    return max(float((x - y).abs().max()) for x, y in pairs)


@contextmanager
def _counted_tokens(engine: Engine) -> Iterator[list[int]]:
    """Tokens each forward of the engine's model computes (input length per call)."""
    engine.template()  # its probe prefill runs the same model: not counted
    counts: list[int] = []
    embed = engine.model.get_input_embeddings()
    hook = embed.register_forward_hook(lambda _m, args, _o: counts.append(args[0].shape[1]))
    try:
        yield counts
    finally:
        hook.remove()


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_reuses_a_shared_prefix_and_matches_a_fresh_engine(name: str) -> None:
    first = prompt(90)  # checkpoints its state at 80 tokens (the last block boundary below 90)
    second = first[:80] + _tail(20, 1)  # shares 5 whole blocks
    engine = _cached_engine(name, record_logits=True)
    _run(engine, "first", first)
    with _counted_tokens(engine) as counts:
        out = _run(engine, "second", second)
    assert engine.num_cached_tokens("second") == 80
    assert sum(counts) == 20 + 5  # the suffix (cut at a state checkpoint at 96), then 5 decodes
    fresh = Engine(tiny(name), record_logits=True)
    assert out == _run(fresh, "second", second)
    assert _max_logit_diff(engine, fresh, "second", "second") < LOGIT_ATOL

    # negative controls: a different first token shares no block and changes the output; a
    # poisoned cache changes the logits of the very same prompt
    other = (first[0] + 1, *second[1:])
    _run(engine, "other", other)
    assert engine.num_cached_tokens("other") == 0
    assert _max_logit_diff(engine, fresh, "other", "second") > 10 * LOGIT_ATOL
    _poison(engine)
    _run(engine, "poisoned", second)
    assert engine.num_cached_tokens("poisoned") == 96  # "second" left its own blocks
    assert _max_logit_diff(engine, fresh, "poisoned", "second") > 10 * LOGIT_ATOL


def _poison(engine: Engine) -> None:
    """Zero every tensor the engine's prefix cache holds."""
    store = engine._prefix
    assert store is not None
    tensors = [t for block in store._attention.values() for t in block.values()]
    tensors += [t for ckpt in store._states.values() for t in ckpt.tensors.values()]
    assert tensors
    with torch.inference_mode():  # they were cloned inside the engine's inference mode
        for tensor in tensors:
            tensor.zero_()


def test_reuse_is_bit_identical_to_a_prefill_chunked_at_the_same_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached prefix is exactly the state the chunked prefill had: no rounding of its own."""
    first = prompt(90)
    second = first[:80] + _tail(20, 1)
    engine = _cached_engine("qwen3_next", record_logits=True)
    _run(engine, "first", first)
    _run(engine, "second", second)
    monkeypatch.setattr(runner, "chunk_bounds", lambda *_: [(0, 80), (80, 96), (96, 100)])
    chunked = Engine(tiny("qwen3_next"), record_logits=True)
    _run(chunked, "second", second)
    assert _max_logit_diff(engine, chunked, "second", "second") == 0.0


@pytest.mark.parametrize(("name", "expected"), [("qwen3_next", 48), ("llama", 80)])
def test_prefix_ending_mid_block_reuses_up_to_a_state_checkpoint(name: str, expected: int) -> None:
    """A hybrid model resumes only where a state checkpoint is; attention-only models anywhere."""
    engine = _cached_engine(name)
    _run(engine, "p0", prompt(50))  # state checkpoint at 48
    _run(engine, "p1", prompt(100))  # reuses 48, checkpoint at 96, attention blocks 0..5
    assert engine.num_cached_tokens("p1") == 48
    shares_90 = prompt(90) + _tail(10, 2)  # attention blocks 0..4 match (80 tokens)
    out = _run(engine, "p2", shares_90)
    assert engine.num_cached_tokens("p2") == expected
    assert out == _run(Engine(tiny(name)), "p2", shares_90)


def test_identical_prompt_leaves_its_last_block_to_compute() -> None:
    engine = _cached_engine("qwen3_next")
    _run(engine, "a", prompt(64))  # checkpoint at 48: 64 would leave no token to compute
    with _counted_tokens(engine) as counts:
        _run(engine, "b", prompt(64), max_tokens=1)
    assert engine.num_cached_tokens("b") == 48
    assert counts == [16]


def test_layer_callback_fires_on_the_last_chunk_after_reuse() -> None:
    engine = _cached_engine("qwen3_next", chunk_size=32)
    _run(engine, "a", prompt(90))
    fired: list[tuple[LayerState, list[bytes]]] = []

    def on_layer(_req_id: str, state: LayerState) -> None:
        fired.append((state, [bytes(b) for b in state.buffers]))

    second = GenerateRequest("b", prompt(80) + _tail(40, 3), greedy(4))
    with _counted_tokens(engine) as counts:
        engine.prefill([second], on_layer=on_layer, skip_tokens={"b": 64})
    assert engine.num_cached_tokens("b") == 80
    assert counts == [16, 16, 8]  # chunks end at multiples of 32 and at the checkpoint (112)
    exported = engine.export("b", num_prefix_tokens=64)
    assert tuple(s.entry for s, _ in fired) == exported.manifest.layers
    assert [c for _, content in fired for c in content] == [bytes(b) for b in exported.buffers]
    assert exported.manifest.layers[3].tensors[0].shape == (1, 2, 120 - 64, 32)


def _decode_imported(engine: Engine, exported: object, request: GenerateRequest) -> list[int]:
    manifest = KVManifest.from_dict(json.loads(json.dumps(exported.manifest.to_dict())))  # type: ignore[attr-defined]
    buffers = [bytearray(b) for b in exported.buffers]  # type: ignore[attr-defined]
    engine.import_(manifest, buffers, request.sampling, prompt_token_ids=request.prompt_token_ids)
    first = engine.first_delta(request.req_id)
    return [*first.token_ids, *emitted(drain(engine).get(request.req_id, []))]


@pytest.mark.parametrize("name", FAMILIES)
def test_partial_transfer_with_the_receivers_prefix_decodes_like_a_whole_one(name: str) -> None:
    sender = _cached_engine(name)
    receiver = _cached_engine(name, record_logits=True)
    # turn 1: a whole transfer; the receiver decodes it in a batch with a local request, and
    # keeps the blocks of prompt + output when it frees it
    turn1 = GenerateRequest("t1", prompt(70), greedy(12))
    sender.prefill([turn1])
    receiver.add_request(GenerateRequest("other", prompt(30, offset=4), greedy(12)))
    receiver.step()  # prefills "other" so that both decode together
    out1 = _decode_imported(receiver, sender.export("t1"), turn1)
    sender.free("t1")
    receiver.free("t1")  # 70 + 11 computed tokens: 5 blocks (80 tokens) stay
    # turn 2 extends turn 1's prompt and output: the receiver holds 80 tokens of it
    turn2 = GenerateRequest("t2", (*turn1.prompt_token_ids, *out1)[:80] + _tail(14, 5), greedy(6))
    held = receiver.cached_prefix_tokens(turn2.prompt_token_ids)
    assert held == 80
    assert receiver.pin_prefix("t2", turn2.prompt_token_ids, held)
    sender.prefill([turn2], skip_tokens={"t2": held})
    assert sender.num_cached_tokens("t2") == 64  # turn 1's checkpoint at 64
    whole = sender.export("t2")
    partial = sender.export("t2", num_prefix_tokens=held)
    assert partial.manifest.num_prefix_tokens == held
    assert partial.manifest.total_bytes < whole.manifest.total_bytes
    out2 = _decode_imported(receiver, partial, turn2)
    assert receiver.num_cached_tokens("t2") == held
    reference = Engine(tiny(name), record_logits=True)
    assert out2 == _run(reference, "t2", turn2.prompt_token_ids)
    assert _max_logit_diff(receiver, reference, "t2", "t2") < LOGIT_ATOL


def test_partial_manifest_without_the_prefix_is_a_prefix_miss() -> None:
    sender = _cached_engine("qwen3_next")
    request = GenerateRequest("r", prompt(70), greedy(4))
    sender.prefill([request])
    partial = sender.export("r", num_prefix_tokens=64)
    buffers = [bytearray(b) for b in partial.buffers]
    ids = request.prompt_token_ids
    with pytest.raises(PrefixMiss, match="block 0 of the 4-block prefix"):
        _cached_engine("qwen3_next").import_(partial.manifest, buffers, prompt_token_ids=ids)
    with pytest.raises(PrefixMiss, match="no prefix cache"):
        Engine(tiny("qwen3_next")).import_(partial.manifest, buffers, prompt_token_ids=ids)
    with pytest.raises(PrefixMiss, match="prompt's token ids"):
        _cached_engine("qwen3_next").import_(partial.manifest, buffers)
    receiver = _cached_engine("qwen3_next")
    _run(receiver, "warm", ids[:40], max_tokens=1)  # holds 2 blocks (32 tokens), not 4
    assert receiver.cached_prefix_tokens(ids) == 32
    assert not receiver.pin_prefix("r", ids, 64)
    with pytest.raises(PrefixMiss, match="block 2 "):
        receiver.import_(partial.manifest, buffers, prompt_token_ids=ids)
    assert "r" not in receiver.requests


@pytest.mark.parametrize(
    ("name", "num_pinned"),
    [
        ("llama", 64),
        ("qwen3_next", 48),  # no state checkpoint at 48: a receiver pins attention only
    ],
)
def test_pinned_prefix_survives_other_prompts_until_import(name: str, num_pinned: int) -> None:
    sender = _cached_engine(name)
    receiver = Engine(tiny(name), prefix_cache=PrefixCacheConfig(B, 300_000))
    ids = prompt(70)
    _run(receiver, "warm", ids, max_tokens=1)
    assert receiver.pin_prefix("r", ids, num_pinned)
    pool = receiver.prefix_pool
    assert pool is not None
    assert pool.num_pinned_bytes > 0
    for i in range(4):  # other prompts fill the small budget and evict what they can
        _run(receiver, f"fill{i}", _tail(70, 10 + i), max_tokens=1)
    pinned = receiver._prefix.hashes(ids[:num_pinned])  # type: ignore[union-attr]
    assert all(pool.has(h, PoolPart.ATTENTION) for h in pinned)
    request = GenerateRequest("r", ids, greedy(4))
    sender.prefill([request])
    out = _decode_imported(receiver, sender.export("r", num_prefix_tokens=num_pinned), request)
    assert out == _run(Engine(tiny(name)), "r", ids, max_tokens=4)
    assert pool.num_pinned_bytes == 0  # import_ released the pin
    for i in range(4):  # now unpinned, the prefix can be evicted like any other
        _run(receiver, f"more{i}", _tail(70, 20 + i), max_tokens=1)
    assert not all(pool.has(h, PoolPart.ATTENTION) for h in pinned)


def test_store_and_pool_stay_in_step_under_eviction() -> None:
    engine = Engine(tiny("qwen3_next"), prefix_cache=PrefixCacheConfig(B, 400_000))
    for i in range(6):
        _run(engine, f"r{i}", _tail(60 + 7 * i, i), max_tokens=1)
        pool = engine.prefix_pool
        assert pool is not None
        stats = engine._prefix.stats()  # type: ignore[union-attr]
        assert stats["num_attention_tensors_held"] == stats["num_attention_blocks"]
        assert stats["num_state_checkpoints_held"] == stats["num_state_checkpoints"]
        assert pool.used_bytes <= pool.budget_bytes
    assert engine.prefix_pool.stats()["last_seq"] > len(engine.prefix_pool)  # type: ignore[union-attr]


def test_export_reserves_its_bytes_until_free() -> None:
    engine = _cached_engine("qwen3_next")
    engine.prefill([GenerateRequest("r", prompt(40), greedy(4))])
    pool = engine.prefix_pool
    assert pool is not None
    exported = engine.export("r", transfer_id="t-1", num_prefix_tokens=16)
    assert pool.transfer_bytes("t-1") == exported.manifest.total_bytes
    engine.free("r")
    assert pool.num_transfer_bytes == 0


def test_failed_or_unknown_prompt_requests_store_nothing_on_free() -> None:
    sender = Engine(tiny("llama"))
    receiver = _cached_engine("llama")
    request = GenerateRequest("r", prompt(40), greedy(3))
    sender.prefill([request])
    exported = sender.export("r")
    receiver.import_(exported.manifest, [bytearray(b) for b in exported.buffers], greedy(3))
    drain(receiver)
    receiver.free("r")
    assert len(receiver.prefix_pool) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["minimax", "jamba"])
def test_prefix_cache_refused_where_resuming_is_not_exact(name: str) -> None:
    with pytest.raises(UserError, match=f"prefix cache is not exact for {name}.*multi-token"):
        _cached_engine(name)


def test_bad_prefix_arguments_are_user_errors() -> None:
    with pytest.raises(ValueError, match="block_tokens"):
        PrefixCacheConfig(0, 10)
    with pytest.raises(ValueError, match="budget_bytes"):
        PrefixCacheConfig(16, -1)
    engine = _cached_engine("llama")
    engine.prefill([GenerateRequest("r", prompt(20), greedy(3))])
    with pytest.raises(UserError, match="not 20"):
        engine.export("r", num_prefix_tokens=20)
    with pytest.raises(UserError, match="not being prefilled"):
        engine.prefill([GenerateRequest("s", prompt(20), greedy(3))], skip_tokens={"x": 16})
    with pytest.raises(UserError, match="num_prefix_tokens"):
        KVManifest("t", "r", "llama", 0, (), 10, 1, num_prefix_tokens=10)
    old = KVManifest("t", "r", "llama", 0, (), 10, 1).to_dict()
    del old["num_prefix_tokens"]
    assert KVManifest.from_dict(old).num_prefix_tokens == 0
    assert not engine.pin_prefix("x", prompt(40), 8)  # not a whole block


def test_chunk_bounds() -> None:
    assert chunk_bounds(0, 100, None) == [(0, 100)]
    assert chunk_bounds(0, 100, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert chunk_bounds(48, 100, 32, 96) == [(48, 64), (64, 96), (96, 100)]
    assert chunk_bounds(0, 90, None, 80) == [(0, 80), (80, 90)]
    assert chunk_bounds(80, 90, None, 80) == [(80, 90)]


def test_disabled_prefix_cache_keeps_todays_behaviour() -> None:
    engine = Engine(tiny("qwen3_next"))
    assert engine.prefix_pool is None
    assert engine.cached_prefix_tokens(prompt(40)) == 0
    assert not engine.pin_prefix("r", prompt(40), 16)
    _run(engine, "a", prompt(40))
    assert engine.num_cached_tokens("a") == 0
    assert torch.is_tensor(engine.requests["a"].cache.layers[3].keys)
