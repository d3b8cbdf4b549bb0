"""Per-request routing: PrfaaS cluster or local PD-P, from lengths, prefix hits, link and queues.

Implements the paper's selective offloading (§3.3: incremental length l > t -> PrfaaS) and the
short-timescale rules of §3.4.3 (summarized in docs/paper.md, section 5), in this order:

1. *Prefix rule.* Bandwidth scarce (egress utilization >= `scarce_utilization`, congestion seen,
   or no link view): *cache-affine*, each cluster's cache judged on its own: l_total - l_pd <= t
   -> PD-P, else PrfaaS (which then reuses its own l_prfaas). Bandwidth abundant: *global best
   prefix*, l_prefix = max(l_pd, l_prfaas): l_total - l_prefix <= t -> PD-P, else PrfaaS; the
   longer cache is moved to the chosen cluster first (`num_prefix_transfer_tokens`).
2. *Congestion.* Retransmissions at or above `max_retransmit_rate` multiply t by
   `threshold_raise_factor`.
3. *Offload delay* (needs `config.costs`, the link view and both cluster views). A request the
   threshold sends to PrfaaS goes to PD-P instead when its offload path would deliver its KV
   clearly later than the local path would finish its prefill:

       offload_ready_s = max(prfaas_wait_s + T_prfaas(l), (backlog_bytes + S_kv(l)) / B)
                         + round_trip_s
       local_ready_s   = pd_wait_s + T_pd(l_pd)
       stay local  <=>  offload_ready_s > local_delay_ratio * local_ready_s

   where the waits are the least-loaded instance's queued prefill seconds, B the link capacity and
   round_trip_s what the transfer cannot hide behind its bytes on a warm connection: one RTT for
   the acknowledgment (`prfaas.policy.transfer.unhidden_latency_s`, at the link view's RTT), so
   at a long RTT a request that a local prefill would serve sooner stays local.
   The ratio (default 1.5) is a margin for what the comparison leaves out: a long request moved to
   PD-P also delays every short request queued behind it there.
   The link term reads the *backlog* (KV queued or in flight), not the utilization: at a planned
   operating point where the link is the binding resource, utilization sits near 1 while the
   backlog stays within one prefill's worth of KV, and offloading must go on; when the link falls
   behind (bandwidth drop, burst), the backlog's drain time outgrows the prefill and only then do
   requests stay local, just enough to even out the two paths' delays.

*Hysteresis* (optional: pass a `RouteState`, which the driver owns and keeps between requests).
Without one, rules 1 and 3 compare against one level each and a request near it may flip from the
previous one. With one, each rule has two levels and a mode that only the far level changes:

- rule 1 enters *scarce* at utilization >= `scarce_utilization` and leaves it only below
  `abundant_utilization`;
- rule 3 enters *diverting* when offload_ready > `local_delay_ratio` x local_ready and, once
  diverting, keeps requests local until offload_ready <= `exit_delay_ratio` x local_ready.

Under a constant load the inputs stay between the two levels after the first switch, so the
decisions do not alternate. `state=None` keeps the single-level behaviour exactly.

The deployment kind is part of the policy: HOMOGENEOUS sends everything to PD-P, NAIVE everything to
PrfaaS, so a driver (router or simulator) never decides on its own. Every decision carries a
`reason` whose text before the first ':' names the rule that made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from prfaas.policy.throughput import StageCosts
from prfaas.policy.transfer import LinkPath, unhidden_latency_s
from prfaas.policy.views import ClusterView, LinkView
from prfaas.types import DeploymentKind


class RouteTarget(StrEnum):
    """Where a request's prefill runs."""

    PRFAAS = "prfaas"  # remote prefill cluster; KV then crosses the link to a PD-D instance
    PD_PREFILL = "pd_prefill"  # a prefill instance of the local PD cluster


