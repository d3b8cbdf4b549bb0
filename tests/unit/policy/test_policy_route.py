"""Routing table tests: the threshold rule, cache-affine vs global best prefix, congestion, the
offload-delay rule (link backlog and both clusters' queues) and the hysteresis of a RouteState."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.policy import (
    ClusterView,
    InstanceLoad,
    LinkView,
    RouteDecision,
    RoutePolicyConfig,
    RouteTarget,
    choose_route,
    make_route_policy,
)
from prfaas.policy.route import RouteState, effective_threshold
from prfaas.policy.throughput import StageCosts
from prfaas.types import DeploymentKind

CFG = RoutePolicyConfig(threshold_tokens=1000)
IDLE = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.1)
BUSY = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.7)  # scarce, below the raise level
FULL = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=1.0)  # busy, but utilization alone
LOSSY = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.1, retransmit_rate=0.05)

PD, PRFAAS = RouteTarget.PD_PREFILL, RouteTarget.PRFAAS


@pytest.mark.parametrize(
    ("prompt", "c_pd", "c_prfaas", "link", "target", "incremental", "hit", "moved"),
    [
        # no prefix hits: plain l > t
        (1000, 0, 0, IDLE, PD, 1000, 0, 0),
        (1001, 0, 0, IDLE, PRFAAS, 1001, 0, 0),
        # global best prefix (abundant bandwidth): PrfaaS's cache makes l short -> PD-P, cache moved
        (5000, 0, 4500, IDLE, PD, 500, 4500, 4500),
        # global best prefix: PD's cache is longer but l still > t -> PrfaaS, PD's cache moved over
        (9000, 3000, 1000, IDLE, PRFAAS, 6000, 3000, 2000),
        # cache-affine (scarce): only PD's own cache counts for the PD-P test
        (5000, 0, 4500, BUSY, PRFAAS, 500, 4500, 0),
        (5000, 4200, 0, BUSY, PD, 800, 4200, 0),
        # congestion seen through retransmissions: scarce and t raised x2 (1500 <= 2000 stays)
        (1500, 0, 1400, LOSSY, PD, 1500, 0, 0),
        (2500, 0, 0, LOSSY, PRFAAS, 2500, 0, 0),
        # a fully utilized link is no reason to stop offloading (cache-affine, t unchanged)
        (100_000, 0, 0, FULL, PRFAAS, 100_000, 0, 0),
        # no link view: cache-affine at the configured t
        (5000, 0, 4500, None, PRFAAS, 500, 4500, 0),
    ],
)
def test_route_table(
    prompt: int,
    c_pd: int,
    c_prfaas: int,
    link: LinkView | None,
    target: RouteTarget,
    incremental: int,
    hit: int,
    moved: int,
) -> None:
    d = choose_route(prompt, c_pd, c_prfaas, CFG, link)
    assert (d.target, d.num_incremental_tokens, d.num_prefix_hit_tokens) == (
        target,
        incremental,
        hit,
    )
    assert d.num_prefix_transfer_tokens == moved
    assert d.num_incremental_tokens + d.num_prefix_hit_tokens == prompt
    assert d.reason


def test_reasons_name_the_rule() -> None:
    assert "cache-affine" in choose_route(10, 0, 0, CFG, BUSY).reason
    assert "global-prefix" in choose_route(10, 0, 0, CFG, IDLE).reason
    assert "cache-affine" in choose_route(10, 0, 0, CFG, FULL).reason


def test_deployment_kinds_fix_the_target() -> None:
    homo = make_route_policy(DeploymentKind.HOMOGENEOUS)
    naive = make_route_policy(DeploymentKind.NAIVE)
    prfaas = make_route_policy(DeploymentKind.PRFAAS, CFG)
    for prompt in (1, 999, 10**6):
        assert homo.choose(prompt, 0, 0, IDLE).target is PD
        assert naive.choose(prompt, 0, 0, FULL).target is PRFAAS
    assert prfaas.choose(5000, 0, 0, IDLE).target is PRFAAS
    assert homo.choose(5000, 100, 4000, IDLE) == RouteDecision(
        PD, 4900, 100, "homogeneous: all prefill on PD-P"
    )
    assert naive.choose(5000, 100, 4000, IDLE).num_prefix_hit_tokens == 4000


def test_make_route_policy_needs_config_for_prfaas() -> None:
    with pytest.raises(ValueError):
        make_route_policy(DeploymentKind.PRFAAS)
    assert make_route_policy("naive").kind is DeploymentKind.NAIVE  # type: ignore[arg-type]


@pytest.mark.parametrize(("prompt", "c_pd", "c_prfaas"), [(-1, 0, 0), (10, 11, 0), (10, 0, -1)])
def test_inconsistent_token_counts_rejected(prompt: int, c_pd: int, c_prfaas: int) -> None:
    with pytest.raises(ValueError):
        choose_route(prompt, c_pd, c_prfaas, CFG, IDLE)


def test_bad_config_and_link_rejected() -> None:
    with pytest.raises(ValueError):
        RoutePolicyConfig(threshold_tokens=-1)
    with pytest.raises(ValueError):
        RoutePolicyConfig(threshold_tokens=1, threshold_raise_factor=0.5)
    with pytest.raises(ValueError):
        LinkView(bandwidth_bytes_per_s=-1.0, utilization=0.0)
    with pytest.raises(ValueError):
        LinkView(bandwidth_bytes_per_s=1.0, utilization=1.2)  # a utilization is a share, <= 1
    with pytest.raises(ValueError):
        LinkView(bandwidth_bytes_per_s=1.0, utilization=0.5, backlog_bytes=-1.0)


def test_effective_threshold_is_raised_by_congestion_only() -> None:
    assert effective_threshold(CFG, None) == 1000
    assert effective_threshold(CFG, FULL) == 1000
    assert effective_threshold(CFG, LOSSY) == 2000


# --- offload-delay rule ---------------------------------------------------------------------------
# Round-number costs: PrfaaS prefills 1000 tokens/s, PD-P 500 tokens/s, KV is 100 B/token, and the
# link carries 1 MB/s. A 2000-token request: 2 s on PrfaaS, 4 s on PD-P, 0.2 s of KV on the link.

COSTS = StageCosts(
    t_prefill_prfaas_s=lambda n: n / 1000,
    t_prefill_pd_s=lambda n: n / 500,
    kv_bytes=lambda n: 100.0 * n,
    egress_bytes_per_s=1e6,
    max_batch_size=1,
    t_decode_step_s=1.0,
    num_output_tokens=1.0,
)
DCFG = RoutePolicyConfig(threshold_tokens=1000, costs=COSTS, local_delay_ratio=1.0)


def _link(backlog_bytes: float, utilization: float = 1.0, bandwidth: float = 1e6) -> LinkView:
    return LinkView(bandwidth, utilization, backlog_bytes)


def _cluster(name: str, *waits_s: float) -> ClusterView:
    loads = tuple(InstanceLoad(f"{name}-{k}", 0, queued_prefill_s=w) for k, w in enumerate(waits_s))
    return ClusterView(name, prefill_instances=loads)


@pytest.mark.parametrize(
    ("prompt", "c_pd", "link", "prfaas_waits", "pd_waits", "target", "rule"),
    [
        # planned operating point: link 100% utilized, backlog 1 s < the 2 s prefill -> offload
        (2000, 0, _link(1e6), (0.0,), (0.0,), PRFAAS, "cache-affine"),
        # link falling behind: 5 s backlog + 0.2 s KV > 4 s local prefill -> stay local
        (2000, 0, _link(5e6), (0.0,), (0.0,), PD, "link-backlog"),
        # same backlog, but PD-P is queued 2 s too: 5.2 s <= 6 s -> offload
        (2000, 0, _link(5e6), (0.0,), (2.0,), PRFAAS, "cache-affine"),
        # PrfaaS queued 3 s (least-loaded instance): 5 s > 4 s -> stay local
        (2000, 0, _link(0.0), (9.0, 3.0), (0.0,), PD, "prfaas-delay"),
        # PrfaaS queue 1.5 s: 3.5 s <= 4 s -> offload
        (2000, 0, _link(0.0), (1.5,), (0.0,), PRFAAS, "cache-affine"),
        # dead link: KV would never arrive -> stay local
        (2000, 0, _link(0.0, 0.0, bandwidth=0.0), (0.0,), (0.0,), PD, "link-backlog"),
        # short requests stay local whatever the PD-P queue: the rule only vetoes offloads
        (500, 0, _link(0.0), (0.0,), (100.0,), PD, "cache-affine"),
        # global prefix (utilization 0.1): PD's 4500-token prefix leaves 1500 tokens, 3 s locally;
        # offload would prefill 1500 on PrfaaS (1.5 s) but wait for 3.5 s backlog + 0.15 s of KV
        (6000, 4500, _link(3.5e6, 0.1), (0.0,), (0.0,), PD, "link-backlog"),
        # cache-affine (busy link): PrfaaS has no prefix and would prefill all 6000 tokens (6 s)
        (6000, 4500, _link(0.0), (0.0,), (0.0,), PD, "prfaas-delay"),
    ],
)
def test_offload_delay_table(
    prompt: int,
    c_pd: int,
    link: LinkView,
    prfaas_waits: tuple[float, ...],
    pd_waits: tuple[float, ...],
    target: RouteTarget,
    rule: str,
) -> None:
    prfaas, pd = _cluster("prfaas", *prfaas_waits), _cluster("pd-p", *pd_waits)
    d = choose_route(prompt, c_pd, 0, DCFG, link, prfaas, pd)
    assert d.target is target
    assert d.reason.split(":")[0] == rule
    assert d.num_incremental_tokens + d.num_prefix_hit_tokens == prompt
    if target is PD:
        assert d.num_prefix_hit_tokens == c_pd and d.num_prefix_transfer_tokens == 0


def test_local_delay_ratio_is_a_margin() -> None:
    prfaas, pd = _cluster("prfaas", 0.0), _cluster("pd-p", 0.0)
    link = _link(5e6)  # offload ready in 5.2 s, local in 4 s
    assert choose_route(2000, 0, 0, DCFG, link, prfaas, pd).target is PD
    wide = RoutePolicyConfig(threshold_tokens=1000, costs=COSTS, local_delay_ratio=1.5)
    assert choose_route(2000, 0, 0, wide, link, prfaas, pd).target is PRFAAS  # 5.2 <= 6
    assert choose_route(2000, 0, 0, wide, _link(6.5e6), prfaas, pd).target is PD  # 6.7 > 6
    with pytest.raises(ValueError):
        RoutePolicyConfig(threshold_tokens=1000, local_delay_ratio=0.9)


def test_offload_delay_rule_needs_costs_link_and_both_views() -> None:
    behind, idle = _link(1e9), _cluster("x", 0.0)
    assert choose_route(2000, 0, 0, DCFG, behind, idle, idle).target is PD
    assert choose_route(2000, 0, 0, CFG, behind, idle, idle).target is PRFAAS  # no costs
    assert choose_route(2000, 0, 0, DCFG, behind, None, idle).target is PRFAAS
    assert choose_route(2000, 0, 0, DCFG, None, idle, idle).target is PRFAAS
    policy = make_route_policy(DeploymentKind.PRFAAS, DCFG)
    assert policy.choose(2000, 0, 0, behind, idle, idle).reason.startswith("link-backlog:")


def test_views_drain_and_wait() -> None:
    assert _link(2e6).drain_s() == pytest.approx(2.0)
    assert _link(2e6).drain_s(1e6) == pytest.approx(3.0)
    assert _link(0.0, 0.0, bandwidth=0.0).drain_s() == 0.0
    assert _cluster("p", 4.0, 1.0, 2.0).prefill_wait_s() == 1.0
    # a link retransmitting a quarter of what it sends delivers three quarters of its rate
    lossy = LinkView(1e6, utilization=1.0, backlog_bytes=3e6, retransmit_rate=0.25)
    assert lossy.drain_s() == pytest.approx(4.0)
    assert replace(lossy, retransmit_rate=1.0).drain_s() == float("inf")
    assert ClusterView("empty").prefill_wait_s() == float("inf")


# --- hysteresis (RouteState) ----------------------------------------------------------------------
# HCFG: enter diverting at offload_ready > 1.5 x local_ready, leave at <= 1.2 x. A 2000-token
# request prefills in 4 s on PD-P, so the ratio is (backlog_s + 0.2 s) / 4 s: a backlog of
# 5.8 s gives 1.5, 4.6 s gives 1.2.

HCFG = RoutePolicyConfig(threshold_tokens=1000, costs=COSTS, local_delay_ratio=1.5)
IDLE_P, IDLE_PD = _cluster("prfaas", 0.0), _cluster("pd-p", 0.0)


def _at_ratio(ratio: float) -> LinkView:
    """A link whose backlog puts a 2000-token request's offload/local ratio at `ratio`."""
    return _link(ratio * 4e6 - 0.2e6)


