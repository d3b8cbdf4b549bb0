"""Routing table tests: the threshold rule, cache-affine vs global best prefix, saturation."""

from __future__ import annotations

import pytest

from prfaas.policy import (
    LinkView,
    RouteDecision,
    RoutePolicyConfig,
    RouteTarget,
    choose_route,
    make_route_policy,
)
from prfaas.types import DeploymentKind

CFG = RoutePolicyConfig(threshold_tokens=1000)
IDLE = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.1)
BUSY = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.7)  # scarce, below the raise level
HOT = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.85)  # t raised x2
FULL = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.96)  # offloading stopped
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
        # raised threshold near saturation: 1500 <= 2 * 1000 stays local
        (1500, 0, 0, HOT, PD, 1500, 0, 0),
        (2500, 0, 0, HOT, PRFAAS, 2500, 0, 0),
        # congestion seen through retransmissions: scarce and raised
        (1500, 0, 1400, LOSSY, PD, 1500, 0, 0),
        # saturated: nothing offloaded however long
        (100_000, 0, 0, FULL, PD, 100_000, 0, 0),
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
    assert "saturated" in choose_route(10, 0, 0, CFG, FULL).reason


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
        RoutePolicyConfig(threshold_tokens=1, raise_threshold_utilization=0.99)
    with pytest.raises(ValueError):
        LinkView(bandwidth_bytes_per_s=-1.0, utilization=0.0)
