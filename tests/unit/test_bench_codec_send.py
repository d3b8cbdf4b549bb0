"""scripts/bench_codec_send.py: the request's state is the model's own footprint, coded to the size
`prfaas.models` predicts for each codec (so the benchmark codes what an export codes), and a
loopback run through the real transport reports every codec's transfer, coded payload and
receiver-side decode."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from prfaas.models import load_model_spec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_codec_send.py"
MODEL = "qwen3-next-80b"
NUM_TOKENS = 64


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_codec_send", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("codec", ["none", "fp8", "int4-rotated"])
def test_the_state_is_coded_to_the_models_predicted_size(codec: str) -> None:
    bench = _script()
    spec = load_model_spec(MODEL)
    layers = bench.request_layers(spec, NUM_TOKENS)
    total_bytes, kv_bytes = bench.uncoded_bytes(layers)
    assert total_bytes == spec.kv_bytes(NUM_TOKENS)
    assert kv_bytes == spec.kv_bytes_per_token() * NUM_TOKENS
    offset = 0
    for index, layer in enumerate(layers):
        offset += bench._code_layer(layer, index, offset, codec).entry.num_bytes
    assert offset == spec.kv_bytes(NUM_TOKENS, kv_codec=codec)


@pytest.mark.slow
def test_a_loopback_run_reports_each_codecs_transfer(tmp_path: Path) -> None:
    out = tmp_path / "codec_send.json"
    argv = [sys.executable, str(SCRIPT), "--model", MODEL, "--tokens", str(NUM_TOKENS)]
    argv += ["--rates-gbps", "unlimited", "--repeats", "1", "--codecs", "none,fp8"]
    argv += ["--no-serial", "--json", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    rows = {row["codec"]: row for row in result["rows"]}
    assert set(rows) == {"none", "fp8"}
    spec = load_model_spec(MODEL)
    for codec, row in rows.items():
        assert row["payload_bytes"] == spec.kv_bytes(NUM_TOKENS, kv_codec=codec)
        assert row["num_runs"] == 1 and row["request_s"] > 0
    assert rows["fp8"]["encode_s"] > 0 and rows["fp8"]["decode_s"] > 0
    assert rows["fp8"]["encode_gbps_bytes"] > 0 and rows["none"]["encode_gbps_bytes"] is None
    standalone = {(r["codec"], r["threads"]) for r in result["results"][0]["standalone"]}
    assert standalone == {("none", 1), ("fp8", 1), ("none", 2), ("fp8", 2)}
