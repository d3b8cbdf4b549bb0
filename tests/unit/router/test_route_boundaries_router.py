"""The routing rules' boundaries as the live router meets them: its policy built from a topology
(`dispatch.make_policy`), its link view measured from the PrfaaS instance's polled counters
(`ClusterMonitor`), and the same calls `Dispatcher.decide` makes. Expected decisions are worked
out by hand in the comments.

`examples/local-tiny.toml`: t = 64 tokens, a 100 Gbit/s link (12.5e9 bytes/s), no controller, so
the defaults hold: t doubles and routing turns cache-affine once 1% of the bytes sent are resent.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from prfaas.messages import InstanceStats
from prfaas.policy import RouteDecision, RouteTarget
from prfaas.router.dispatch import make_policy
from prfaas.router.monitor import ClusterMonitor
from prfaas.topology import load_topology
from prfaas.transport.linkstats import LinkStats

PD, PRFAAS = RouteTarget.PD_PREFILL, RouteTarget.PRFAAS
TOPOLOGY = load_topology(Path(__file__).resolve().parents[3] / "examples" / "local-tiny.toml")
SENDER, DEST = "prfaas-p0", "127.0.0.1:18302"  # the PrfaaS instance and the decode's KV port
SENT_BYTES = 1_000_000  # sent in the 1 s between two polls: utilization 1e6 / 12.5e9 = 8e-5


def _poll(monitor: ClusterMonitor, at_s: float, sent: int, resent: int) -> None:
    # one connection, 1 ms RTT, 1e9 bytes/s delivered, one transfer: only the counters matter
    link = LinkStats(DEST, 1, 0.001, 0.001, 1e9, 1e9, 0, 1, 0, 0, sent, resent)
    state = monitor.states[SENDER]
    state.stats = InstanceStats(SENDER, "prefill", 0, 0, 0, 0.0, links=(asdict(link),))
    state.update_egress(at_s)


def _decide(num_prompt_tokens: int, resent_bytes: int) -> RouteDecision:
    """Two polls 1 s apart, SENT_BYTES sent and `resent_bytes` retransmitted between them, then
    the router's policy on the monitor's views (no cached prefix)."""
    monitor = ClusterMonitor(TOPOLOGY, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    _poll(monitor, 0.0, 0, 0)
    _poll(monitor, 1.0, SENT_BYTES, resent_bytes)
    prfaas, pd = TOPOLOGY.clusters
    link = monitor.link_view(prfaas, pd)
    assert link is not None and link.retransmit_rate == resent_bytes / SENT_BYTES
    return make_policy(TOPOLOGY).choose(
        num_prompt_tokens, 0, 0, link, monitor.cluster_view(prfaas), monitor.cluster_view(pd)
    )


@pytest.mark.parametrize(
    ("prompt", "resent", "target", "reason"),
    [
        # no retransmissions: t = 64
        (63, 0, PD, "global-prefix: l=63 <= t=64"),
        (64, 0, PD, "global-prefix: l=64 <= t=64"),
        (65, 0, PRFAAS, "global-prefix: l=65 > t=64"),
        # 9_999 of 1_000_000 bytes resent: 0.9999% < 1%, t stays 64
        (100, 9_999, PRFAAS, "global-prefix: l=100 > t=64"),
        # 10_000 resent: exactly 1%, congested: t = 128, cache-affine
        (100, 10_000, PD, "cache-affine: l=100 <= t=128"),
        (128, 10_000, PD, "cache-affine: l=128 <= t=128"),
        (129, 10_000, PRFAAS, "cache-affine: l=129 > t=128"),
        # 10_001 resent: 1.0001%, congested
        (100, 10_001, PD, "cache-affine: l=100 <= t=128"),
    ],
)
def test_the_router_routes_at_the_threshold_and_retransmit_boundaries(
    prompt: int, resent: int, target: RouteTarget, reason: str
) -> None:
    d = _decide(prompt, resent)
    assert (d.target, d.num_incremental_tokens, d.reason) == (target, prompt, reason)