def _route(ratio: float, state: RouteState | None) -> RouteDecision:
    return choose_route(2000, 0, 0, HCFG, _at_ratio(ratio), IDLE_P, IDLE_PD, state=state)


def test_hysteresis_has_a_gap_between_enter_and_exit() -> None:
    state = RouteState(is_scarce=True)  # the link is fully utilized: scarce from the start
    targets = [_route(r, state).target for r in (1.35, 1.6, 1.35, 1.25, 1.15, 1.35)]
    # below 1.5: offload; above: divert; between 1.2 and 1.5 the mode holds; <= 1.2: offload
    assert targets == [PRFAAS, PD, PD, PD, PRFAAS, PRFAAS]
    assert state.num_switches == 2 and not state.is_diverting
    held = _route(1.6, state), _route(1.35, state)
    assert "diverting until <= 1.2x" in held[1].reason
    assert held[1].reason.startswith("link-backlog:")
    # without a state the same inputs are today's single-level rule
    assert [_route(r, None).target for r in (1.35, 1.6, 1.35)] == [PRFAAS, PD, PRFAAS]


def test_constant_load_gives_no_alternation_beyond_the_first_switch() -> None:
    """Backlog noise around the entering level: the single-level rule flips on almost every
    request; with a state, routing switches once and stays."""
    ratios = [1.5 + (0.04 if k % 2 else -0.04) for k in range(40)]
    plain = [_route(r, None).target for r in ratios]
    state = RouteState(is_scarce=True)
    kept = [_route(r, state).target for r in ratios]
    flips = sum(a != b for a, b in itertools.pairwise(plain))
    assert flips == len(ratios) - 1
    assert sum(a != b for a, b in itertools.pairwise(kept)) == 1
    assert kept[0] is PRFAAS and kept[-1] is PD and state.num_switches == 1


