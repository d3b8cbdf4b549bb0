"""The paper's analytical throughput model (Eqs. 2-7) as pure functions.

Both the planner (`prfaas.plan`, offline grid search) and a live router re-searching its threshold
over recently observed incremental lengths (§3.4.3, "at start-up and on policy updates") use these,
so they live in policy. Rates are requests/s, sizes bytes, latencies seconds, lengths tokens.

- Eq. 3 `theta_prfaas`:   min(N_prfaas / T_prefill(l_long), B_out / S_kv(l_long))
- Eq. 4 `theta_pd_prefill`: N_p / T_prefill(l_short)
- Eq. 5 `theta_pd_decode`:  N_d * BS_max / (T_decode * L_out)
- Eq. 6 `lambda_max`:     min(Θ_prfaas / p, Θ_pd-p / (1 - p), Θ_pd-d)
- Eq. 7 `best_threshold`: the t where Θ_prfaas / p = Θ_pd-p / (1 - p)
- Eq. 2 `eq2_egress_bytes_per_s`: N_prfaas * Φ_kv(l) = N_prfaas * S_kv(l) / T_prefill(l)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prfaas.policy.transfer import capped_bandwidth_bytes_per_s

LatencyCurve = Callable[[float], float]  # tokens -> seconds on one instance
SizeCurve = Callable[[float], float]  # tokens -> bytes of KV + state for one request


def scaled_curve(curve: Callable[[float], float], factor: float) -> Callable[[float], float]:
    """`curve` times `factor` (the curve itself when the factor is 1)."""
    if factor == 1.0:
        return curve
    return lambda num_tokens: factor * curve(num_tokens)


class LengthModel(Protocol):
    """What the model needs from an uncached-length distribution (see prfaas.workload)."""

    def prob_greater(self, num_tokens: float) -> float: ...

    def mean_between(self, lo_tokens: float, hi_tokens: float) -> float: ...


def theta_prfaas(
    num_instances: int, t_prefill_long_s: float, egress_bytes_per_s: float, kv_bytes_long: float
) -> float:
    """Eq. 3: PrfaaS cluster throughput, the lesser of compute and egress."""
    return min(num_instances / t_prefill_long_s, egress_bytes_per_s / kv_bytes_long)


def theta_pd_prefill(num_instances: int, t_prefill_short_s: float) -> float:
    """Eq. 4: PD-P throughput on short requests (intra-cluster RDMA never binds)."""
    return num_instances / t_prefill_short_s


def theta_pd_decode(
    num_instances: int, max_batch_size: int, t_decode_step_s: float, num_output_tokens: float
) -> float:
    """Eq. 5: PD-D throughput with BS_max concurrent requests per instance at T_decode per step."""
    return num_instances * max_batch_size / (t_decode_step_s * num_output_tokens)


def lambda_max(
    theta_prfaas_per_s: float,
    theta_pd_p_per_s: float,
    theta_pd_d_per_s: float,
    offload_fraction: float,
) -> float:
    """Eq. 6: the converging pipeline's bound; a stage that gets no traffic does not bind."""
    p = offload_fraction
    limits = [theta_pd_d_per_s]
    if p > 0:
        limits.append(theta_prfaas_per_s / p)
    if p < 1:
        limits.append(theta_pd_p_per_s / (1 - p))
    return min(limits)


