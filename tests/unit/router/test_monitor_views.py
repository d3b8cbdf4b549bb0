"""The router's link view: utilization is egress measured between polls, an idle link reads 0,
and before any transfer the policy sees an idle link of the configured capacity."""

from __future__ import annotations

import pytest

from prfaas.messages import InstanceStats
from prfaas.router.monitor import ClusterMonitor
from prfaas.topology import Topology
from topologies import Node, TopologySpec, decode, pd, prfaas

DEST = "127.0.0.1:18301"


def _topology() -> Topology:
    """r0 (PrfaaS prefill), p0 and d0 (PD, d0's KV receiver at DEST), an 8 Gbps link."""
    clusters = (prfaas(Node("r0")), pd(Node("p0"), decode("d0", kv=DEST)))
    return TopologySpec(clusters, link_gbps=8, token="t", port_base=18000).topology()  # 1e9 B/s


def _link(
    bytes_sent: int,
    *,
    retrans: int = 0,
    delivery_rate: float = 5e9,
    dest: str = DEST,
    mss_bytes: int = 0,
) -> dict[str, object]:
    return {
        "dest": dest,
        "num_connections": 2,
        "rtt_s": 0.001,
        "min_rtt_s": 0.001,
        "delivery_rate_bytes_per_s": delivery_rate,
        "goodput_bytes_per_s": delivery_rate,
        "total_retransmits": 0,
        "num_transfers": 3,
        "num_failures": 0,
        "queued_bytes": 0,
        "bytes_sent": bytes_sent,
        "bytes_retransmitted": retrans,
        "mss_bytes": mss_bytes,
    }


def _stats(bytes_sent: int, *, retrans: int = 0, delivery_rate: float = 5e9) -> InstanceStats:
    link = _link(bytes_sent, retrans=retrans, delivery_rate=delivery_rate)
    return InstanceStats("r0", "prefill", 0, 0, 0, 0.0, links=(link,))


def _monitor() -> tuple[ClusterMonitor, Topology]:
    topology = _topology()
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls here
    for state in monitor.states.values():
        state.is_ready = True
    return monitor, topology


def _poll(monitor: ClusterMonitor, at_s: float, bytes_sent: int, retrans: int = 0) -> None:
    state = monitor.states["r0"]
    state.stats = _stats(bytes_sent, retrans=retrans)
    state.update_egress(at_s)


def test_utilization_is_egress_between_polls_not_the_last_delivery_rate() -> None:
    monitor, topology = _monitor()
    prfaas, pd = topology.clusters
    _poll(monitor, 0.0, 0)
    _poll(monitor, 0.5, 250_000_000)  # 0.5e9 bytes/s of 1e9
    view = monitor.link_view(prfaas, pd)
    assert view is not None and view.utilization == pytest.approx(0.5)
    _poll(monitor, 1.0, 250_000_000)  # nothing since: the window (from 0 s) holds the burst
    view = monitor.link_view(prfaas, pd)
    assert view is not None and view.utilization == pytest.approx(0.25)
    _poll(monitor, 3.0, 250_000_000)  # nothing sent for a whole window: idle
    view = monitor.link_view(prfaas, pd)
    assert view is not None and view.utilization == 0.0


def test_a_burst_and_its_losses_are_averaged_over_the_window() -> None:
    monitor, topology = _monitor()
    for k in range(8):  # 2 s of polls every 0.25 s, idle
        _poll(monitor, k * 0.25, 0)
    # one quarter-second burst at the full 1e9 bytes/s, with 2% of it resent
    _poll(monitor, 2.0, 250_000_000, retrans=5_000_000)
    view = monitor.link_view(*topology.clusters)
    assert view is not None
    assert view.utilization == pytest.approx(0.125)  # 250 MB over the 2 s window
    assert view.retransmit_rate == pytest.approx(0.02)  # a share of what was sent: unchanged
    for k in range(9, 17):  # the window slides past the burst: idle again
        _poll(monitor, k * 0.25, 250_000_000, retrans=5_000_000)
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.utilization == 0.0 and view.retransmit_rate == 0.0


