"""What `prfaas bench system --testbed` adds: the link drop (its text form, its simulator steps,
its timed actions), the simulator's bandwidth of a run and the namespace check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prfaas.bench.system import _sim_bandwidth
from prfaas.bench.testbed_link import BenchTestbed, LinkDrop, in_namespace
from prfaas.errors import UserError
from prfaas.sim.link import BandwidthStep
from prfaas.topology import Topology
from topologies import TopologySpec


def _topology(time_scale: float) -> Topology:
    """Emulated paper-1t (r0 on H200, p0 and d0 on H20), a 2 Gbps wire scaled by 0.01."""
    spec = TopologySpec(
        engine="emulated",
        time_scale=time_scale,
        payload_scale=0.01,
        link_gbps=2,
        threshold=1000,
        token="bench-testbed-unit-test-token",
        port_base=18000,
    )
    return spec.topology()


# ---- the drop's text form and its steps -------------------------------------------------------


def test_link_drop_parses_at_duration_and_rate() -> None:
    assert LinkDrop.parse("30:60:10") == LinkDrop(30.0, 60.0, 10.0)
    assert LinkDrop.parse("0:0.5:0.25") == LinkDrop(0.0, 0.5, 0.25)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:b:c", "AT_S:DURATION_S:GBPS"),
        ("1:2", "AT_S:DURATION_S:GBPS"),
        ("1:2:3:4", "AT_S:DURATION_S:GBPS"),
        ("", "AT_S:DURATION_S:GBPS"),
        ("-1:5:10", "start >= 0"),
        ("1:0:10", "duration > 0"),
        ("nan:5:10", "start >= 0"),
        ("1:5:0", "rate must be in"),
        ("1:5:-3", "rate must be in"),
        ("1:5:1e9", "rate must be in"),
    ],
)
def test_bad_link_drops_are_refused(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        LinkDrop.parse(text)


def test_sim_steps_are_in_model_time() -> None:
    drop = LinkDrop(30.0, 60.0, 10.0)
    assert drop.sim_steps(100.0, 0.5) == [
        BandwidthStep(0.0, 100.0),
        BandwidthStep(60.0, 10.0),  # 30 s of run time at time_scale 0.5
        BandwidthStep(180.0, 100.0),  # (30 + 60) / 0.5
    ]


def test_sim_bandwidth_is_the_drop_around_the_model_rate() -> None:
    """The base step is the link in the model's units: 2 Gbps x 0.5 / 0.01 = 100 Gbps."""
    drop = LinkDrop(10.0, 5.0, 40.0)
    steps = _sim_bandwidth(_topology(0.5), drop)
    assert steps == [
        BandwidthStep(0.0, 100.0),
        BandwidthStep(20.0, 40.0),
        BandwidthStep(30.0, 100.0),
    ]
    assert _sim_bandwidth(_topology(0.5), None) is None
    assert _sim_bandwidth(_topology(0.0), drop) is None  # no modelled time to replay in


# ---- the drop as a run's timed actions ----------------------------------------------------------


@dataclass(frozen=True)
class _RecordingTestbed(BenchTestbed):
    """A testbed whose link changes are recorded instead of carried out."""

    changes: list[float] = field(default_factory=list)

    def set_nominal_gbps(self, gbps: float) -> dict[str, Any]:
        self.changes.append(gbps)
        return {"nominal_gbps": gbps}


def test_drop_actions_drop_then_restore_the_nominal_rate() -> None:
    testbed = _RecordingTestbed(
        name="tb",
        state_root=Path("/nonexistent"),
        topology=_topology(0.5),
        router_url="http://127.0.0.1:1",
        client_ns="tb-client",
        wan_ns="tb-wan",
        wan_dev="wan0",
        nominal_gbps=100.0,
    )
    actions = testbed.drop_actions(LinkDrop(30.0, 60.0, 10.0))
    assert [a.at_s for a in actions] == [30.0, 90.0]
    assert [a.name for a in actions] == ["link 10 Gbps", "link 100 Gbps"]
    assert [a.call() for a in actions] == [{"nominal_gbps": 10.0}, {"nominal_gbps": 100.0}]
    assert testbed.changes == [10.0, 100.0]


def test_no_process_runs_in_a_namespace_that_does_not_exist() -> None:
    assert in_namespace("no-such-ns") is False
