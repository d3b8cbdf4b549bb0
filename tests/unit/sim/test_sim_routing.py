"""Length-only routing: the shared policy decides with no cached tokens; the chosen cluster still
reuses its own cached prefix; nothing moves between clusters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.policy.route import RoutePolicyConfig, RouteTarget, make_route_policy
from prfaas.policy.views import LinkView
from prfaas.sim.routing import LengthOnlyPolicy, routing_policy
from prfaas.types import DeploymentKind

CONFIG = RoutePolicyConfig(threshold_tokens=4000)
IDLE_LINK = LinkView(bandwidth_bytes_per_s=12.5e9, utilization=0.1)


def test_a_cached_conversation_turn_stays_local_only_when_cache_aware() -> None:
    """10,000 prompt tokens, 9,000 of them cached at PD: l = 1,000 <= t for the cache-aware
    policy (PD-P), l = 10,000 > t for length-only (PrfaaS, reusing PrfaaS's own 2,048)."""
    policy = make_route_policy(DeploymentKind.PRFAAS, CONFIG)
    aware = policy.choose(10_000, 9_000, 2_048, IDLE_LINK)
    assert aware.target is RouteTarget.PD_PREFILL and aware.num_incremental_tokens == 1_000
    only = routing_policy(policy, "length-only").choose(10_000, 9_000, 2_048, IDLE_LINK)
    assert only.target is RouteTarget.PRFAAS
    assert (only.num_prefix_hit_tokens, only.num_incremental_tokens) == (2_048, 7_952)
    assert only.num_prefix_transfer_tokens == 0
    assert only.reason.startswith("global-prefix: l=10000 > t=4000")


def test_cache_aware_is_the_policy_itself_and_unknown_routings_are_refused() -> None:
    policy = make_route_policy(DeploymentKind.PRFAAS, CONFIG)
    assert routing_policy(policy, "cache-aware") is policy
    with pytest.raises(ValueError, match="unknown routing"):
        routing_policy(policy, "prefix-only")


@given(
    kind=st.sampled_from(list(DeploymentKind)),
    total=st.integers(1, 200_000),
    data=st.data(),
    utilization=st.floats(0.0, 1.0),
)
def test_length_only_decides_as_the_policy_without_cache(
    kind: DeploymentKind, total: int, data: st.DataObject, utilization: float
) -> None:
    cached_pd = data.draw(st.integers(0, total))
    cached_prfaas = data.draw(st.integers(0, total))
    link = LinkView(12.5e9, utilization, 0.0)
    config = CONFIG if kind is DeploymentKind.PRFAAS else None
    policy = make_route_policy(kind, config)
    blind = policy.choose(total, 0, 0, link)
    only = LengthOnlyPolicy(kind, config).choose(total, cached_pd, cached_prfaas, link)
    assert only.target is blind.target
    assert only.reason == blind.reason
    hit = cached_prfaas if only.target is RouteTarget.PRFAAS else cached_pd
    assert only.num_prefix_hit_tokens == hit
    assert only.num_incremental_tokens == total - hit
    assert only.num_prefix_transfer_tokens == 0
