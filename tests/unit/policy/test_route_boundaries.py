"""The routing rules at their boundaries, and one step either side, with hand-worked expectations.

The rules as documented (`prfaas.policy.route`): a request stays local when l <= t (l the
incremental length, t the threshold); the link is congested when the retransmit rate reaches
`max_retransmit_rate` (then t doubles and routing turns cache-affine); bandwidth is scarce when
utilization reaches `scarce_utilization`; an offload stays local when offload_ready >
local_delay_ratio x local_ready. One step is one token for lengths, one byte for the backlog,
and the neighbouring float (`math.nextafter`) for rates and utilizations. Every expected value
below is worked out in its comment, not computed by the code under test.
"""

from __future__ import annotations

import math

import pytest
from test_policy_route import COSTS

from prfaas.policy import (
    ClusterView,
    InstanceLoad,
    LinkView,
    RoutePolicyConfig,
    RouteTarget,
    choose_route,
    make_route_policy,
)
from prfaas.policy.route import effective_threshold, is_bandwidth_scarce
from prfaas.types import DeploymentKind

PD, PRFAAS = RouteTarget.PD_PREFILL, RouteTarget.PRFAAS
T = 1000  # tokens
CFG = RoutePolicyConfig(threshold_tokens=T)  # defaults: raise x2 at 1% retransmits, scarce at 0.6
LIMIT = CFG.max_retransmit_rate  # 0.01
SCARCE = CFG.scarce_utilization  # 0.6


def _link(utilization: float = 0.1, retransmit_rate: float = 0.0) -> LinkView:
    return LinkView(12.5e9, utilization, retransmit_rate=retransmit_rate)


IDLE = _link()  # abundant: global best prefix


def _below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def _above(x: float) -> float:
    return math.nextafter(x, math.inf)


# --- l <= t stays local -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "c_pd", "c_prfaas", "link", "target", "hit", "moved", "reason"),
    [
        # no cache: l = prompt
        (999, 0, 0, IDLE, PD, 0, 0, "global-prefix: l=999 <= t=1000"),
        (1000, 0, 0, IDLE, PD, 0, 0, "global-prefix: l=1000 <= t=1000"),
        (1001, 0, 0, IDLE, PRFAAS, 0, 0, "global-prefix: l=1001 > t=1000"),
        # global best prefix (idle link): l = 5000 - 4000 cached at PrfaaS = 1000 <= t: PD-P,
        # the 4000 cached tokens moved there; 3999 cached: l = 1001 > t, PrfaaS reuses its own
        (5000, 0, 4001, IDLE, PD, 4001, 4001, "global-prefix: l=999 <= t=1000"),
        (5000, 0, 4000, IDLE, PD, 4000, 4000, "global-prefix: l=1000 <= t=1000"),
        (5000, 0, 3999, IDLE, PRFAAS, 3999, 0, "global-prefix: l=1001 > t=1000"),
        # cache-affine (utilization 0.7 >= 0.6): only PD's own cache: l = 5000 - c_pd
        (5000, 4001, 0, _link(0.7), PD, 4001, 0, "cache-affine: l=999 <= t=1000"),
        (5000, 4000, 0, _link(0.7), PD, 4000, 0, "cache-affine: l=1000 <= t=1000"),
        (5000, 3999, 0, _link(0.7), PRFAAS, 0, 0, "cache-affine: l=1001 > t=1000"),
        # no link view: cache-affine at t
        (1000, 0, 0, None, PD, 0, 0, "cache-affine: l=1000 <= t=1000"),
        (1001, 0, 0, None, PRFAAS, 0, 0, "cache-affine: l=1001 > t=1000"),
    ],
)
def test_a_request_stays_local_exactly_when_l_is_at_most_t(
    prompt: int,
    c_pd: int,
    c_prfaas: int,
    link: LinkView | None,
    target: RouteTarget,
    hit: int,
    moved: int,
    reason: str,
) -> None:
    d = make_route_policy(DeploymentKind.PRFAAS, CFG).choose(prompt, c_pd, c_prfaas, link)
    assert (d.target, d.num_prefix_hit_tokens, d.num_prefix_transfer_tokens) == (target, hit, moved)
    assert d.num_incremental_tokens == prompt - hit
    assert d.reason == reason


@pytest.mark.parametrize(
    ("threshold", "prompt", "target"),
    [
        (0, 0, PD),  # l = 0 <= 0
        (0, 1, PRFAAS),  # l = 1 > 0
        (1000.5, 1000, PD),  # a fractional t: 1000 <= 1000.5
        (1000.5, 1001, PRFAAS),  # 1001 > 1000.5
    ],
)
def test_threshold_edges(threshold: float, prompt: int, target: RouteTarget) -> None:
    config = RoutePolicyConfig(threshold_tokens=threshold)
    assert choose_route(prompt, 0, 0, config, IDLE).target is target


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        (11642, "global-prefix: l=11642 <= t=11642"),
        (11643, "global-prefix: l=11643 > t=11642"),
    ],
)
def test_a_fractional_auto_threshold_prints_as_whole_tokens(prompt: int, reason: str) -> None:
    """An "auto" t such as 11642.453125 reads as floor(t), which says the same for whole l."""
    config = RoutePolicyConfig(threshold_tokens=11642.453125)
    assert choose_route(prompt, 0, 0, config, IDLE).reason == reason


# --- the retransmit limit: congested from the limit on ------------------------------------------