def test_a_new_connection_restarting_its_count_reads_no_negative_rate() -> None:
    monitor, topology = _monitor()
    _poll(monitor, 0.0, 900_000_000)
    _poll(monitor, 1.0, 1_000)
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.utilization == 0.0


def test_before_any_transfer_the_link_is_idle_at_its_configured_capacity() -> None:
    monitor, topology = _monitor()
    monitor.states["r0"].stats = InstanceStats("r0", "prefill", 0, 0, 0, 0.0)
    view = monitor.link_view(*topology.clusters)
    assert view is not None
    assert (view.bandwidth_bytes_per_s, view.utilization, view.backlog_bytes) == (1e9, 0.0, 0.0)
    monitor.link_capacity_bytes_per_s = 1.25e8  # an operator reported a drop
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.bandwidth_bytes_per_s == 1.25e8


def test_no_ready_prfaas_instance_means_no_link_view() -> None:
    monitor, topology = _monitor()
    monitor.states["r0"].is_ready = False
    assert monitor.link_view(*topology.clusters) is None


def test_converting_and_draining_instances_take_no_work_but_count_in_their_new_role() -> None:
    monitor, topology = _monitor()
    pd = topology.clusters[1]
    d0 = monitor.states["d0"]
    d0.stats = InstanceStats("d0", "decode", 0, 0, 0, 0.0)
    d0.converting_to = "prefill"
    assert monitor.ready(pd, "decode") == [] and monitor.ready(pd, "prefill") == [
        monitor.states["p0"]
    ]
    assert [s.config.name for s in monitor.in_role(pd, "prefill")] == ["p0", "d0"]
    d0.converting_to = None
    d0.stats = InstanceStats("d0", "prefill", 0, 0, 0, 0.0, draining_to=None)
    assert [s.config.name for s in monitor.ready(pd, "prefill")] == ["p0", "d0"]
    d0.stats = InstanceStats("d0", "prefill", 0, 0, 0, 0.0, draining_to="decode")
    assert [s.config.name for s in monitor.ready(pd, "prefill")] == ["p0"]


def test_retransmissions_are_judged_over_the_last_window_with_enough_bytes() -> None:
    monitor, topology = _monitor()
    _poll(monitor, 0.0, 0)
    _poll(monitor, 0.25, 10_000, retrans=1_500)  # one lost segment of a tiny transfer
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.retransmit_rate == 0.0
    _poll(monitor, 0.5, 10_000_000, retrans=501_500)  # 5% of 9.99 MB retransmitted
    view = monitor.link_view(*topology.clusters)  # the window starts at 0 s: all of it counts
    assert view is not None and view.retransmit_rate == pytest.approx(501_500 / 10_000_000)
    _poll(monitor, 2.75, 10_000_000, retrans=501_500)  # idle for a window: nothing to judge
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.retransmit_rate == 0.0


def test_loss_is_the_whole_links_share_not_its_worst_senders() -> None:
    """Two PrfaaS senders to two KV receivers: one pair resent 4 of its 300 segments (1.3%),
    the others none; the link lost 4 of 1,200 segments (0.33%), under the route rule's 1%."""
    dest2, mss = "127.0.0.1:18302", 12_448
    clusters = (
        prfaas(Node("r0"), Node("r1")),
        pd(Node("p0"), decode("d0", kv=DEST), decode("d1", kv=dest2)),
    )
    topology = TopologySpec(clusters, link_gbps=8, token="t", port_base=18000).topology()
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls here
    for state in monitor.states.values():
        state.is_ready = True
    for at_s, num_segments, num_lost in ((0.0, 0, 0), (1.0, 300, 4)):
        for sender in ("r0", "r1"):
            links = tuple(
                _link(
                    num_segments * mss,
                    retrans=num_lost * mss if (sender, dest) == ("r0", DEST) else 0,
                    dest=dest,
                    mss_bytes=mss,
                )
                for dest in (DEST, dest2)
            )
            state = monitor.states[sender]
            state.stats = InstanceStats(sender, "prefill", 0, 0, 0, 0.0, links=links)
            state.update_egress(at_s)
    view = monitor.link_view(*topology.clusters)
    assert view is not None and view.retransmit_rate == pytest.approx(4 / 1200)
