"""`prfaas bench system` end to end: it starts an emulated topology on loopback, replays a small
workload with prompts on both sides of t, and reports every request, ordered percentiles, an
offload ratio, egress bytes and the simulator and planner columns. A router URL with nothing
listening is one error line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prfaas.launch.local import free_port
from topologies import Node, TopologySpec, decode, pd, prfaas

pytestmark = pytest.mark.slow
NUM_REQUESTS = 8


def _topology(directory: Path) -> Path:
    spec = TopologySpec(
        clusters=(prfaas(Node("prfaas-p0")), pd(Node("pd-p0"), decode("pd-d0"))),
        engine="emulated",
        emulate="gpt-oss-120b",  # small KV per request: MiBs over loopback, not hundreds
        time_scale=0.1,
        link_gbps=10,
        threshold=256,
        drain_s=2,
        token="bench-system-test-token",
    )
    return spec.write(directory)


def _bench(*flags: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prfaas", "bench", "system", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_bench_system_on_loopback(tmp_path: Path) -> None:
    config = _topology(tmp_path)
    out = _bench(
        "--config", str(config), "--rate", "1", "--num-requests", str(NUM_REQUESTS),
        "--mu", "5.6", "--sigma", "0.5", "--min-tokens", "64", "--max-tokens", "1024",
        "--output-tokens", "4", "--warmup-rounds", "1", "--seed", "3", "--json",
        timeout_s=150,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["self_started"] and result["threshold_tokens"] == 256
    (run,) = result["runs"]
    live = run["live"]
    assert (live["num_planned"], live["num_ok"], live["num_errors"]) == (NUM_REQUESTS,) * 2 + (0,)
    assert len(run["requests"]) == NUM_REQUESTS
    assert all(r["error"] is None and r["num_output_tokens"] == 4 for r in run["requests"])
    for key in ("ttft_s", "second_token_s", "tpot_s"):
        d = live[key]
        assert d["count"] == NUM_REQUESTS
        assert 0 < d["p50"] <= d["p90"] <= d["p99"] <= d["max"]
    long = [r for r in run["requests"] if r["num_prompt_tokens"] > 256]
    assert long, "the seeded schedule has prompts above t"
    assert 0 < live["offload_ratio"] <= 1
    assert live["egress"]["total_bytes"] > 0 and live["kv_bytes_offloaded"] > 0
    assert live["egress"]["series"]
    sim, plan = run["sim"], run["plan"]
    assert sim["num_completed"] == NUM_REQUESTS and sim["ttft_s"]["p90"] is not None
    assert all(r["second_token_s"] > r["ttft_s"] for r in run["requests"])
    assert sim["second_token_s"]["count"] == NUM_REQUESTS
    assert sim["second_token_s"]["p50"] > sim["ttft_s"]["p50"]
    assert 0 <= sim["offload_ratio"] <= 1
    assert plan["lambda_max_rps"] > 0 and 0 <= plan["offload_ratio"] <= 1
    assert not list(tmp_path.glob(".*.bench-*.toml"))


def test_unreachable_router_is_one_line(tmp_path: Path) -> None:
    config = _topology(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    out = _bench("--config", str(config), "--url", url, "--rate", "1", timeout_s=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "cannot reach the router" in out.stderr and out.stdout == ""