def test_scarce_mode_has_hysteresis_too() -> None:
    state = RouteState()

    def rule(utilization: float, s: RouteState | None) -> str:
        link = LinkView(12.5e9, utilization)
        return choose_route(5000, 0, 4500, CFG, link, state=s).reason.split(":")[0]

    assert [rule(u, state) for u in (0.55, 0.65, 0.55, 0.45, 0.55)] == [
        "global-prefix",
        "cache-affine",
        "cache-affine",  # held: above abundant_utilization (0.5)
        "global-prefix",
        "global-prefix",
    ]
    assert rule(0.55, None) == "global-prefix"
    assert state.num_switches == 2


def test_exit_levels_are_capped_by_the_entering_ones() -> None:
    assert HCFG.exit_ratio == 1.2 and HCFG.exit_utilization == 0.5
    tight = RoutePolicyConfig(threshold_tokens=1, local_delay_ratio=1.0, scarce_utilization=0.3)
    assert tight.exit_ratio == 1.0 and tight.exit_utilization == 0.3
    with pytest.raises(ValueError):
        RoutePolicyConfig(threshold_tokens=1, exit_delay_ratio=0.9)
    with pytest.raises(ValueError):
        RoutePolicyConfig(threshold_tokens=1, abundant_utilization=-0.1)


