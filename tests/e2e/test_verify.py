"""`prfaas verify` end to end: two processes, real loopback TCP, identical tokens, controls fire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
REQUIRED = ["qwen3_next", "kimi_linear", "mimo_v2_flash", "llama"]


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "prfaas", "verify", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _check(results: list[dict[str, object]], archs: list[str]) -> None:
    assert [r["arch"] for r in results] == archs
    for r in results:
        assert set(r) >= {"arch", "identical", "max_logit_diff", "controls_fired"}
        assert r["identical"] is True, r
        assert r["controls_fired"] is True, r
        assert r["max_logit_diff"] == 0.0, r
        assert r["controls"]["empty_cache"] is True, r  # type: ignore[index]


def test_verify_fp32_required_archs() -> None:
    proc = _verify(
        "--arch", ",".join(REQUIRED), "--prompt-tokens", "80", "--decode-tokens", "6", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    _check(results, REQUIRED)
    by_arch = {r["arch"]: r for r in results}
    assert by_arch["qwen3_next"]["controls"]["zeroed_linear_state"] is True
    assert by_arch["llama"]["controls"]["zeroed_linear_state"] is None


@pytest.mark.slow
def test_verify_bf16_all_presets() -> None:
    from prfaas.engine.presets import PRESETS

    proc = _verify("--dtype", "bf16", "--prompt-tokens", "80", "--decode-tokens", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    _check(json.loads(proc.stdout), list(PRESETS))


def test_unknown_arch_is_one_line_exit_2() -> None:
    proc = _verify("--arch", "llama,nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown arch 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_lengths_exit_2() -> None:
    proc = _verify("--arch", "llama", "--decode-tokens", "1")
    assert proc.returncode == 2
    assert "--decode-tokens" in proc.stderr


def test_message_exchange_moves_buffers_intact() -> None:
    import socket
    import threading

    from prfaas.cli._verify_io import recv_message, send_message

    left, right = socket.socketpair()
    buffers = [bytes(range(256)) * 1000, bytearray(b"xyz"), memoryview(b"")]
    sender = threading.Thread(target=send_message, args=(left, {"op": "t", "n": 3}, buffers))
    sender.start()
    header, payload = recv_message(right)
    sender.join()
    left.close()
    right.close()
    assert header == {"op": "t", "n": 3}
    assert bytes(payload) == b"".join(bytes(b) for b in buffers)


def test_zeroed_linear_control_touches_only_linear_state() -> None:
    from prfaas.cli.verify import _control_payload
    from prfaas.engine.loading import load_model
    from prfaas.engine.runner import Engine
    from prfaas.messages import GenerateRequest, SamplingParams

    engine = Engine(load_model("qwen3_next"))
    engine.prefill([GenerateRequest("r", tuple(range(3, 40)), SamplingParams(max_tokens=2))])
    exported = engine.export("r")
    original = b"".join(exported.buffers)
    zeroed = _control_payload("zeroed_linear_state", exported)
    assert zeroed is not None and len(zeroed) == len(original)
    for layer in exported.manifest.layers:
        for t in layer.tensors:
            chunk = zeroed[t.offset_bytes : t.offset_bytes + t.num_bytes]
            is_linear = "conv_states" in t.name or "recurrent_states" in t.name
            assert (chunk == bytes(t.num_bytes)) == is_linear, t.name
    llama = Engine(load_model("llama"))
    llama.prefill([GenerateRequest("r", (1, 2, 3), SamplingParams(max_tokens=2))])
    assert _control_payload("zeroed_linear_state", llama.export("r")) is None


def test_decode_instance_takes_state_only_from_the_run_token() -> None:
    """B's state arrives through the KV transport, whose receiver is keyed to a token generated
    for this run: a sender with another token is refused before any payload, the run's own
    sender gets its transfer acknowledged."""
    import asyncio

    from prfaas.cli._verify_peer import DecodePeer
    from prfaas.messages import KVManifest, LayerEntry, TensorEntry
    from prfaas.transport.config import TransportConfig
    from prfaas.transport.sender import KVSender

    tensor = TensorEntry("L0/keys", 0, "float32", (4,), 0, 16)
    layer = LayerEntry(0, "full_attention", "DynamicLayer", {}, (tensor,))
    manifest = KVManifest("t-token", "r", "probe", 1, (layer,), 2, 7)

    async def intrude(dest: str) -> None:
        cfg = TransportConfig(token="not-the-run-token", num_connections=1, connect_timeout_s=5)
        async with asyncio.timeout(20), KVSender(cfg) as bad:
            with pytest.raises(ConnectionRefusedError, match="bad or missing token"):
                await bad.connect(dest)

    with DecodePeer() as peer:
        asyncio.run(intrude(peer.kv_dest))
        peer.send_state(manifest, [memoryview(bytes(16))])  # raises unless acknowledged
