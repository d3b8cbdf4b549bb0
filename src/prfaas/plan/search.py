"""The planner's searches: the 2-D grid over (t, N_p) for PrfaaS-PD, the best N_p/N_d of homogeneous
PD, and the fixed naive heterogeneous split; plus TTFT and egress computed the way the paper does.

TTFT here is the paper's: prefill latency on the hardware a request is assigned to, with no
queueing and no transfer time. Mean TTFT = E[T(L)] over the length distribution (each request
on its own cluster); P90 TTFT = T(the P90 length) on the cluster that length is routed to.
Egress = the offloaded request rate at Λ_max times S_kv(l_long).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.plan.inputs import ClusterSpec, PlanInputs
from prfaas.policy.throughput import (
    LatencyCurve,
    LengthSplit,
    StageCosts,
    StagePoint,
    best_threshold,
    evaluate_split,
    split_lengths,
)
from prfaas.types import GBPS, DeploymentKind
from prfaas.workload import LengthDistribution


@dataclass(frozen=True)
class DeploymentPlan:
    """The best configuration of one deployment and what it achieves."""

    kind: DeploymentKind  # which deployment
    point: StagePoint  # t, p, l_long/l_short, the three Θ and Λ_max
    num_prfaas: int | None  # PrfaaS instances (None: the deployment has none)
    num_pd_p: int | None  # PD-P instances (None: none)
    num_pd_d: int  # PD-D instances
    ttft_mean_s: float  # mean prefill latency on the assigned hardware, no queueing
    ttft_p90_s: float  # prefill latency of the P90-length request on its hardware
    egress_bytes_per_s: float | None  # PrfaaS -> PD KV traffic at Λ_max (None: no PrfaaS)
    gpus_by_hardware: dict[str, int]  # GPUs used, per hardware type


@dataclass(frozen=True)
class SweepPoint:
    """One grid point of the PrfaaS-PD search, kept for Figure 5."""

    num_pd_p: int
    point: StagePoint


@dataclass(frozen=True)
class EqualCost:
    """Throughput per unit cost, and the homogeneous PD cluster that costs what PrfaaS-PD costs."""

    cost_by_kind: dict[DeploymentKind, float]  # sum of GPUs x price per GPU
    lambda_per_cost_by_kind: dict[DeploymentKind, float]  # Λ_max / cost
    homogeneous_at_equal_cost: DeploymentPlan  # best homogeneous split within PrfaaS-PD's cost
    ratio_vs_equal_cost_homogeneous: float  # Λ_max(PrfaaS-PD) / Λ_max(that cluster)


@dataclass(frozen=True)
class PlanResult:
    prfaas: DeploymentPlan
    homogeneous: DeploymentPlan
    naive: DeploymentPlan
    sweep: tuple[SweepPoint, ...]  # every (N_p, t) the PrfaaS-PD grid evaluated
    equal_cost: EqualCost | None  # present when every hardware type has a price

    def by_kind(self) -> dict[DeploymentKind, DeploymentPlan]:
        return {p.kind: p for p in (self.prfaas, self.homogeneous, self.naive)}


def threshold_grid(lengths: LengthDistribution, step_tokens: float) -> list[float]:
    """Thresholds from the shortest to the longest length, `step_tokens` apart (both ends kept)."""
    lo, hi = lengths.quantile(0.0), lengths.quantile(1.0)
    num_steps = max(1, math.ceil((hi - lo) / step_tokens))
    return [min(lo + k * step_tokens, hi) for k in range(num_steps + 1)]


def _prefill_headroom(point: StagePoint) -> float:
    """The slower prefill path's rate bound; breaks ties between equal Λ_max (decode-bound)."""
    p = point.offload_fraction
    rates = []
    if p > 0:
        rates.append(point.theta_prfaas_per_s / p)
    if p < 1:
        rates.append(point.theta_pd_p_per_s / (1 - p))
    return min(rates)


def rank_point(point: StagePoint) -> tuple[float, float]:
    """Search order: higher Λ_max first, then more prefill headroom."""
    return (point.lambda_max_per_s, _prefill_headroom(point))


def _expected_latency_s(
    lengths: LengthDistribution, curve: LatencyCurve, lo_tokens: float, hi_tokens: float
) -> float:
    return lengths.expect_between(curve, lo_tokens, hi_tokens)


