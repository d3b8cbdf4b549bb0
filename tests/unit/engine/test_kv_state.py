"""Export / import: manifests, zero-copy buffers, round trips and refused mismatches."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from engine_kit import greedy, request, tiny

from prfaas.engine.kv_export import tensor_bytes
from prfaas.engine.runner import Engine
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import KVManifest

ROUND_TRIP_ARCHS = ["llama", "qwen3_next", "kimi_linear", "mimo_v2_flash", "minimax", "falcon_h1"]


def _decode_after_import(name: str, buffers_of: str = "per_tensor") -> tuple[list[int], list[int]]:
    loaded = tiny(name)
    ref = Engine(loaded).generate([request("r", 90, max_tokens=6)])["r"]
    a = Engine(loaded)
    a.prefill([request("r", 90, max_tokens=6)])
    exported = a.export("r")
    wire = json.loads(json.dumps(exported.manifest.to_dict()))
    manifest = KVManifest.from_dict(wire)
    if buffers_of == "one_payload":
        buffers: list[object] = [bytearray(b"".join(exported.buffers))]
    elif buffers_of == "read_only":
        buffers = [bytes(b) for b in exported.buffers]
    else:
        buffers = [bytearray(b) for b in exported.buffers]
    del a
    b = Engine(loaded)
    b.import_(manifest, buffers, greedy(6))
    out = [manifest.first_token_id]
    while b.has_unfinished():
        out.extend(t for d in b.step() for t in d.token_ids)
    return ref, out


@pytest.mark.parametrize("name", ROUND_TRIP_ARCHS)
def test_round_trip_decodes_like_one_instance(name: str) -> None:
    ref, out = _decode_after_import(name)
    assert out == ref


@pytest.mark.parametrize("buffers_of", ["one_payload", "read_only"])
def test_import_from_one_buffer_or_read_only_bytes(buffers_of: str) -> None:
    ref, out = _decode_after_import("qwen3_next", buffers_of)
    assert out == ref


def test_manifest_layout_is_layer_ordered_and_contiguous() -> None:
    a = Engine(tiny("qwen3_next"))
    a.prefill([request("r", 40)])
    exported = a.export("r", transfer_id="t1")
    m = exported.manifest
    assert (m.arch, m.num_layers, m.num_computed_tokens, m.transfer_id) == (
        "qwen3_next",
        8,
        40,
        "t1",
    )
    entries = [t for layer in m.layers for t in layer.tensors]
    assert [t.layer_index for t in entries] == sorted(t.layer_index for t in entries)
    offsets = [t.offset_bytes for t in entries]
    assert offsets == [sum(t.num_bytes for t in entries[:i]) for i in range(len(entries))]
    assert [b.nbytes for b in exported.buffers] == [t.num_bytes for t in entries]
    linear = m.layers[0]
    assert linear.layer_kind == "linear_attention"
    assert linear.flags["attrs"]["has_previous_state"] == {"__int_keys__": [[0, True]]}
    assert {t.name for t in linear.tensors} == {"L0/conv_states/0", "L0/recurrent_states/0"}
    assert m.layers[3].tensors[0].shape == (1, 2, 40, 32)


def test_export_is_zero_copy_for_contiguous_tensors() -> None:
    a = Engine(tiny("llama"))
    a.prefill([request("r", 20)])
    keys = a.requests["r"].cache.layers[0].keys
    view = a.export("r").buffers[0]
    assert keys.is_contiguous()
    assert torch.frombuffer(view, dtype=torch.uint8).data_ptr() == keys.data_ptr()
    assert tensor_bytes(keys).nbytes == keys.numel() * 4


def test_bf16_keeps_recurrent_state_fp32() -> None:
    a = Engine(tiny("qwen3_next", "bf16"))
    a.prefill([request("r", 20)])
    dtypes = {t.name: t.dtype for layer in a.export("r").manifest.layers for t in layer.tensors}
    assert dtypes["L0/recurrent_states/0"] == "float32"
    assert dtypes["L3/keys"] == "bfloat16"


def _exported(name: str, dtype: str = "fp32", num_tokens: int = 30) -> tuple[KVManifest, list]:
    a = Engine(tiny(name, dtype))
    a.prefill([request("r", num_tokens)])
    exported = a.export("r")
    return exported.manifest, [bytearray(b) for b in exported.buffers]


def _reject(manifest: KVManifest, buffers: list, receiver: str = "qwen3_next", dtype: str = "fp32"):
    with pytest.raises(ManifestMismatch) as exc:
        Engine(tiny(receiver, dtype)).import_(manifest, buffers, greedy(4))
    return str(exc.value)


def test_import_rejects_other_architecture() -> None:
    manifest, buffers = _exported("qwen3_5_text")
    assert "qwen3_5_text" in _reject(manifest, buffers, "qwen3_next")


def test_import_rejects_other_dtype() -> None:
    manifest, buffers = _exported("qwen3_next", "bf16")
    assert "dtype" in _reject(manifest, buffers, "qwen3_next", "fp32")


def test_import_rejects_layer_count_shape_and_missing_tensor() -> None:
    manifest, buffers = _exported("qwen3_next")
    assert "layers" in _reject(replace(manifest, num_layers=7, layers=manifest.layers[:7]), buffers)
    layer3 = manifest.layers[3]
    keys = replace(layer3.tensors[0], shape=(1, 4, 30, 16))
    bad_shape = replace(layer3, tensors=(keys, *layer3.tensors[1:]))
    layers = (*manifest.layers[:3], bad_shape, *manifest.layers[4:])
    assert "shape" in _reject(replace(manifest, layers=layers), buffers)
    missing = replace(layer3, tensors=layer3.tensors[1:])
    layers = (*manifest.layers[:3], missing, *manifest.layers[4:])
    assert "missing" in _reject(replace(manifest, layers=layers), buffers)


def test_import_rejects_short_payload() -> None:
    manifest, buffers = _exported("llama")
    assert "payload" in _reject(manifest, buffers[:-1], "llama")


def test_import_rejects_more_tokens_than_computed() -> None:
    manifest, buffers = _exported("llama")
    assert "cached tokens" in _reject(replace(manifest, num_computed_tokens=10), buffers, "llama")
