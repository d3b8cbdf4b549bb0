"""The planner's cost view: what each deployment costs per hour, per request and per million
tokens at Λ_max, and the split that costs least per request under a TTFT SLO.

Prices are per GPU-hour of each cluster's hardware and per GB (1e9 bytes) of wire traffic on the
PrfaaS -> PD link. A deployment's hourly cost is its GPUs times their price plus the link's wire
GB per hour at its planned egress (KV payload at Λ_max / payload efficiency) times the GB price.
Cost per request = hourly cost / (3600 x Λ_max); per million prompt tokens it divides by the mean
uncached prompt length, per million output tokens by L_out (each charges the whole cost to one
kind of token, as per-token list prices do).

The SLO criterion is the planner's own TTFT: the P90-length request's prefill latency on the
cluster its length is routed to, without queueing or transfer (as the paper computes TTFT; the
planner has no queueing estimate). Candidates are every PrfaaS-PD grid point (t, N_p) plus the
refined plan, every homogeneous N_p, and the naive split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prfaas.errors import UserError
from prfaas.plan.inputs import PlanInputs
from prfaas.plan.search import (
    DeploymentPlan,
    PlanResult,
    egress_bytes_per_s,
    homogeneous_splits,
    p90_ttft_s,
)
from prfaas.policy.providers import BYTES_PER_GB, MAX_PRICE_USD, SECONDS_PER_HOUR
from prfaas.policy.throughput import StagePoint
from prfaas.types import DeploymentKind

if TYPE_CHECKING:
    from prfaas.plan.presets import PlanSettings

PRICE_FLAGS = {
    "price_prfaas_gpu_hour": "--price-prfaas-gpu-hour",
    "price_pd_gpu_hour": "--price-pd-gpu-hour",
    "price_link_gb": "--price-link-gb",
}
TOKENS_PER_MILLION = 1e6


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per GPU-hour of the PrfaaS and the PD hardware, and per GB on the link."""

    prfaas_gpu_hour: float
    pd_gpu_hour: float
    link_gb: float


def cost_request_of(settings: PlanSettings) -> tuple[Prices, float | None] | None:
    """The settings' prices and TTFT SLO (flags or `--config` keys), or None when no cost view
    is asked (no price and no SLO). UserError for a negative or non-finite price, a cost view
    asked with a price missing, or an SLO that is not a finite number > 0."""
    given = {key: getattr(settings, key) for key in PRICE_FLAGS}
    ttft_slo_s = settings.ttft_slo_s
    if all(v is None for v in given.values()) and ttft_slo_s is None:
        return None
    missing = [flag for key, flag in PRICE_FLAGS.items() if given[key] is None]
    if missing:
        raise UserError(
            f"the cost view needs every price; missing {', '.join(missing)} (or its --config key)"
        )
    for key, value in given.items():
        if not 0 <= value <= MAX_PRICE_USD:  # NaN fails both
            raise UserError(
                f"{key} ({PRICE_FLAGS[key]} or the --config key) must be in "
                f"[0, {MAX_PRICE_USD:,.0f}] USD, got {value}"
            )
    if ttft_slo_s is not None and not (math.isfinite(ttft_slo_s) and ttft_slo_s > 0):
        raise UserError(
            f"ttft_slo_s (--ttft-slo-s or the --config key) must be a finite number > 0, got "
            f"{ttft_slo_s}"
        )
    return Prices(*given.values()), ttft_slo_s


@dataclass(frozen=True, slots=True)
class CostPoint:
    """One deployment at one split: its GPUs, link traffic, throughput, TTFT and costs."""

    kind: DeploymentKind
    threshold_tokens: float
    num_prfaas: int | None
    num_pd_p: int | None
    num_pd_d: int
    lambda_max_per_s: float
    ttft_p90_s: float
    num_prfaas_gpus: int
    num_pd_gpus: int
    gpu_usd_per_hour: float
    link_gb_per_hour: float
    usd_per_hour: float
    usd_per_request: float  # inf when Λ_max is 0
    usd_per_m_prompt_tokens: float
    usd_per_m_output_tokens: float


@dataclass(frozen=True, slots=True)
class CostView:
    prices: Prices
    ttft_slo_s: float | None  # None: no SLO, every split is a candidate
    planned: dict[DeploymentKind, CostPoint]  # each deployment at its planned (max Λ) split
    cheapest: CostPoint | None  # least cost per request meeting the SLO; None: none does
    num_candidates: int
    num_meeting_slo: int


