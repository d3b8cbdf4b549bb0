"""`prfaas profile` against a live deployment: an emulated PrfaaS deployment whose prefill
instances sleep the cost model's prefill time, so the profile's latencies can be held to what the
engine is known to take (never less), and the file it writes is read by `prfaas kv --profile`
and `prfaas plan --prfaas-latency profile:PATH`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from polling import wait_until
from prfaas.instance.engines import build_engine
from prfaas.perf.profile import load_profile
from prfaas.topology import Topology, load_topology
from topologies import TopologySpec

LENGTHS = (1024, 16384, 65536)  # 22, 54 and 173 ms of sleep at time_scale 0.05
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """An emulated deployment where every prompt prefills on the PrfaaS instance (t = 0)."""
    tmp = tmp_path_factory.mktemp("profile")
    spec = TopologySpec(engine="emulated", threshold=0, time_scale=0.05, payload_scale=0.001)
    path = spec.write(tmp)
    topology = load_topology(path)
    up = subprocess.Popen(
        [sys.executable, "-m", "prfaas", "up", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://{topology.router.http}"
    try:
        wait_until(lambda: _ready(url) or up.poll() is not None, TIMEOUT_S, "the deployment")
        assert up.poll() is None, up.communicate()[1]
        yield topology
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=120)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _prfaas(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prfaas", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def test_profile_measures_the_prefill_and_writes_a_profile_kv_and_plan_read(
    deployment: Topology, tmp_path: Path
) -> None:
    out = tmp_path / "measured.json"
    lengths = ",".join(map(str, LENGTHS))
    url = f"http://{deployment.router.http}"
    flags = ["--lengths", lengths, "--repeats", "2", "--batch-sizes", "1,2", "--decode-tokens", "8"]
    meta = ["--hardware", "h200", "--num-gpus", "8", "--model", "paper-1t"]
    done = _prfaas("profile", "--url", url, *flags, "--output", str(out), *meta, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document == json.loads(out.read_text())
    # the instance's own prefill time when the router reported it for every request (a stream
    # may send its first token before the prefill's report arrives), else the client's TTFT
    assert document["prefill_latency_from"] in ("prefill_s", "ttft")
    assert [d["batch_size"] for d in document["decode"]] == [1, 2]
    assert all(d["t_step_s"] > 0 for d in document["decode"])

    profile = load_profile(out)
    assert profile.lengths == LENGTHS
    assert (profile.hardware, profile.num_gpus, profile.model) == ("h200", 8, "paper-1t")
    engine = build_engine(deployment, deployment.instance("r0"))  # what r0 sleeps
    for num_tokens, latency_s in zip(profile.lengths, profile.latencies_s, strict=True):
        assert latency_s >= engine.predicted_prefill_s(num_tokens), (num_tokens, latency_s)

    kv = _prfaas("kv", "--profile", str(out), "--json")
    assert kv.returncode == 0, kv.stderr
    latency = f"profile:{out}"
    plan = _prfaas("plan", "--preset", "paper-case-study", "--prfaas-latency", latency, "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)


def test_bad_profile_requests_are_one_line_errors(deployment: Topology) -> None:
    url = f"http://{deployment.router.http}"
    cases = [
        (["--lengths", "1024,256"], "strictly increasing"),
        (["--lengths", "256,1M"], "context"),
        (["--lengths", "256,512", "--batch-sizes", "1,x"], "not an integer"),
        (["--lengths", "256,512", "--output", "/nonexistent/dir/p.json"], "existing directory"),
    ]
    for flags, reason in cases:
        done = _prfaas("profile", "--url", url, *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and reason in done.stderr, done.stderr
    unreachable = _prfaas("profile", "--url", "http://127.0.0.1:1", "--lengths", "8,16")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
