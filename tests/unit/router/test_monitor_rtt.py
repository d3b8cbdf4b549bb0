"""The router's link view carries the path's RTT to the policy: TCP_INFO's where a connection has
measured one, the topology's `[link] rtt_ms` before that."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_monitor_views import _stats, _topology

from prfaas.messages import InstanceStats
from prfaas.policy.views import LinkView
from prfaas.router.monitor import ClusterMonitor
from prfaas.topology import Topology


def _monitor(rtt_ms: float) -> tuple[ClusterMonitor, Topology]:
    topology = _topology()
    topology = replace(topology, link=replace(topology.link, rtt_ms=rtt_ms))
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls here
    for state in monitor.states.values():
        state.is_ready = True
    return monitor, topology


def _view(monitor: ClusterMonitor, topology: Topology, stats: InstanceStats) -> LinkView:
    monitor.states["r0"].stats = stats
    monitor.states["r0"].update_egress(0.0)
    view = monitor.link_view(*topology.clusters)
    assert view is not None
    return view


def test_before_any_transfer_the_view_has_the_topologys_rtt() -> None:
    monitor, topology = _monitor(80.0)
    view = _view(monitor, topology, InstanceStats("r0", "prefill", 0, 0, 0, 0.0))
    assert view.rtt_s == pytest.approx(0.080)


def test_a_measured_rtt_wins_over_the_topologys() -> None:
    monitor, topology = _monitor(80.0)
    assert _view(monitor, topology, _stats(1000)).rtt_s == pytest.approx(0.001)


def test_an_unmeasured_rtt_falls_back_to_the_topologys() -> None:
    monitor, topology = _monitor(80.0)
    stats = _stats(1000)
    unmeasured = replace(stats, links=({**stats.links[0], "rtt_s": 0.0},))
    assert _view(monitor, topology, unmeasured).rtt_s == pytest.approx(0.080)