def _ttft(
    lengths: LengthDistribution,
    threshold_tokens: float,
    remote: LatencyCurve,
    local: LatencyCurve,
) -> tuple[float, float]:
    """(mean, P90) TTFT: lengths > t prefill on `remote`, the rest on `local`."""
    p = lengths.prob_greater(threshold_tokens)
    mean_s = 0.0
    if p > 0:
        mean_s += p * _expected_latency_s(lengths, remote, threshold_tokens, math.inf)
    if p < 1:
        mean_s += (1 - p) * _expected_latency_s(lengths, local, -math.inf, threshold_tokens)
    return mean_s, p90_ttft_s(lengths, threshold_tokens, remote, local)


def p90_ttft_s(
    lengths: LengthDistribution,
    threshold_tokens: float,
    remote: LatencyCurve,
    local: LatencyCurve,
) -> float:
    """Prefill latency of the P90-length request on the cluster `threshold_tokens` sends it to."""
    p90_tokens = lengths.quantile(0.9)
    return remote(p90_tokens) if p90_tokens > threshold_tokens else local(p90_tokens)


def egress_bytes_per_s(costs: StageCosts, point: StagePoint) -> float:
    if point.l_long_tokens is None:
        return 0.0
    offload_rate_per_s = point.lambda_max_per_s * point.offload_fraction
    return offload_rate_per_s * costs.kv_bytes(point.l_long_tokens)


def _gpus(*clusters: tuple[ClusterSpec, int]) -> dict[str, int]:
    gpus: dict[str, int] = {}
    for cluster, num_instances in clusters:
        used = num_instances * cluster.gpus_per_instance
        gpus[cluster.hardware] = gpus.get(cluster.hardware, 0) + used
    return gpus


def _sweep_prfaas(
    inputs: PlanInputs, costs: StageCosts, splits: list[LengthSplit]
) -> list[SweepPoint]:
    n_prfaas, n_pd = inputs.prfaas.num_instances, inputs.pd.num_instances
    return [
        SweepPoint(n_p, evaluate_split(costs, split, n_prfaas, n_p, n_pd - n_p))
        for n_p in range(1, n_pd)
        for split in splits
    ]


def _refine_threshold(inputs: PlanInputs, costs: StageCosts, best: SweepPoint) -> SweepPoint:
    """Solve Eq. 7 by bisection within one grid step of the best grid point; keep it if no worse."""
    step = inputs.threshold_step_tokens
    lo = max(best.point.threshold_tokens - step, inputs.lengths.quantile(0.0))
    hi = min(best.point.threshold_tokens + step, inputs.lengths.quantile(1.0))
    if not lo < hi:
        return best
    n_prfaas, n_pd = inputs.prfaas.num_instances, inputs.pd.num_instances
    t = best_threshold(costs, inputs.lengths, n_prfaas, best.num_pd_p, lo, hi, tol_tokens=0.5)
    split = split_lengths(inputs.lengths, t)
    refined = SweepPoint(
        best.num_pd_p, evaluate_split(costs, split, n_prfaas, best.num_pd_p, n_pd - best.num_pd_p)
    )
    return refined if rank_point(refined.point) >= rank_point(best.point) else best


def plan_prfaas(inputs: PlanInputs) -> tuple[DeploymentPlan, list[SweepPoint]]:
    """Grid search over t and N_p (N_p + N_d fixed), refined by Eq. 7 around the best t."""
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    splits = [
        split_lengths(inputs.lengths, t)
        for t in threshold_grid(inputs.lengths, inputs.threshold_step_tokens)
    ]
    sweep = _sweep_prfaas(inputs, costs, splits)
    best = _refine_threshold(inputs, costs, max(sweep, key=lambda s: rank_point(s.point)))
    n_p, point = best.num_pd_p, best.point
    n_d = inputs.pd.num_instances - n_p
    mean_s, p90_s = _ttft(
        inputs.lengths, point.threshold_tokens, inputs.prfaas.t_prefill_s, inputs.pd.t_prefill_s
    )
    plan = DeploymentPlan(
        kind=DeploymentKind.PRFAAS,
        point=point,
        num_prfaas=inputs.prfaas.num_instances,
        num_pd_p=n_p,
        num_pd_d=n_d,
        ttft_mean_s=mean_s,
        ttft_p90_s=p90_s,
        egress_bytes_per_s=egress_bytes_per_s(costs, point),
        gpus_by_hardware=_gpus(
            (inputs.prfaas, inputs.prfaas.num_instances), (inputs.pd, n_p + n_d)
        ),
    )
    return plan, sweep


