"""The simulator's link with the path's RTT, jitter, loss and payload efficiency: hand-timed
transfers, the cold rule per destination, and jitter from the run's own seed."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sim_factories import LinearKV, make_config, requests_at

from prfaas.cli import main
from prfaas.policy.transfer import LinkPath, WireState, unhidden_latency_s
from prfaas.sim.config import SimConfig
from prfaas.sim.simulator import Simulator
from prfaas.types import DeploymentKind


def _kv_ready(config: SimConfig, times: list[float]) -> list[float]:
    sim = Simulator(config, requests_at(times, 1000, 11))
    sim.run()
    return list(sim.log.kv_ready_at)


def test_efficiency_and_rtt_timed_by_hand() -> None:
    """As `test_one_offloaded_request_timed_by_hand`, on a wire of 1e4 B/s at efficiency 0.5:
    5000 B/s of payload. The 9900 B sent during prefill go at the production rate 4950 B/s, the
    1100 B tail at 5000 B/s: the last byte at 2.22 s. The destination is new: a handshake and
    the acknowledgment, 2 x 100 ms (the window never binds at these rates): KV lands at 2.42 s."""
    config = make_config(DeploymentKind.NAIVE)
    ideal = replace(config, path=LinkPath(payload_efficiency=0.5))
    assert _kv_ready(ideal, [0.0]) == [pytest.approx(2.22)]
    lagged = replace(config, path=LinkPath(rtt_s=0.1, payload_efficiency=0.5))
    assert _kv_ready(lagged, [0.0]) == [pytest.approx(2.42)]


def test_loss_caps_each_flow_at_its_mathis_bound() -> None:
    """Loss 1% at 100 ms RTT: 2 connections x 1448 / (0.1 x sqrt(0.02/3)) = 354,686 B/s, below the
    1e6 B/s wire: the 1100 B tail takes 1100 / 354,686 s instead of 1100 / 1e6 s."""
    config = make_config(DeploymentKind.NAIVE, link_bytes_per_s=1e6)
    path = LinkPath(rtt_s=0.1, loss_rate=0.01)
    cap = 2 * 1448 / (0.1 * (0.02 / 3) ** 0.5)
    assert cap == pytest.approx(354_686, abs=1)
    assert _kv_ready(replace(config, path=path), [0.0]) == [pytest.approx(2.0 + 1100 / cap + 0.2)]


def test_new_warm_and_idle_destinations() -> None:
    """100 MB of KV per request on a 1 GB/s wire at 100 ms RTT, one PrfaaS instance: request 0
    opens the connections (handshake and slow start), request 1 starts sending while request 0's
    tail is in flight (warm: one RTT), request 2 comes after 16 s of silence (slow start again)."""
    big_kv = LinearKV(fixed_bytes=1000, bytes_per_token=100_000)
    config = replace(make_config(DeploymentKind.NAIVE, link_bytes_per_s=1e9), kv_size=big_kv)
    times = [0.0, 0.5, 20.0]
    base = _kv_ready(config, times)
    path = LinkPath(rtt_s=0.1)
    lagged = _kv_ready(replace(config, path=path), times)
    kv_bytes = big_kv.kv_bytes(1000)
    production_rate = 0.9 * kv_bytes / 2.0  # all but the last layer over T(1000) = 2 s
    expected = [
        unhidden_latency_s(kv_bytes, production_rate, path, state)
        for state in (WireState.NEW, WireState.WARM, WireState.IDLE)
    ]
    assert expected[0] > expected[2] > expected[1] == pytest.approx(0.1)
    assert [b - a for a, b in zip(base, lagged, strict=True)] == pytest.approx(expected)


def test_jitter_is_drawn_from_the_runs_seed() -> None:
    config = make_config(DeploymentKind.NAIVE)
    path = LinkPath(rtt_s=0.1, jitter_s=0.05)
    times = [0.0, 10.0, 20.0]
    first = _kv_ready(replace(config, path=path, link_seed=1), times)
    again = _kv_ready(replace(config, path=path, link_seed=1), times)
    other = _kv_ready(replace(config, path=path, link_seed=2), times)
    no_jitter = _kv_ready(replace(config, path=LinkPath(rtt_s=0.1)), times)
    assert first == again
    assert first != other
    assert all(j >= n for j, n in zip(first, no_jitter, strict=True))
    assert first != no_jitter


def _sim_json(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    argv = ["sim", "--deployment", "prfaas", "--num-requests", "200", *flags, "--json"]
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)["prfaas"]
    return result


def test_the_cli_flags_reach_the_simulated_link(capsys: pytest.CaptureFixture[str]) -> None:
    near = _sim_json(capsys)
    far = _sim_json(capsys, "--rtt-ms", "100")
    assert far["transfer_s"]["p50"] >= near["transfer_s"]["p50"] + 0.1  # at least the ACK
    jittered = _sim_json(capsys, "--rtt-ms", "100", "--jitter-ms", "20", "--seed", "3")
    assert jittered == _sim_json(capsys, "--rtt-ms", "100", "--jitter-ms", "20", "--seed", "3")
    assert jittered["transfer_s"] != far["transfer_s"]