def eq2_egress_bytes_per_s(
    num_instances: int, num_tokens: float, t_prefill_s: LatencyCurve, kv_bytes: SizeCurve
) -> float:
    """Eq. 2: egress of a PrfaaS cluster whose instances prefill length-l requests back to back."""
    return num_instances * kv_bytes(num_tokens) / t_prefill_s(num_tokens)


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Per-instance costs of the three stages, and the link, for one deployment."""

    t_prefill_prfaas_s: LatencyCurve  # prefill latency of one PrfaaS instance
    t_prefill_pd_s: LatencyCurve  # prefill latency of one PD-P instance
    kv_bytes: SizeCurve  # S_kv(l): bytes shipped per offloaded request
    egress_bytes_per_s: float  # B_out: link payload bandwidth available to PrfaaS egress
    max_batch_size: int  # BS_max per decode instance
    t_decode_step_s: float  # T_decode per step at BS_max
    num_output_tokens: float  # L_out, mean output length
    # Under loss, one transfer's most (its connections' Mathis bounds, prfaas.policy.transfer);
    # Eq. 3 counts one transfer in flight per PrfaaS instance. inf: no loss.
    flow_cap_bytes_per_s: float = math.inf

    def prfaas_egress_bytes_per_s(self, num_prfaas: int) -> float:
        """B_out of Eq. 3 with `num_prfaas` instances each sending one transfer at a time."""
        return capped_bandwidth_bytes_per_s(
            self.egress_bytes_per_s, self.flow_cap_bytes_per_s, num_prfaas
        )


@dataclass(frozen=True, slots=True)
class StagePoint:
    """The model evaluated at one threshold and one instance split."""

    threshold_tokens: float  # t (inf: nothing offloaded; -inf: everything offloaded)
    offload_fraction: float  # p = P(L > t)
    l_long_tokens: float | None  # E[L | L > t]; None when p = 0
    l_short_tokens: float | None  # E[L | L <= t]; None when p = 1
    theta_prfaas_per_s: float  # Eq. 3 (0 with no PrfaaS instances or no offload)
    theta_pd_p_per_s: float  # Eq. 4 (0 with no PD-P instances or nothing local)
    theta_pd_d_per_s: float  # Eq. 5
    lambda_max_per_s: float  # Eq. 6
    prfaas_egress_limited: bool  # Eq. 3's min is taken by the link, not compute


@dataclass(frozen=True, slots=True)
class LengthSplit:
    """What a threshold does to the length distribution (independent of the instance split)."""

    threshold_tokens: float  # t
    offload_fraction: float  # p = P(L > t)
    l_long_tokens: float | None  # E[L | L > t]; None when p = 0
    l_short_tokens: float | None  # E[L | L <= t]; None when p = 1


def split_lengths(lengths: LengthModel, threshold_tokens: float) -> LengthSplit:
    """p, l_long and l_short at threshold t."""
    p = lengths.prob_greater(threshold_tokens)
    l_long = lengths.mean_between(threshold_tokens, math.inf) if p > 0 else None
    l_short = lengths.mean_between(-math.inf, threshold_tokens) if p < 1 else None
    return LengthSplit(threshold_tokens, p, l_long, l_short)


def evaluate_split(
    costs: StageCosts, split: LengthSplit, num_prfaas: int, num_pd_p: int, num_pd_d: int
) -> StagePoint:
    """Eqs. 3-6 for an already computed length split and instance split (N_prfaas, N_p, N_d)."""
    th_prfaas, egress_limited = 0.0, False
    if split.l_long_tokens is not None and num_prfaas > 0:
        t_long_s = costs.t_prefill_prfaas_s(split.l_long_tokens)
        kv_long_bytes = costs.kv_bytes(split.l_long_tokens)
        egress_bytes_per_s = costs.prfaas_egress_bytes_per_s(num_prfaas)
        th_prfaas = theta_prfaas(num_prfaas, t_long_s, egress_bytes_per_s, kv_long_bytes)
        egress_limited = th_prfaas < num_prfaas / t_long_s
    th_pd_p = 0.0
    if split.l_short_tokens is not None and num_pd_p > 0:
        th_pd_p = theta_pd_prefill(num_pd_p, costs.t_prefill_pd_s(split.l_short_tokens))
    th_pd_d = theta_pd_decode(
        num_pd_d, costs.max_batch_size, costs.t_decode_step_s, costs.num_output_tokens
    )
    p = split.offload_fraction
    lam = lambda_max(th_prfaas, th_pd_p, th_pd_d, p)
    return StagePoint(
        split.threshold_tokens,
        p,
        split.l_long_tokens,
        split.l_short_tokens,
        th_prfaas,
        th_pd_p,
        th_pd_d,
        lam,
        egress_limited,
    )


def evaluate(
    costs: StageCosts,
    lengths: LengthModel,
    threshold_tokens: float,
    num_prfaas: int,
    num_pd_p: int,
    num_pd_d: int,
) -> StagePoint:
    """Eqs. 3-6 at threshold t and split (N_prfaas, N_p, N_d)."""
    split = split_lengths(lengths, threshold_tokens)
    return evaluate_split(costs, split, num_prfaas, num_pd_p, num_pd_d)


def _prefill_rates(
    costs: StageCosts, lengths: LengthModel, t: float, num_prfaas: int, num_pd_p: int
) -> tuple[float, float]:
    """(Θ_prfaas/p, Θ_pd-p/(1-p)) at t; a path that gets no traffic has an infinite bound."""
    point = evaluate(costs, lengths, t, num_prfaas, num_pd_p, 0)
    p = point.offload_fraction
    prfaas_rate = point.theta_prfaas_per_s / p if p > 0 else math.inf
    pd_rate = point.theta_pd_p_per_s / (1 - p) if p < 1 else math.inf
    return prfaas_rate, pd_rate


def best_threshold(
    costs: StageCosts,
    lengths: LengthModel,
    num_prfaas: int,
    num_pd_p: int,
    lo_tokens: float,
    hi_tokens: float,
    tol_tokens: float = 1.0,
) -> float:
    """Eq. 7 by bisection on [lo, hi]: the t that balances the two prefill paths.

    Raising t sends fewer, longer requests to PrfaaS, so Θ_prfaas/p rises while Θ_pd-p/(1-p)
    falls; when one path is faster over the whole range the nearer end is returned. For an
    empirical distribution p jumps, so the bracket's end with the better slower path is returned.
    """
    if not lo_tokens < hi_tokens:
        raise ValueError(f"need lo_tokens < hi_tokens, got {lo_tokens}, {hi_tokens}")

    def imbalance(t: float) -> float:
        prfaas_rate, pd_rate = _prefill_rates(costs, lengths, t, num_prfaas, num_pd_p)
        return prfaas_rate - pd_rate

    if imbalance(lo_tokens) >= 0:
        return lo_tokens
    if imbalance(hi_tokens) <= 0:
        return hi_tokens
    lo, hi = lo_tokens, hi_tokens
    while hi - lo > tol_tokens:
        mid = (lo + hi) / 2
        if imbalance(mid) < 0:
            lo = mid
        else:
            hi = mid
    return max(hi, lo, key=lambda t: min(_prefill_rates(costs, lengths, t, num_prfaas, num_pd_p)))