def homogeneous_splits(inputs: PlanInputs, cluster: ClusterSpec) -> list[tuple[int, StagePoint]]:
    """Every (N_p, point) of one PD cluster that prefills everything itself, N_p = 1 .. n-1."""
    costs = inputs.stage_costs(cluster, cluster)
    split = split_lengths(inputs.lengths, math.inf)
    n = cluster.num_instances
    return [(n_p, evaluate_split(costs, split, 0, n_p, n - n_p)) for n_p in range(1, n)]


def plan_homogeneous(inputs: PlanInputs, cluster: ClusterSpec | None = None) -> DeploymentPlan:
    """Best N_p/N_d of one PD cluster that prefills everything itself (Eq. 8 by enumeration)."""
    cluster = cluster or inputs.homogeneous
    n = cluster.num_instances
    n_p, point = max(homogeneous_splits(inputs, cluster), key=lambda c: rank_point(c[1]))
    mean_s, p90_s = _ttft(inputs.lengths, math.inf, cluster.t_prefill_s, cluster.t_prefill_s)
    return DeploymentPlan(
        kind=DeploymentKind.HOMOGENEOUS,
        point=point,
        num_prfaas=None,
        num_pd_p=n_p,
        num_pd_d=n - n_p,
        ttft_mean_s=mean_s,
        ttft_p90_s=p90_s,
        egress_bytes_per_s=None,
        gpus_by_hardware=_gpus((cluster, n)),
    )


def plan_naive(inputs: PlanInputs) -> DeploymentPlan:
    """All prefill on the PrfaaS cluster, every PD instance decodes; no threshold, no balancing."""
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    n_prfaas, n_d = inputs.prfaas.num_instances, inputs.pd.num_instances
    point = evaluate_split(costs, split_lengths(inputs.lengths, -math.inf), n_prfaas, 0, n_d)
    remote = inputs.prfaas.t_prefill_s
    mean_s, p90_s = _ttft(inputs.lengths, -math.inf, remote, remote)
    return DeploymentPlan(
        kind=DeploymentKind.NAIVE,
        point=point,
        num_prfaas=n_prfaas,
        num_pd_p=None,
        num_pd_d=n_d,
        ttft_mean_s=mean_s,
        ttft_p90_s=p90_s,
        egress_bytes_per_s=egress_bytes_per_s(costs, point),
        gpus_by_hardware=_gpus((inputs.prfaas, n_prfaas), (inputs.pd, n_d)),
    )


def _cost(inputs: PlanInputs, plan: DeploymentPlan) -> float:
    return sum(n * inputs.prices_per_gpu[hw] for hw, n in plan.gpus_by_hardware.items())


def plan_equal_cost(
    inputs: PlanInputs, prfaas: DeploymentPlan, homogeneous: DeploymentPlan, naive: DeploymentPlan
) -> EqualCost | None:
    """Λ_max per unit cost, and the homogeneous cluster that fits PrfaaS-PD's budget."""
    if not inputs.has_prices():
        return None
    plans = (prfaas, homogeneous, naive)
    cost = {p.kind: _cost(inputs, p) for p in plans}
    per_cost = {p.kind: p.point.lambda_max_per_s / cost[p.kind] for p in plans}
    base = inputs.homogeneous
    instance_price = inputs.prices_per_gpu[base.hardware] * base.gpus_per_instance
    num_instances = math.floor(cost[DeploymentKind.PRFAAS] / instance_price + 1e-9)
    if num_instances < 2:
        return EqualCost(cost, per_cost, homogeneous, math.nan)
    cluster = ClusterSpec(
        base.hardware,
        num_instances * base.gpus_per_instance,
        base.gpus_per_instance,
        base.t_prefill_s,
        base.latency_source,
    )
    equal = plan_homogeneous(inputs, cluster)
    ratio = prfaas.point.lambda_max_per_s / equal.point.lambda_max_per_s
    return EqualCost(cost, per_cost, equal, ratio)


def run_plan(inputs: PlanInputs) -> PlanResult:
    """All three deployments, plus the equal-cost comparison when prices are given."""
    prfaas, sweep = plan_prfaas(inputs)
    homogeneous = plan_homogeneous(inputs)
    naive = plan_naive(inputs)
    equal_cost = plan_equal_cost(inputs, prfaas, homogeneous, naive)
    return PlanResult(prfaas, homogeneous, naive, tuple(sweep), equal_cost)


def egress_gbps(plan: DeploymentPlan) -> float | None:
    if plan.egress_bytes_per_s is None:
        return None
    return plan.egress_bytes_per_s * 8 / GBPS