@pytest.mark.parametrize(
    ("rate", "congested", "t"),
    [
        (0.0, False, 1000),
        (_below(LIMIT), False, 1000),  # 0.009999...: not yet
        (LIMIT, True, 2000),  # exactly 1%: t x 2
        (_above(LIMIT), True, 2000),
        (1.0, True, 2000),
    ],
)
def test_the_link_is_congested_from_the_retransmit_limit_on(
    rate: float, congested: bool, t: float
) -> None:
    link = _link(0.1, retransmit_rate=rate)
    assert effective_threshold(CFG, link) == t
    assert is_bandwidth_scarce(CFG, link) is congested  # utilization 0.1 alone is abundant


@pytest.mark.parametrize(
    ("rate", "prompt", "c_prfaas", "target", "hit", "reason"),
    [
        # 1500 tokens: > t = 1000 below the limit, <= the raised 2000 from the limit on
        (_below(LIMIT), 1500, 0, PRFAAS, 0, "global-prefix: l=1500 > t=1000"),
        (LIMIT, 1500, 0, PD, 0, "cache-affine: l=1500 <= t=2000"),
        (_above(LIMIT), 1500, 0, PD, 0, "cache-affine: l=1500 <= t=2000"),
        # the raised t is itself a boundary: l = 2000 stays, 2001 goes
        (LIMIT, 2000, 0, PD, 0, "cache-affine: l=2000 <= t=2000"),
        (LIMIT, 2001, 0, PRFAAS, 0, "cache-affine: l=2001 > t=2000"),
        # congestion also turns routing cache-affine: PrfaaS's 4500 cached tokens leave
        # l = 500 globally (PD-P, prefix moved) but l = 5000 for PD's own (empty) cache
        (_below(LIMIT), 5000, 4500, PD, 4500, "global-prefix: l=500 <= t=1000"),
        (LIMIT, 5000, 4500, PRFAAS, 4500, "cache-affine: l=5000 > t=2000"),
    ],
)
def test_decisions_either_side_of_the_retransmit_limit(
    rate: float, prompt: int, c_prfaas: int, target: RouteTarget, hit: int, reason: str
) -> None:
    d = choose_route(prompt, 0, c_prfaas, CFG, _link(0.1, retransmit_rate=rate))
    assert (d.target, d.num_prefix_hit_tokens, d.reason) == (target, hit, reason)


def test_a_custom_retransmit_limit_is_the_boundary() -> None:
    config = RoutePolicyConfig(threshold_tokens=T, max_retransmit_rate=0.25)  # 0.25: exact float
    assert [
        effective_threshold(config, _link(retransmit_rate=r)) for r in (0.24, _below(0.25), 0.25)
    ] == [1000, 1000, 2000]


# --- scarce bandwidth: cache-affine from scarce_utilization on ----------------------------------


@pytest.mark.parametrize(
    ("utilization", "target", "reason"),
    [
        # PrfaaS caches 4500 of 5000 tokens: global best prefix leaves l = 500 (PD-P, moved);
        # cache-affine judges PD's own cache (none): l = 5000 (PrfaaS, reusing its 4500)
        (_below(SCARCE), PD, "global-prefix: l=500 <= t=1000"),
        (SCARCE, PRFAAS, "cache-affine: l=5000 > t=1000"),
        (_above(SCARCE), PRFAAS, "cache-affine: l=5000 > t=1000"),
    ],
)
def test_routing_is_cache_affine_from_the_scarce_utilization_on(
    utilization: float, target: RouteTarget, reason: str
) -> None:
    d = choose_route(5000, 0, 4500, CFG, _link(utilization))
    assert (d.target, d.reason) == (target, reason)


# --- offload delay: stay local only when offload_ready > ratio x local_ready ---------------------
# COSTS (test_policy_route's): PrfaaS prefills 1000 tokens/s, PD-P 500 tokens/s, KV is 100 B per
# token, the link carries 1 MB/s. A 2000-token request: local_ready = 2000 / 500 = 4 s; its KV is
# 200 kB, 0.2 s on the link, so offload_ready = max(2 s of PrfaaS prefill, (backlog + 200 kB) /
# 1 MB/s) = 4 s at a backlog of exactly 3.8 MB (3_800_000 + 200_000 = 4_000_000 bytes: no rounding).

IDLE_CLUSTER = ClusterView("c", prefill_instances=(InstanceLoad("c-0", 0),))


@pytest.mark.parametrize(
    ("ratio", "backlog_bytes", "target", "rule"),
    [
        (1.0, 3_799_999, PRFAAS, "cache-affine"),  # 3.999999 s <= 4 s
        (1.0, 3_800_000, PRFAAS, "cache-affine"),  # 4 s, not > 4 s: offload
        (1.0, 3_800_001, PD, "link-backlog"),  # 4.000001 s > 4 s: local
        # ratio 1.5: local when offload_ready > 6 s, i.e. backlog > 5.8 MB
        (1.5, 5_799_999, PRFAAS, "cache-affine"),
        (1.5, 5_800_000, PRFAAS, "cache-affine"),
        (1.5, 5_800_001, PD, "link-backlog"),
    ],
)
def test_the_offload_delay_rule_at_its_boundary(
    ratio: float, backlog_bytes: int, target: RouteTarget, rule: str
) -> None:
    config = RoutePolicyConfig(threshold_tokens=T, costs=COSTS, local_delay_ratio=ratio)
    link = LinkView(1e6, 1.0, backlog_bytes)  # fully utilized: scarce, cache-affine
    d = choose_route(2000, 0, 0, config, link, IDLE_CLUSTER, IDLE_CLUSTER)
    assert (d.target, d.reason.split(":")[0]) == (target, rule)
