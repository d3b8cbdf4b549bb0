"""Per-request routing: PrfaaS cluster or local PD-P, from lengths, prefix hits and link state.

Implements the paper's selective offloading (§3.3: incremental length l > t -> PrfaaS) and the
short-timescale rules of §3.4.3:

- bandwidth scarce (egress utilization >= `scarce_utilization`, congestion seen, or no link view):
  *cache-affine*, each cluster's cache judged on its own: l_total - l_pd <= t -> PD-P, else PrfaaS
  (which then reuses its own l_prfaas);
- bandwidth abundant: *global best prefix*, l_prefix = max(l_pd, l_prfaas): l_total - l_prefix <= t
  -> PD-P, else PrfaaS; the longer cache is moved to the chosen cluster first
  (`num_prefix_transfer_tokens`);
- near egress saturation the threshold is raised (x `threshold_raise_factor`), and at
  `stop_offload_utilization` nothing is offloaded.

The deployment kind is part of the policy: HOMOGENEOUS sends everything to PD-P, NAIVE everything to
PrfaaS, so a driver (router or simulator) never decides on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from prfaas.policy.views import LinkView
from prfaas.types import DeploymentKind


class RouteTarget(StrEnum):
    """Where a request's prefill runs."""

    PRFAAS = "prfaas"  # remote prefill cluster; KV then crosses the link to a PD-D instance
    PD_PREFILL = "pd_prefill"  # a prefill instance of the local PD cluster


