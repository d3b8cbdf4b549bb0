"""The offload-delay rule counts the link's RTT: the same request is offloaded on a short path
and kept local on a long one."""

from __future__ import annotations

import pytest
from test_policy_route import COSTS  # 1000 and 500 tokens/s, 100 B/token, a 1 MB/s link

from prfaas.policy.route import RoutePolicyConfig, RouteTarget, choose_route, path_delays
from prfaas.policy.views import ClusterView, InstanceLoad, LinkView

CONFIG = RoutePolicyConfig(threshold_tokens=1000, costs=COSTS)  # local_delay_ratio 1.5


def _cluster(name: str, wait_s: float) -> ClusterView:
    return ClusterView(
        name, prefill_instances=(InstanceLoad(f"{name}-0", 0, queued_prefill_s=wait_s),)
    )


def _link(rtt_s: float) -> LinkView:
    return LinkView(1e6, utilization=1.0, backlog_bytes=0.0, rtt_s=rtt_s)


def test_same_request_offloaded_at_rtt_0_and_kept_local_at_200_ms() -> None:
    """2000 tokens: PrfaaS queued 3.9 s + 2 s of prefill = 5.9 s; PD-P 4 s x 1.5 = 6 s. At RTT 0
    5.9 s <= 6 s: offload. At RTT 200 ms the acknowledgment makes it 6.1 s > 6 s: local."""
    prfaas, pd = _cluster("prfaas", 3.9), _cluster("pd-p", 0.0)
    near = choose_route(2000, 0, 0, CONFIG, _link(0.0), prfaas, pd)
    far = choose_route(2000, 0, 0, CONFIG, _link(0.2), prfaas, pd)
    assert near.target is RouteTarget.PRFAAS
    assert far.target is RouteTarget.PD_PREFILL
    assert far.reason == (
        "prfaas-delay: offload ready in 6.10 s (link 0.20 s, PrfaaS 5.90 s, RTT 0.20 s) "
        "> local 4.00 s"
    )


def test_path_delays_add_one_rtt_to_the_offload_path_only() -> None:
    prfaas, pd = _cluster("prfaas", 0.0), _cluster("pd-p", 0.0)
    base = path_delays(COSTS, _link(0.0), prfaas, pd, 2000, 2000, 2000)
    far = path_delays(COSTS, _link(0.15), prfaas, pd, 2000, 2000, 2000)
    assert base.round_trip_s == 0.0
    assert far.round_trip_s == pytest.approx(0.15)
    assert far.offload_ready_s == pytest.approx(base.offload_ready_s + 0.15)
    assert far.local_ready_s == base.local_ready_s
