"""Control messages survive a JSON round trip unchanged, and reject impossible sampling params."""

from __future__ import annotations

import json
import re

import pytest

from prfaas.errors import UserError
from prfaas.messages import (
    GenerateRequest,
    InstanceStats,
    KVManifest,
    LayerEntry,
    SamplingParams,
    TensorEntry,
    TokenDelta,
    TransferAck,
)


def _manifest() -> KVManifest:
    t0 = TensorEntry("L0/recurrent_states/0", 0, "float32", (1, 4, 32, 32), 0, 16384)
    t1 = TensorEntry("L1/keys", 1, "bfloat16", (1, 2, 10, 32), 16384, 1280)
    layers = (
        LayerEntry(
            0, "linear_attention", "LinearAttentionLayer", {"has_previous_state": True}, (t0,)
        ),
        LayerEntry(1, "full_attention", "DynamicLayer", {}, (t1,)),
    )
    meta = {"cache_class": "DynamicCache"}
    return KVManifest("t-1", "r-1", "qwen3_next", 2, layers, 10, 7, meta, "ab12" * 16)


def _json_round_trip(obj):  # type: ignore[no-untyped-def]
    return type(obj).from_dict(json.loads(json.dumps(obj.to_dict())))


@pytest.mark.parametrize(
    "message",
    [
        SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=("x",)),
        GenerateRequest("r-1", (1, 2, 3), SamplingParams(stop_token_ids=(0,)), 1.5),
        _manifest(),
        TransferAck("t-1", False, "checksum mismatch"),
        TokenDelta("r-1", (5, 6), "length"),
        TokenDelta("r-1", (), "error", "decode failed: IndexError: index out of range"),
        InstanceStats("r0", "prefill", 0, 1, 64, 0.5, kv_encode_bytes_per_s={"fp8": 4.2e8}),
    ],
)
def test_json_round_trip_is_identity(message: object) -> None:
    assert _json_round_trip(message) == message


def test_manifest_total_bytes_sums_layers() -> None:
    assert _manifest().total_bytes == 16384 + 1280


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_k": -1},
    ],
)
def test_sampling_params_reject_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_manifest_without_fingerprint_reads_as_unstated() -> None:
    old_sender = _manifest().to_dict()
    del old_sender["model_fingerprint"]
    assert KVManifest.from_dict(old_sender).model_fingerprint == ""


@pytest.mark.parametrize(
    ("rates", "error"),
    [
        ({"fp8": -1.0}, "kv_encode_bytes_per_s['fp8'] must be >= 0"),
        ({"fp8": "fast"}, "kv_encode_bytes_per_s['fp8'] must be a number"),
        ([4.2e8], "kv_encode_bytes_per_s must be an object"),
    ],
)
def test_instance_stats_refuse_impossible_encode_rates(rates: object, error: str) -> None:
    body = InstanceStats("r0", "prefill", 0, 0, 0, 0.0).to_dict()
    with pytest.raises(ValueError, match=re.escape(error)):
        InstanceStats.from_dict({**body, "kv_encode_bytes_per_s": rates})
    assert InstanceStats.from_dict({k: v for k, v in body.items() if k != "kv_encode_bytes_per_s"})