@dataclass(frozen=True, slots=True)
class RoutePolicyConfig:
    """Knobs of the routing rule. Utilizations are shares of link capacity, 0..1."""

    threshold_tokens: float  # t: offload when the incremental length is > t, tokens
    scarce_utilization: float = 0.6  # at/above: bandwidth scarce -> cache-affine routing
    raise_threshold_utilization: float = 0.8  # at/above: t is multiplied by threshold_raise_factor
    threshold_raise_factor: float = 2.0  # how much t grows near saturation (>= 1)
    stop_offload_utilization: float = 0.95  # at/above: nothing is offloaded
    max_retransmit_rate: float = 0.01  # at/above: link congested (scarce, and t raised)

    def __post_init__(self) -> None:
        if math.isnan(self.threshold_tokens) or self.threshold_tokens < 0:
            raise ValueError(f"threshold_tokens must be >= 0, got {self.threshold_tokens}")
        if self.threshold_raise_factor < 1:
            raise ValueError(
                f"threshold_raise_factor must be >= 1, got {self.threshold_raise_factor}"
            )
        if self.scarce_utilization < 0:
            raise ValueError(f"scarce_utilization must be >= 0, got {self.scarce_utilization}")
        if not 0 <= self.raise_threshold_utilization <= self.stop_offload_utilization:
            raise ValueError("need 0 <= raise_threshold_utilization <= stop_offload_utilization")
        if not 0 <= self.max_retransmit_rate <= 1:
            raise ValueError(
                f"max_retransmit_rate must be in [0, 1], got {self.max_retransmit_rate}"
            )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request prefills and how much of its prompt must be computed there."""

    target: RouteTarget  # cluster that runs the prefill
    num_incremental_tokens: int  # prompt tokens to compute (prompt minus the reused prefix)
    num_prefix_hit_tokens: int  # cached prompt tokens reused at the target
    reason: str  # short human-readable cause, for logs and sim traces
    num_prefix_transfer_tokens: int = 0  # cached tokens first moved across clusters to the target


def _check_tokens(num_prompt_tokens: int, num_cached_pd: int, num_cached_prfaas: int) -> None:
    if num_prompt_tokens < 0:
        raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
    for name, cached in (("pd", num_cached_pd), ("prfaas", num_cached_prfaas)):
        if not 0 <= cached <= num_prompt_tokens:
            raise ValueError(f"cached tokens ({name}) must be in [0, prompt], got {cached}")


def _is_congested(link: LinkView, config: RoutePolicyConfig) -> bool:
    return link.retransmit_rate >= config.max_retransmit_rate


def effective_threshold(config: RoutePolicyConfig, link: LinkView | None) -> float:
    """t after the saturation rule: raised near saturation or under congestion, inf when stopped."""
    if link is None:
        return config.threshold_tokens
    if link.utilization >= config.stop_offload_utilization:
        return math.inf
    if link.utilization >= config.raise_threshold_utilization or _is_congested(link, config):
        return config.threshold_tokens * config.threshold_raise_factor
    return config.threshold_tokens


def is_bandwidth_scarce(config: RoutePolicyConfig, link: LinkView | None) -> bool:
    """Cache-affine routing applies: no link view, high egress utilization, or congestion."""
    if link is None:
        return True
    return link.utilization >= config.scarce_utilization or _is_congested(link, config)


def _to_pd(total: int, hit: int, moved: int, why: str) -> RouteDecision:
    return RouteDecision(RouteTarget.PD_PREFILL, total - hit, hit, why, moved)


def _to_prfaas(total: int, hit: int, moved: int, why: str) -> RouteDecision:
    return RouteDecision(RouteTarget.PRFAAS, total - hit, hit, why, moved)


def _cache_affine(total: int, cached_pd: int, cached_prfaas: int, t: float) -> RouteDecision:
    l_pd = total - cached_pd
    if l_pd <= t:
        return _to_pd(total, cached_pd, 0, f"cache-affine: l={l_pd} <= t={t:g}")
    return _to_prfaas(total, cached_prfaas, 0, f"cache-affine: l={l_pd} > t={t:g}")


def _global_best(total: int, cached_pd: int, cached_prfaas: int, t: float) -> RouteDecision:
    prefix = max(cached_pd, cached_prfaas)
    l_inc = total - prefix
    if l_inc <= t:
        why = f"global-prefix: l={l_inc} <= t={t:g}"
        return _to_pd(total, prefix, prefix - cached_pd, why)
    why = f"global-prefix: l={l_inc} > t={t:g}"
    return _to_prfaas(total, prefix, prefix - cached_prfaas, why)


def choose_route(
    num_prompt_tokens: int,
    num_cached_tokens_pd: int,
    num_cached_tokens_prfaas: int,
    config: RoutePolicyConfig,
    link: LinkView | None,
) -> RouteDecision:
    """PrfaaS-PD routing of one request (see the module docstring for the rules)."""
    _check_tokens(num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas)
    t = effective_threshold(config, link)
    if math.isinf(t):
        assert link is not None
        why = f"egress saturated: utilization {link.utilization:.2f}, no offload"
        return _to_pd(num_prompt_tokens, num_cached_tokens_pd, 0, why)
    if is_bandwidth_scarce(config, link):
        return _cache_affine(num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas, t)
    return _global_best(num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas, t)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The routing policy of one deployment; build it with `make_route_policy`."""

    kind: DeploymentKind  # which of the paper's three deployments this routes for
    config: RoutePolicyConfig | None  # threshold and link rules; used by PRFAAS only

    def choose(
        self,
        num_prompt_tokens: int,
        num_cached_tokens_pd: int,
        num_cached_tokens_prfaas: int,
        link: LinkView | None,
    ) -> RouteDecision:
        """Route one request; cached counts are the longest cached prefix in each cluster."""
        total, c_pd, c_prfaas = num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas
        _check_tokens(total, c_pd, c_prfaas)
        if self.kind is DeploymentKind.HOMOGENEOUS:
            return _to_pd(total, c_pd, 0, "homogeneous: all prefill on PD-P")
        if self.kind is DeploymentKind.NAIVE:
            return _to_prfaas(total, c_prfaas, 0, "naive: all prefill on PrfaaS")
        assert self.config is not None
        return choose_route(total, c_pd, c_prfaas, self.config, link)


def make_route_policy(kind: DeploymentKind, config: RoutePolicyConfig | None = None) -> RoutePolicy:
    """The routing policy for a deployment kind; PRFAAS needs a config (its threshold)."""
    kind = DeploymentKind(kind)
    if kind is DeploymentKind.PRFAAS and config is None:
        raise ValueError("a PrfaaS deployment needs a RoutePolicyConfig (threshold_tokens)")
    return RoutePolicy(kind, config)
