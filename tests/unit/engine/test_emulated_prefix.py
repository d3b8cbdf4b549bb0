"""Emulated engine with a prefix cache: only the uncached suffix is timed, a receiver holding a
prefix gets a smaller payload, and the bookkeeping matches the real engine's rules."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from prfaas.engine import prefix_book
from prfaas.engine.emulated import make_emulated_engine
from prfaas.engine.validation import PrefixMiss
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.models import load_model_spec
from prfaas.perf import CostModel, get_hardware
from prfaas.prefix_cache import block_hashes
from prfaas.prefix_cache.config import PrefixCacheConfig

MODEL = "qwen3.5-397b"  # hybrid: Gated DeltaNet + full attention
BLOCK = 256
CONFIG = PrefixCacheConfig(block_tokens=BLOCK, budget_bytes=8 << 30)


def _engine(slept: list[float], hardware: str = "H200", config=CONFIG):
    return make_emulated_engine(MODEL, hardware, 8, sleep=slept.append, prefix_cache=config)


def _req(req_id: str, prompt: tuple[int, ...], max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(req_id, prompt, SamplingParams(max_tokens=max_tokens, seed=3))


def test_second_prefill_times_only_the_uncached_suffix() -> None:
    slept: list[float] = []
    engine = _engine(slept)
    first = tuple(range(1, 1001))  # 1000 tokens: 3 blocks, state checkpoint at 768
    engine.prefill([_req("a", first)])
    assert engine.num_cached_tokens("a") == 0
    engine.free("a")
    slept.clear()
    second = first + tuple(range(2000, 2500))
    engine.prefill([_req("b", second)])
    assert engine.num_cached_tokens("b") == 768  # the checkpoint, not the 1000 shared tokens
    cost = CostModel(load_model_spec(MODEL), get_hardware("H200"), 8)
    assert sum(slept) == pytest.approx(cost.t_prefill_s(len(second) - 768))


def test_state_is_reused_only_at_its_exact_length() -> None:
    engine = _engine([])
    shared = tuple(range(1, 2 * BLOCK + 1))  # exactly two blocks
    engine.prefill([_req("a", shared + (7,) * 10)])  # checkpoint at 512
    engine.free("a")
    diverging = shared[: BLOCK + 100] + (9,) * 400  # shares 1.4 blocks: no state at 256
    engine.prefill([_req("b", diverging)])
    assert engine.num_cached_tokens("b") == 0
    engine.free("b")
    longer = shared + (5,) * 300
    engine.prefill([_req("c", longer)])
    assert engine.num_cached_tokens("c") == 2 * BLOCK


def test_receiver_with_a_prefix_gets_a_smaller_payload_and_imports_it() -> None:
    sender, receiver = _engine([]), _engine([], "H20")
    turn1 = tuple(range(1, 1201))
    receiver.generate([_req("t1", turn1, max_tokens=3)])  # decode side now holds turn 1's KV
    receiver.free("t1")
    turn2 = turn1 + tuple(range(3000, 3600))
    held = receiver.cached_prefix_tokens(turn2)
    assert held == 1024  # four complete blocks of turn 1 (its output's KV ends mid-block)
    sender.prefill([_req("t2", turn2)], skip_tokens={"t2": held})
    partial = sender.export("t2", "x", num_prefix_tokens=held)
    whole = sender.export("t2", "y")
    assert partial.manifest.num_prefix_tokens == held
    spec = load_model_spec(MODEL)
    saved = whole.manifest.total_bytes - partial.manifest.total_bytes
    assert saved == spec.kv_bytes(len(turn2)) - spec.kv_bytes(len(turn2) - held)
    assert receiver.pin_prefix("t2", turn2, held)
    receiver.import_(partial.manifest, partial.buffers, prompt_token_ids=turn2)
    assert receiver.requests["t2"].num_computed_tokens == len(turn2)


def test_a_decode_instance_hashes_each_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin, import, decode and free of one request: the pin hashes the prefix it holds, the
    import finds the prefix by those hashes, and keeping the finished request's blocks hashes
    only what came after them; every computed token is hashed exactly once."""
    sender, receiver = _engine([]), _engine([], "H20")
    turn1 = tuple(range(1, 1201))
    receiver.generate([_req("t1", turn1, max_tokens=3)])
    receiver.free("t1")
    turn2 = turn1 + tuple(range(3000, 3600))
    held = receiver.cached_prefix_tokens(turn2)
    sender.prefill([_req("t2", turn2, max_tokens=300)], skip_tokens={"t2": held})
    partial = sender.export("t2", "x", num_prefix_tokens=held)
    hashed: list[int] = []

    def counted(token_ids: Sequence[int], block_tokens: int, parent_hash: int = 0) -> list[int]:
        hashed.append(len(token_ids) // block_tokens * block_tokens)
        return block_hashes(token_ids, block_tokens, parent_hash)

    monkeypatch.setattr(prefix_book, "block_hashes", counted)
    assert receiver.pin_prefix("t2", turn2, held)
    receiver.import_(
        partial.manifest, partial.buffers, SamplingParams(max_tokens=300), prompt_token_ids=turn2
    )
    assert hashed == [held]  # the import looked the prefix up by the pin's hashes
    while receiver.has_unfinished():
        receiver.step()
    num_computed = receiver.requests["t2"].num_computed_tokens
    receiver.free("t2")
    assert sum(hashed) == num_computed // BLOCK * BLOCK
    assert receiver.cached_prefix_tokens(turn2 + (1,) * BLOCK) == len(turn2) // BLOCK * BLOCK


def test_a_receiver_without_the_prefix_refuses_the_transfer() -> None:
    sender, receiver = _engine([]), _engine([], "H20")
    prompt = tuple(range(1, 700))
    sender.prefill([_req("r", prompt)], skip_tokens={"r": BLOCK})
    exported = sender.export("r", "x", num_prefix_tokens=BLOCK)
    assert not receiver.pin_prefix("r", prompt, BLOCK)
    with pytest.raises(PrefixMiss, match="holds 0"):
        receiver.import_(exported.manifest, exported.buffers, prompt_token_ids=prompt)
    with pytest.raises(PrefixMiss, match="token ids"):
        receiver.import_(exported.manifest, exported.buffers)


def test_transfer_bytes_are_held_until_free_and_pins_until_import() -> None:
    engine = _engine([])
    engine.prefill([_req("r", tuple(range(1, 600)))])
    exported = engine.export("r", "tid")
    pool = engine.prefix_pool
    assert pool is not None
    assert pool.num_transfer_bytes == exported.manifest.total_bytes
    engine.free("r")
    assert pool.num_transfer_bytes == 0
    prompt = tuple(range(1, 600))
    assert engine.pin_prefix("q", prompt, BLOCK)
    assert pool.num_pinned_bytes > 0
    engine.free("q")  # never imported: the pin ends with the request id anyway
    assert pool.num_pinned_bytes == 0
    with pytest.raises(UserError, match="multiple"):
        engine.pin_prefix("q", prompt, BLOCK + 1)


def test_without_a_prefix_cache_nothing_is_reused() -> None:
    engine = make_emulated_engine(MODEL, "H200", 8, sleep=lambda _: None)
    prompt = tuple(range(1, 1000))
    engine.prefill([_req("a", prompt)])
    engine.free("a")
    engine.prefill([_req("b", prompt)])
    assert engine.num_cached_tokens("b") == 0
    assert engine.prefix_pool is None
    assert engine.cached_prefix_tokens(prompt) == 0