@dataclass(frozen=True, slots=True)
class RoutePolicyConfig:
    """Knobs of the routing rule. Utilizations and rates are shares, 0..1."""

    threshold_tokens: float  # t: offload when the incremental length is > t, tokens
    costs: StageCosts | None = None  # T_prefill per cluster, S_kv(l); None: offload-delay rule off
    scarce_utilization: float = 0.6  # at/above: bandwidth scarce -> cache-affine routing
    threshold_raise_factor: float = 2.0  # t multiplier under congestion (>= 1)
    max_retransmit_rate: float = 0.01  # at/above: link congested (scarce, and t raised)
    local_delay_ratio: float = 1.5  # stay local when offload_ready > ratio x local_ready (>= 1)
    # Hysteresis levels, used only with a RouteState; each is capped at its entering level above.
    exit_delay_ratio: float = 1.2  # diverting ends once offload_ready <= this x local_ready
    abundant_utilization: float = 0.5  # scarce mode ends once utilization < this

    def __post_init__(self) -> None:
        if math.isnan(self.threshold_tokens) or self.threshold_tokens < 0:
            raise ValueError(f"threshold_tokens must be >= 0, got {self.threshold_tokens}")
        if self.threshold_raise_factor < 1:
            raise ValueError(
                f"threshold_raise_factor must be >= 1, got {self.threshold_raise_factor}"
            )
        if math.isnan(self.scarce_utilization) or self.scarce_utilization < 0:
            raise ValueError(f"scarce_utilization must be >= 0, got {self.scarce_utilization}")
        if not self.local_delay_ratio >= 1:
            raise ValueError(f"local_delay_ratio must be >= 1, got {self.local_delay_ratio}")
        if not 0 <= self.max_retransmit_rate <= 1:
            raise ValueError(
                f"max_retransmit_rate must be in [0, 1], got {self.max_retransmit_rate}"
            )
        if not self.exit_delay_ratio >= 1:
            raise ValueError(f"exit_delay_ratio must be >= 1, got {self.exit_delay_ratio}")
        if math.isnan(self.abundant_utilization) or self.abundant_utilization < 0:
            raise ValueError(f"abundant_utilization must be >= 0, got {self.abundant_utilization}")

    @property
    def exit_ratio(self) -> float:
        """Rule 3's leaving level: `exit_delay_ratio`, at most `local_delay_ratio`."""
        return min(self.exit_delay_ratio, self.local_delay_ratio)

    @property
    def exit_utilization(self) -> float:
        """Rule 1's leaving level: `abundant_utilization`, at most `scarce_utilization`."""
        return min(self.abundant_utilization, self.scarce_utilization)


