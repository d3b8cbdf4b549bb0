"""A coded state through both engines: the prefill's layer callback and `export` code attention
K/V with the request's codec (the sizes `prfaas.models` predicts), recurrent and conv state stay
exact, `import_` decodes it, and a manifest naming a codec the receiver does not know is refused
before anything is registered. A coded import's approximate K/V are not kept in the receiver's
prefix cache. Emulated engines move payloads of the coded size, every byte checked."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from engine_kit import drain, greedy, prompt, tiny

from prfaas.engine import Engine
from prfaas.engine.emulated import make_emulated_engine
from prfaas.engine.protocol import LayerState
from prfaas.engine.validation import ManifestMismatch
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, KVManifest, TensorEntry
from prfaas.models import load_model_spec, spec_from_config
from prfaas.prefix_cache.config import PrefixCacheConfig
from prfaas.types import LayerKind

PRESET = "qwen3_next"  # full attention and gated delta net layers: K/V and recurrent/conv state
NUM_TOKENS = 40
MAX_TOKENS = 6
REFUSAL = re.escape("cannot decode (it decodes none, fp8, int4-rotated)")


def _is_kv(entry: TensorEntry) -> bool:
    return entry.name.rsplit("/", 1)[-1] in ("keys", "values")


def _prefilled(codec: str) -> tuple[Engine, list[LayerState], KVManifest]:
    """A tiny engine that prefilled request "r" with K/V coded by `codec`: the layers its
    callback streamed, and the manifest `export` then gives."""
    engine = Engine(tiny(PRESET))
    streamed: list[LayerState] = []
    request = GenerateRequest("r", prompt(NUM_TOKENS), greedy(MAX_TOKENS))
    engine.prefill([request], lambda _, layer: streamed.append(layer), kv_codecs={"r": codec})
    return engine, streamed, engine.export("r", "t-" + codec, kv_codec=codec).manifest


def _buffers(streamed: list[LayerState]) -> list[memoryview]:
    return [buf for layer in streamed for buf in layer.buffers]


def _decoded(manifest: KVManifest, buffers: list[memoryview]) -> list[int]:
    """The tokens a second engine decodes from the imported state."""
    receiver = Engine(tiny(PRESET))
    receiver.import_(manifest, buffers, greedy(MAX_TOKENS), copy=True)
    tokens = [receiver.first_delta("r").token_ids[0]]
    while receiver.has_unfinished():
        tokens.extend(t for delta in receiver.step() for t in delta.token_ids)
    return tokens


def _predicted_kv_bytes(codec: str) -> int:
    """`prfaas.models`' attention bytes of the tiny preset's full-attention layers."""
    spec = spec_from_config(tiny(PRESET).config.to_dict(), name=PRESET)
    attention = [layer for layer in spec.layers if layer.kind is LayerKind.FULL_ATTENTION]
    assert attention
    return sum(layer.kv_bytes_per_token("float32", codec) * NUM_TOKENS for layer in attention)


@pytest.mark.parametrize("codec", ["fp8", "int4-rotated"])
def test_coded_offload_sizes_exact_state_and_decodes(codec: str) -> None:
    _, plain_streamed, plain = _prefilled("none")
    _, streamed, manifest = _prefilled(codec)
    assert manifest.kv_codec == codec
    assert tuple(layer.entry for layer in streamed) == manifest.layers  # what was sent
    buffers = _buffers(streamed)
    assert sum(buf.nbytes for buf in buffers) == manifest.total_bytes
    tensors = [t for layer in manifest.layers for t in layer.tensors]
    plain_tensors = [t for layer in plain.layers for t in layer.tensors]
    assert [t.name for t in tensors] == [t.name for t in plain_tensors]
    assert sum(t.num_bytes for t in tensors if _is_kv(t)) == _predicted_kv_bytes(codec)
    assert sum(t.num_bytes for t in plain_tensors if _is_kv(t)) == _predicted_kv_bytes("none")
    # recurrent and conv state: the same bytes as the uncoded transfer's
    plain_buffers = _buffers(plain_streamed)
    exact = [i for i, t in enumerate(tensors) if not _is_kv(t)]
    assert exact and all(
        tensors[i].num_bytes == plain_tensors[i].num_bytes
        and bytes(buffers[i]) == bytes(plain_buffers[i])
        for i in exact
    )
    tokens = _decoded(manifest, buffers)
    plain_tokens = _decoded(plain, _buffers(plain_streamed))
    assert len(tokens) == len(plain_tokens) == MAX_TOKENS
    assert tokens[0] == plain_tokens[0]  # sampled by the prefill, before any coding


def test_imported_kv_is_the_decoded_payload_within_the_codec_bound() -> None:
    engine, streamed, manifest = _prefilled("fp8")
    receiver = Engine(tiny(PRESET))
    state = receiver.import_(manifest, _buffers(streamed), greedy(MAX_TOKENS), copy=True)
    sent = engine._get("r").cache
    got = receiver._get(state.req_id).cache
    checked = 0
    for index, kind in enumerate(engine.kinds):
        if kind is not LayerKind.FULL_ATTENTION:
            torch.testing.assert_close(
                got.layers[index].recurrent_states,
                sent.layers[index].recurrent_states,
                rtol=0,
                atol=0,
            )
            continue
        for name in ("keys", "values"):
            original, imported = getattr(sent.layers[index], name), getattr(got.layers[index], name)
            assert imported.shape == original.shape and imported.dtype == original.dtype
            error = (imported - original).abs().max() / original.abs().max()
            assert 0 < error < 2**-4  # e4m3: 3 mantissa bits, a scale per 64 elements
            checked += 1
    assert checked > 0


@pytest.mark.parametrize(("codec", "kept"), [("none", True), ("fp8", False)])
def test_a_coded_import_leaves_no_blocks_in_the_prefix_cache(codec: str, kept: bool) -> None:
    _, streamed, manifest = _prefilled(codec)
    receiver = Engine(tiny(PRESET), prefix_cache=PrefixCacheConfig(16, 64 << 20))
    receiver.import_(
        manifest,
        _buffers(streamed),
        greedy(MAX_TOKENS),
        copy=True,
        prompt_token_ids=prompt(NUM_TOKENS),
    )
    drain(receiver)
    receiver.free("r")
    assert (receiver.cached_prefix_tokens(prompt(NUM_TOKENS + 8)) > 0) is kept


def test_a_manifest_naming_an_unknown_codec_is_refused() -> None:
    _, streamed, manifest = _prefilled("fp8")
    receiver = Engine(tiny(PRESET))
    with pytest.raises(ManifestMismatch, match=r"KV codec 'zstd', which this instance " + REFUSAL):
        receiver.import_(replace(manifest, kv_codec="zstd"), _buffers(streamed), copy=True)
    assert not receiver.has_unfinished() and receiver.unfinished_req_ids() == []


def test_coded_bytes_under_an_uncoded_manifest_are_refused() -> None:
    _, streamed, manifest = _prefilled("fp8")
    with pytest.raises(ManifestMismatch, match="bytes do not match its shape"):
        Engine(tiny(PRESET)).import_(replace(manifest, kv_codec="none"), _buffers(streamed))


def test_an_unknown_codec_is_refused_at_prefill() -> None:
    engine = Engine(tiny(PRESET))
    request = GenerateRequest("r", prompt(8), greedy(1))
    with pytest.raises(UserError, match="unknown KV codec 'zstd'; choose one of: none, fp8"):
        engine.prefill([request], kv_codecs={"r": "zstd"})


EMULATED = "qwen3.5-397b"  # full attention and linear attention layers


@pytest.mark.parametrize("codec", ["fp8", "int4-rotated"])
def test_emulated_payload_has_the_coded_size_and_is_checked(codec: str) -> None:
    sender = make_emulated_engine(EMULATED, "H200", 8, sleep=lambda _: None)
    receiver = make_emulated_engine(EMULATED, "H20", 8, sleep=lambda _: None)
    streamed: list[LayerState] = []
    request = GenerateRequest("r", (1,) * 2048, greedy(2))
    sender.prefill([request], lambda _, layer: streamed.append(layer), kv_codecs={"r": codec})
    exported = sender.export("r", kv_codec=codec)
    spec = load_model_spec(EMULATED)
    coded = spec.kv_bytes(2048, kv_codec=codec)
    assert exported.manifest.total_bytes == coded < spec.kv_bytes(2048)
    assert sum(buf.nbytes for layer in streamed for buf in layer.buffers) == coded
    receiver.import_(exported.manifest, exported.buffers, greedy(2))
    assert receiver.unfinished_req_ids() == ["r"]
    other = "int4-rotated" if codec == "fp8" else "fp8"
    fresh = make_emulated_engine(EMULATED, "H20", 8, sleep=lambda _: None)
    with pytest.raises(ManifestMismatch, match=f"K/V coded {other}"):
        fresh.import_(replace(exported.manifest, kv_codec=other), exported.buffers)
    with pytest.raises(ManifestMismatch, match=REFUSAL):
        fresh.import_(replace(exported.manifest, kv_codec="zstd"), exported.buffers)
    assert fresh.unfinished_req_ids() == []
