"""The `[link]` table's RTT, jitter, loss and payload efficiency: defaults, values, refusals, and
the simulator's copy of them in model units."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_topology import _assert_names, _emulated, _only_problem, _parse, _valid

from prfaas.policy.transfer import LinkPath
from prfaas.topology.sim_config import sim_config_of


def test_defaults_are_an_ideal_path(tmp_path: Path) -> None:
    assert _parse(_valid(), tmp_path).link_path == LinkPath()


def test_values_become_the_link_path(tmp_path: Path) -> None:
    data = _valid()
    data["link"] = {
        "gbps": 10,
        "rtt_ms": 50,
        "jitter_ms": 5,
        "jitter_distribution": "pareto",
        "loss_pct": 0.1,
        "payload_efficiency": 0.9,
    }
    data["transport"]["num_connections"] = 4
    path = _parse(data, tmp_path).link_path
    assert path == LinkPath(
        rtt_s=0.05,
        jitter_s=0.005,
        jitter_distribution="pareto",
        loss_rate=0.001,
        payload_efficiency=0.9,
        num_connections=4,
    )


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("rtt_ms", -1, "in [0, 60000]"),
        ("rtt_ms", math.nan, "got nan"),
        ("rtt_ms", math.inf, "got inf"),
        ("jitter_ms", 1e9, "in [0, 60000]"),
        ("loss_pct", 100, "in [0, 100)"),
        ("loss_pct", -0.5, "in [0, 100)"),
        ("payload_efficiency", 0, "in (0, 1]"),
        ("payload_efficiency", 1.5, "in (0, 1]"),
        ("jitter_distribution", "gamma", "normal"),
        ("mss_bytes", 40, "integer >= 88"),
        ("mss_bytes", 1e5, "integer"),
        ("mss_bytes", 70000, "65,483"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, key: str, value: object, fragment: str) -> None:
    data = _valid()
    data["link"] = {"gbps": 10, key: value}
    _assert_names(_only_problem(data, tmp_path), f"link.{key}", fragment)


def test_the_simulator_gets_the_path_in_model_seconds(tmp_path: Path) -> None:
    data = _emulated(1, 1, 1)
    data["model"]["time_scale"] = 0.5  # engines sleep half the modelled time
    data["model"]["payload_scale"] = 0.01  # payloads 1/100 of the real KV
    data["link"] = {"gbps": 10, "rtt_ms": 40, "payload_efficiency": 0.9, "mss_bytes": 8948}
    config = sim_config_of(_parse(data, tmp_path))
    assert config.path.rtt_s == pytest.approx(0.080)  # 40 ms of wall time is 80 ms modelled
    assert config.path.payload_efficiency == 0.9
    assert config.path.mss_bytes == 894_800  # a wire segment carries 100x its bytes of real KV