@dataclass(slots=True)
class RouteState:
    """The modes of the hysteresis rules, carried from one request to the next by the driver.

    The only mutable policy object: `choose_route` reads it and updates it in place. One per
    router (or simulator run); start from the default (not scarce, not diverting).
    """

    is_scarce: bool = False  # rule 1 routes cache-affine
    is_diverting: bool = False  # rule 3 keeps offloads local
    num_switches: int = 0  # mode changes so far (either rule), for metrics and tests


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request prefills and how much of its prompt must be computed there."""

    target: RouteTarget  # cluster that runs the prefill
    num_incremental_tokens: int  # prompt tokens to compute (prompt minus the reused prefix)
    num_prefix_hit_tokens: int  # cached prompt tokens reused at the target
    reason: str  # "<rule>: <details>", for logs, sim traces and parity checks
    num_prefix_transfer_tokens: int = 0  # cached tokens first moved across clusters to the target


@dataclass(frozen=True, slots=True)
class PathDelays:
    """Expected delays of the two paths for one request, seconds (see rule 3)."""

    offload_ready_s: float  # KV of the request delivered to PD-D via PrfaaS
    local_ready_s: float  # prefill of the request finished on PD-P
    link_drain_s: float  # backlog plus the request's KV at full link capacity
    prfaas_done_s: float  # PrfaaS queue wait plus the request's prefill there
    round_trip_s: float = 0.0  # round trips after the last byte (the acknowledgment), seconds


def _check_tokens(num_prompt_tokens: int, num_cached_pd: int, num_cached_prfaas: int) -> None:
    if num_prompt_tokens < 0:
        raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
    for name, cached in (("pd", num_cached_pd), ("prfaas", num_cached_prfaas)):
        if not 0 <= cached <= num_prompt_tokens:
            raise ValueError(f"cached tokens ({name}) must be in [0, prompt], got {cached}")


def _is_congested(link: LinkView, config: RoutePolicyConfig) -> bool:
    return link.retransmit_rate >= config.max_retransmit_rate


def effective_threshold(config: RoutePolicyConfig, link: LinkView | None) -> float:
    """t after the congestion rule: multiplied by `threshold_raise_factor` under retransmissions."""
    if link is not None and _is_congested(link, config):
        return config.threshold_tokens * config.threshold_raise_factor
    return config.threshold_tokens


def is_bandwidth_scarce(
    config: RoutePolicyConfig, link: LinkView | None, state: RouteState | None = None
) -> bool:
    """Cache-affine routing applies: no link view, high egress utilization, or congestion.

    With a `state`, the utilization test has two levels (see the module docstring) and the
    state's scarce mode follows it; a missing link view or congestion does not change the mode.
    """
    if link is None:
        return True
    if state is None:
        return link.utilization >= config.scarce_utilization or _is_congested(link, config)
    level = config.exit_utilization if state.is_scarce else config.scarce_utilization
    _set_mode(state, "is_scarce", link.utilization >= level)
    return state.is_scarce or _is_congested(link, config)


def _set_mode(state: RouteState, name: str, value: bool) -> None:
    if getattr(state, name) != value:
        setattr(state, name, value)
        state.num_switches += 1


def path_delays(
    costs: StageCosts,
    link: LinkView,
    prfaas: ClusterView,
    pd: ClusterView,
    num_tokens_prfaas: int,
    num_tokens_pd: int,
    num_kv_tokens: int,
) -> PathDelays:
    """Rule 3's two ready times for a request computing `num_tokens_*` tokens on each path and
    sending the KV of `num_kv_tokens` tokens over the link when offloaded."""
    kv_bytes = costs.kv_bytes(num_kv_tokens)
    link_drain_s = link.drain_s(kv_bytes)
    prfaas_done_s = prfaas.prefill_wait_s() + costs.t_prefill_prfaas_s(num_tokens_prfaas)
    local_ready_s = pd.prefill_wait_s() + costs.t_prefill_pd_s(num_tokens_pd)
    round_trip_s = unhidden_latency_s(kv_bytes, link.bandwidth_bytes_per_s, LinkPath(link.rtt_s))
    offload_ready_s = max(prfaas_done_s, link_drain_s) + round_trip_s
    return PathDelays(offload_ready_s, local_ready_s, link_drain_s, prfaas_done_s, round_trip_s)


def threshold_text(t: float) -> str:
    """A threshold as whole tokens: floor(t), which for integer lengths l says the same as t
    (l > t exactly when l > floor(t)); "auto" resolves t to a fraction (11642.45...), printed
    with `:g` as 11642.5. Infinite or NaN t as `:g` writes it."""
    return str(math.floor(t)) if math.isfinite(t) else f"{t:g}"


def _to_pd(total: int, hit: int, moved: int, why: str) -> RouteDecision:
    return RouteDecision(RouteTarget.PD_PREFILL, total - hit, hit, why, moved)


def _to_prfaas(total: int, hit: int, moved: int, why: str) -> RouteDecision:
    return RouteDecision(RouteTarget.PRFAAS, total - hit, hit, why, moved)


def _cache_affine(total: int, cached_pd: int, cached_prfaas: int, t: float) -> RouteDecision:
    l_pd = total - cached_pd
    if l_pd <= t:
        return _to_pd(total, cached_pd, 0, f"cache-affine: l={l_pd} <= t={threshold_text(t)}")
    return _to_prfaas(total, cached_prfaas, 0, f"cache-affine: l={l_pd} > t={threshold_text(t)}")


def _global_best(total: int, cached_pd: int, cached_prfaas: int, t: float) -> RouteDecision:
    prefix = max(cached_pd, cached_prfaas)
    l_inc = total - prefix
    if l_inc <= t:
        why = f"global-prefix: l={l_inc} <= t={threshold_text(t)}"
        return _to_pd(total, prefix, prefix - cached_pd, why)
    why = f"global-prefix: l={l_inc} > t={threshold_text(t)}"
    return _to_prfaas(total, prefix, prefix - cached_prfaas, why)


def _check_offload_delay(
    offload: RouteDecision,
    cached_pd: int,
    config: RoutePolicyConfig,
    link: LinkView | None,
    prfaas: ClusterView | None,
    pd: ClusterView | None,
    state: RouteState | None = None,
) -> RouteDecision:
    """Rule 3: keep an offload decision unless the local path would be ready sooner.

    With a `state`, the ratio is `local_delay_ratio` while not diverting and `exit_ratio` while
    diverting, and the state's diverting mode follows the outcome.
    """
    if config.costs is None or link is None or prfaas is None or pd is None:
        return offload
    total = offload.num_incremental_tokens + offload.num_prefix_hit_tokens
    # The KV crossing the link is the prompt's minus the prefix PD already holds.
    num_kv_tokens = total - cached_pd
    d = path_delays(
        config.costs, link, prfaas, pd, offload.num_incremental_tokens, num_kv_tokens, num_kv_tokens
    )
    held = state is not None and state.is_diverting
    ratio = config.exit_ratio if held else config.local_delay_ratio
    stay_local = d.offload_ready_s > ratio * d.local_ready_s
    if state is not None:
        _set_mode(state, "is_diverting", stay_local)
    if not stay_local:
        return offload
    cause = "link-backlog" if d.link_drain_s >= d.prfaas_done_s else "prfaas-delay"
    rtt = f", RTT {d.round_trip_s:.2f} s" if d.round_trip_s > 0 else ""
    why = (
        f"{cause}: offload ready in {d.offload_ready_s:.2f} s (link {d.link_drain_s:.2f} s, "
        f"PrfaaS {d.prfaas_done_s:.2f} s{rtt}) > local {d.local_ready_s:.2f} s"
    )
    if held:
        why += f" (diverting until <= {ratio:g}x)"
    return _to_pd(total, cached_pd, 0, why)


def choose_route(
    num_prompt_tokens: int,
    num_cached_tokens_pd: int,
    num_cached_tokens_prfaas: int,
    config: RoutePolicyConfig,
    link: LinkView | None,
    prfaas: ClusterView | None = None,
    pd: ClusterView | None = None,
    *,
    state: RouteState | None = None,
) -> RouteDecision:
    """PrfaaS-PD routing of one request (see the module docstring for the rules).

    `prfaas` and `pd` are the two clusters' prefill loads (`InstanceLoad.queued_prefill_s`); the
    offload-delay rule runs only when both, the link view and `config.costs` are given. `state`
    turns on hysteresis and is updated in place; None keeps the single-level rules.
    """
    total, c_pd, c_prfaas = num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas
    _check_tokens(total, c_pd, c_prfaas)
    t = effective_threshold(config, link)
    if is_bandwidth_scarce(config, link, state):
        decision = _cache_affine(total, c_pd, c_prfaas, t)
    else:
        decision = _global_best(total, c_pd, c_prfaas, t)
    if decision.target is RouteTarget.PRFAAS:
        return _check_offload_delay(decision, c_pd, config, link, prfaas, pd, state)
    return decision


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
        prfaas: ClusterView | None = None,
        pd: ClusterView | None = None,
        *,
        state: RouteState | None = None,
    ) -> RouteDecision:
        """Route one request; cached counts are the longest cached prefix in each cluster.

        `state` (PrfaaS-PD only) turns on the hysteresis rules; see `choose_route`."""
        total, c_pd, c_prfaas = num_prompt_tokens, num_cached_tokens_pd, num_cached_tokens_prfaas
        _check_tokens(total, c_pd, c_prfaas)
        if self.kind is DeploymentKind.HOMOGENEOUS:
            return _to_pd(total, c_pd, 0, "homogeneous: all prefill on PD-P")
        if self.kind is DeploymentKind.NAIVE:
            return _to_prfaas(total, c_prfaas, 0, "naive: all prefill on PrfaaS")
        assert self.config is not None
        return choose_route(total, c_pd, c_prfaas, self.config, link, prfaas, pd, state=state)


def make_route_policy(kind: DeploymentKind, config: RoutePolicyConfig | None = None) -> RoutePolicy:
    """The routing policy for a deployment kind; PRFAAS needs a config (its threshold)."""
    kind = DeploymentKind(kind)
    if kind is DeploymentKind.PRFAAS and config is None:
        raise ValueError("a PrfaaS deployment needs a RoutePolicyConfig (threshold_tokens)")
    return RoutePolicy(kind, config)
