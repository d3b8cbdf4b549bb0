"""Moving a cached prefix between engines: `export_prefix` on the holder, `import_prefix` on the
receiver, then a prefill of the longer prompt there reuses the moved tokens and gives the output of
a prefill from scratch. Torch engines for four layer families, and the emulated engine; negative
controls: a changed byte, another prompt, another model, no prefix cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from engine_kit import greedy, prompt, tiny
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.engine.emulated import EmulatedEngine, make_emulated_engine
from prfaas.engine.prefix_store import PrefixCacheConfig, PrefixMiss
from prfaas.engine.protocol import ExportedState
from prfaas.engine.runner import Engine
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import (
    PREFIX_META_KEY,
    GenerateRequest,
    KVManifest,
    PrefixExportJob,
    PrefixExportResult,
    PrefixTransferInfo,
)

B = 16  # tokens per block
BUDGET_BYTES = 64 * 2**20
# Gated DeltaNet (+ full attention), sliding window, Mamba2 hybrid, dense GQA
FAMILIES = ["qwen3_next", "mimo_v2_flash", "bamba", "llama"]
LOGIT_ATOL = 5e-3  # as test_prefix_reuse: resuming is a prefill chunked at the prefix
FIRST = prompt(90)  # its prefill checkpoints the fixed-size state at 80 tokens
SECOND = FIRST + tuple((11 * i + 2) % 251 for i in range(20))  # the next turn: 110 tokens
MOVED = 80


def _cached(name: str, **kwargs: Any) -> Engine:
    return Engine(tiny(name), prefix_cache=PrefixCacheConfig(B, BUDGET_BYTES), **kwargs)


def _run(engine: Any, req_id: str, tokens: tuple[int, ...], max_tokens: int = 5) -> list[int]:
    out: list[int] = engine.generate([GenerateRequest(req_id, tokens, greedy(max_tokens))])[req_id]
    return out


def _over_the_wire(exported: ExportedState) -> tuple[KVManifest, list[memoryview]]:
    """What a receiver gets: the manifest through JSON, the payload in fresh writable buffers."""
    manifest = KVManifest.from_dict(json.loads(json.dumps(exported.manifest.to_dict())))
    return manifest, [memoryview(bytearray(b)) for b in exported.buffers]


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


def _holder(name: str) -> Engine:
    engine = _cached(name)
    _run(engine, "first", FIRST)
    return engine


@pytest.mark.parametrize("name", FAMILIES)
def test_moved_prefix_is_reused_and_the_output_equals_a_prefill_from_scratch(name: str) -> None:
    exported = _holder(name).export_prefix(SECOND, MOVED, "move-1")
    info = PrefixTransferInfo.of(exported.manifest)
    assert info is not None and info.num_tokens == MOVED
    receiver = _cached(name, record_logits=True)
    manifest, buffers = _over_the_wire(exported)
    assert receiver.import_prefix(manifest, buffers, SECOND) == MOVED
    with _counted_tokens(receiver) as counts:
        out = _run(receiver, "second", SECOND)
    assert receiver.num_cached_tokens("second") == MOVED
    assert sum(counts) == len(SECOND) - MOVED + 4  # only the suffix, then 4 decode steps
    fresh = Engine(tiny(name), record_logits=True)
    assert out == _run(fresh, "second", SECOND)
    got, want = receiver.requests["second"].logits, fresh.requests["second"].logits
    assert max(float((x - y).abs().max()) for x, y in zip(got, want, strict=True)) < LOGIT_ATOL


def test_a_changed_byte_is_refused_and_nothing_is_reused() -> None:
    exported = _holder("qwen3_next").export_prefix(SECOND, MOVED, "move-2")
    receiver = _cached("qwen3_next")
    manifest, buffers = _over_the_wire(exported)
    buffers[len(buffers) // 2][0] ^= 0x01
    with pytest.raises(ManifestMismatch, match="digest"):
        receiver.import_prefix(manifest, buffers, SECOND)
    _run(receiver, "second", SECOND)
    assert receiver.num_cached_tokens("second") == 0


def test_a_prefix_of_another_prompt_is_refused_or_never_matches() -> None:
    exported = _holder("qwen3_next").export_prefix(SECOND, MOVED, "move-3")
    other = (SECOND[0] + 1, *SECOND[1:])
    receiver = _cached("qwen3_next")
    manifest, buffers = _over_the_wire(exported)
    with pytest.raises(PrefixMiss, match="not this prompt's"):
        receiver.import_prefix(manifest, buffers, other)
    assert receiver.import_prefix(manifest, buffers) == MOVED  # stored under SECOND's hashes
    _run(receiver, "other", other)
    assert receiver.num_cached_tokens("other") == 0


def test_another_model_or_no_prefix_cache_refuses_the_import() -> None:
    exported = _holder("qwen3_next").export_prefix(SECOND, MOVED, "move-4")
    manifest, buffers = _over_the_wire(exported)
    with pytest.raises(ManifestMismatch):
        _cached("llama").import_prefix(manifest, buffers, SECOND)
    with pytest.raises(PrefixMiss, match="no prefix cache"):
        Engine(tiny("qwen3_next")).import_prefix(manifest, buffers, SECOND)


def test_export_needs_whole_cached_blocks_with_a_state_checkpoint() -> None:
    holder = _holder("qwen3_next")
    with pytest.raises(PrefixMiss, match="multiple of 16"):
        holder.export_prefix(SECOND, 72, "t")
    with pytest.raises(PrefixMiss, match="not usable"):
        holder.export_prefix(SECOND, 96, "t")  # attention blocks only up to 80 have a state
    with pytest.raises(PrefixMiss, match="not usable"):
        holder.export_prefix(prompt(90, offset=1), 80, "t")
    assert holder.prefix_pool is not None and holder.prefix_pool.num_leases == 0  # pins released


def test_a_request_state_is_not_a_prefix_transfer() -> None:
    engine = _cached("llama")
    engine.prefill([GenerateRequest("r", prompt(40), greedy(2))])
    manifest = engine.export("r").manifest
    assert PREFIX_META_KEY not in manifest.cache_meta
    with pytest.raises(PrefixMiss, match="not a prefix transfer"):
        _cached("llama").import_prefix(manifest, [])


# ---- emulated engine ------------------------------------------------------------------------
EMULATED_MODEL = "qwen3.5-397b"
EMULATED_BLOCK = 256


def _emulated() -> EmulatedEngine:
    config = PrefixCacheConfig(block_tokens=EMULATED_BLOCK, budget_bytes=8 << 30)
    return make_emulated_engine(
        EMULATED_MODEL, "H200", 8, sleep=lambda _s: None, prefix_cache=config
    )


def test_emulated_moved_prefix_is_reused_at_its_real_size() -> None:
    first = tuple(range(1, 1001))  # state checkpoint at 768
    second = first + tuple(range(2000, 2300))
    holder = _emulated()
    holder.generate([GenerateRequest("a", first, greedy(2))])
    exported = holder.export_prefix(second, 768, "move-e")
    receiver = _emulated()
    manifest, buffers = _over_the_wire(exported)
    assert manifest.total_bytes == holder.spec.kv_bytes(768)
    assert receiver.import_prefix(manifest, buffers, second) == 768
    receiver.prefill([GenerateRequest("b", second, greedy(2))])
    assert receiver.num_cached_tokens("b") == 768

    corrupted = _emulated()
    buffers[-1][3] ^= 0xFF
    with pytest.raises(ManifestMismatch):
        corrupted.import_prefix(manifest, buffers, second)
    corrupted.prefill([GenerateRequest("b", second, greedy(2))])
    assert corrupted.num_cached_tokens("b") == 0


# ---- the messages -----------------------------------------------------------------------------
_ids = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50)


@settings(max_examples=50, deadline=None)
@given(
    hashes=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20),
    block_tokens=st.integers(1, 4096),
    token_ids=_ids,
    deadline_s=st.floats(0.001, 1e6),
)
def test_prefix_messages_survive_json(
    hashes: list[int], block_tokens: int, token_ids: list[int], deadline_s: float
) -> None:
    info = PrefixTransferInfo(block_tokens, tuple(hashes), "ab" * 16)
    assert PrefixTransferInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    job = PrefixExportJob("t", tuple(token_ids), "127.0.0.1:9", deadline_s)
    assert PrefixExportJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    result = PrefixExportResult("t", True, len(token_ids), 7, 0.5)
    assert PrefixExportResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token_ids": []}, "token_ids"),
        ({"token_ids": [1, "2"]}, "token_ids"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"target_kv_address": ""}, "target_kv_address"),
        ({"transfer_id": 3}, "transfer_id"),
    ],
)
def test_a_malformed_prefix_export_job_is_refused(body: dict[str, Any], field: str) -> None:
    good = PrefixExportJob("t", (1, 2), "127.0.0.1:9", 5.0).to_dict()
    with pytest.raises(ValueError, match=field):
        PrefixExportJob.from_dict({**good, **body})


@settings(max_examples=10, deadline=None)
@given(num_blocks=st.integers(1, 3), extra=st.integers(1, 600))
def test_emulated_import_makes_exactly_the_moved_blocks_reusable(
    num_blocks: int, extra: int
) -> None:
    num_tokens = num_blocks * EMULATED_BLOCK
    prompt_ids = tuple(range(1, num_tokens + extra + 1))
    holder = _emulated()
    holder.prefill([GenerateRequest("a", prompt_ids[: num_tokens + 1], greedy(1))])
    receiver = _emulated()
    manifest, buffers = _over_the_wire(holder.export_prefix(prompt_ids, num_tokens, "p"))
    assert receiver.import_prefix(manifest, buffers) == num_tokens
    receiver.prefill([GenerateRequest("b", prompt_ids, greedy(1))])
    assert receiver.num_cached_tokens("b") == num_tokens