@dataclass(frozen=True, slots=True)
class _Split:
    kind: DeploymentKind
    point: StagePoint
    num_prfaas: int | None
    num_pd_p: int | None
    num_pd_d: int
    egress_bytes_per_s: float
    ttft_p90_s: float


def _cost_point(inputs: PlanInputs, prices: Prices, split: _Split) -> CostPoint:
    num_prfaas_gpus = (split.num_prfaas or 0) * inputs.prfaas.gpus_per_instance
    num_pd_gpus = ((split.num_pd_p or 0) + split.num_pd_d) * inputs.pd.gpus_per_instance
    gpu_usd_per_hour = num_prfaas_gpus * prices.prfaas_gpu_hour + num_pd_gpus * prices.pd_gpu_hour
    wire_bytes_per_s = split.egress_bytes_per_s / inputs.link_path.payload_efficiency
    link_gb_per_hour = wire_bytes_per_s * SECONDS_PER_HOUR / BYTES_PER_GB
    usd_per_hour = gpu_usd_per_hour + link_gb_per_hour * prices.link_gb
    requests_per_hour = split.point.lambda_max_per_s * SECONDS_PER_HOUR
    usd_per_request = usd_per_hour / requests_per_hour if requests_per_hour > 0 else math.inf
    return CostPoint(
        kind=split.kind,
        threshold_tokens=split.point.threshold_tokens,
        num_prfaas=split.num_prfaas,
        num_pd_p=split.num_pd_p,
        num_pd_d=split.num_pd_d,
        lambda_max_per_s=split.point.lambda_max_per_s,
        ttft_p90_s=split.ttft_p90_s,
        num_prfaas_gpus=num_prfaas_gpus,
        num_pd_gpus=num_pd_gpus,
        gpu_usd_per_hour=gpu_usd_per_hour,
        link_gb_per_hour=link_gb_per_hour,
        usd_per_hour=usd_per_hour,
        usd_per_request=usd_per_request,
        usd_per_m_prompt_tokens=usd_per_request / inputs.lengths.mean() * TOKENS_PER_MILLION,
        usd_per_m_output_tokens=usd_per_request / inputs.num_output_tokens * TOKENS_PER_MILLION,
    )


def _planned_split(plan: DeploymentPlan) -> _Split:
    return _Split(
        plan.kind,
        plan.point,
        plan.num_prfaas,
        plan.num_pd_p,
        plan.num_pd_d,
        plan.egress_bytes_per_s or 0.0,
        plan.ttft_p90_s,
    )


def _candidate_splits(inputs: PlanInputs, result: PlanResult) -> Iterator[_Split]:
    """Every split the search evaluated, with its egress and P90 TTFT."""
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    remote, local = inputs.prfaas.t_prefill_s, inputs.pd.t_prefill_s
    n_prfaas, n_pd = inputs.prfaas.num_instances, inputs.pd.num_instances
    for sweep in result.sweep:
        pt = sweep.point
        ttft_s = p90_ttft_s(inputs.lengths, pt.threshold_tokens, remote, local)
        egress = egress_bytes_per_s(costs, pt)
        kind = DeploymentKind.PRFAAS
        yield _Split(kind, pt, n_prfaas, sweep.num_pd_p, n_pd - sweep.num_pd_p, egress, ttft_s)
    homogeneous = inputs.homogeneous
    ttft_s = result.homogeneous.ttft_p90_s
    for n_p, pt in homogeneous_splits(inputs, homogeneous):
        n_d = homogeneous.num_instances - n_p
        yield _Split(DeploymentKind.HOMOGENEOUS, pt, None, n_p, n_d, 0.0, ttft_s)
    yield _planned_split(result.prfaas)
    yield _planned_split(result.naive)


def _order(point: CostPoint) -> tuple[float, float]:
    return (point.usd_per_request, point.ttft_p90_s)


def cost_view(
    inputs: PlanInputs, result: PlanResult, prices: Prices, ttft_slo_s: float | None
) -> CostView:
    """Each deployment's cost at its planned split, and the cheapest split meeting the SLO."""
    planned = {
        kind: _cost_point(inputs, prices, _planned_split(plan))
        for kind, plan in result.by_kind().items()
    }
    candidates = [_cost_point(inputs, prices, s) for s in _candidate_splits(inputs, result)]
    meeting = [
        c
        for c in candidates
        if math.isfinite(c.usd_per_request) and (ttft_slo_s is None or c.ttft_p90_s <= ttft_slo_s)
    ]
    cheapest = min(meeting, key=_order) if meeting else None
    return CostView(prices, ttft_slo_s, planned, cheapest, len(candidates), len(meeting))