def test_route_policy_passes_the_state_and_kinds_ignore_it() -> None:
    state = RouteState()
    policy = make_route_policy(DeploymentKind.PRFAAS, HCFG)
    assert policy.choose(2000, 0, 0, _at_ratio(1.6), IDLE_P, IDLE_PD, state=state).target is PD
    assert state.is_diverting
    assert policy.choose(2000, 0, 0, _at_ratio(1.35), IDLE_P, IDLE_PD, state=state).target is PD
    homo = make_route_policy(DeploymentKind.HOMOGENEOUS)
    fresh = RouteState()
    assert homo.choose(2000, 0, 0, _at_ratio(9.0), state=fresh).target is PD
    assert fresh == RouteState()


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.floats(0.5, 3.0),
    utilization=st.floats(0.0, 1.0),
    prompt=st.integers(1, 5000),
    cached=st.integers(0, 5000),
)
def test_a_fresh_state_only_differs_inside_the_gaps(
    ratio: float, utilization: float, prompt: int, cached: int
) -> None:
    """A new RouteState (not scarce, not diverting) decides like no state at all: the modes only
    matter once they were entered."""
    cached = min(cached, prompt)
    link = LinkView(1e6, utilization, max(0.0, ratio * 4e6 - 0.2e6))
    with_state = choose_route(prompt, cached, 0, HCFG, link, IDLE_P, IDLE_PD, state=RouteState())
    assert with_state == choose_route(prompt, cached, 0, HCFG, link, IDLE_P, IDLE_PD)
