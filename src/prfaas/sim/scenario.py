"""A case-study run as data (`Scenario`), and the functions that turn it into a config, a workload,
a metrics summary or a max-rate search. Shared by `prfaas sim` and `scripts/sim_results.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

from prfaas.errors import UserError
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.link import BandwidthStep, bandwidth_drop, constant_bandwidth, fluctuating_bandwidth
from prfaas.sim.maxrate import completion_ratio, find_max_rate
from prfaas.sim.presets import (
    CASE_LENGTHS,
    CASE_OUTPUT_TOKENS,
    CASE_TRAFFIC,
    CaseStudy,
    Traffic,
    case_deployment,
    model_lambda_max,
    trace_traffic,
)
from prfaas.sim.simulator import ProgressFn, Simulator
from prfaas.sim.timeline import timeline_events
from prfaas.sim.traffic import synthetic_requests, trace_requests
from prfaas.sim.views import DecisionRecord
from prfaas.types import DeploymentKind
from prfaas.workload import TraceRequest

_FLUCTUATION_STREAM = 2_000_003  # offset of the bandwidth RNG's seed


@dataclass(frozen=True, slots=True)
class Scenario:
    """One deployment of the case study under one kind of traffic and link."""

    kind: DeploymentKind  # which deployment
    rate_per_s: float | None = None  # arrival rate; None: load_fraction x Λ_max (or trace timing)
    load_fraction: float = 0.8  # offered load as a share of the model's Λ_max
    cv: float | None = None  # inter-arrival coefficient of variation; None/1: Poisson
    duration_s: float | None = 3600.0  # arrivals during this long
    num_requests: int | None = None  # or this many requests (both: whichever ends first)
    trace: tuple[TraceRequest, ...] | None = None  # replay this trace instead of the distribution
    link_gbps: float = 100.0  # link capacity, Gbps
    link_drop: tuple[float, float] | None = None  # (at seconds, Gbps afterwards)
    link_fluctuation: tuple[float, float] | None = None  # (low fraction of capacity, period s)
    seed: int = 0
    chunk_tokens: int | None = None  # prefill token budget per step; None: whole requests
    slo_ttft_s: float = 10.0
    slo_tpot_s: float = 0.030
    drain_s: float = 600.0  # simulated time after the last arrival
    decode_step: str = "fixed"  # T_decode: "fixed" (25 ms) or "cost-model" (prfaas.perf)
    static_threshold: bool = False  # True: route by t and global prefix only (link/queue rules off)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.link_gbps) and self.link_gbps > 0):
            raise UserError(f"link bandwidth must be > 0 Gbps, got {self.link_gbps}")
        if not self.load_fraction > 0:
            raise UserError(f"load fraction must be > 0, got {self.load_fraction}")


def bandwidth_of(scenario: Scenario) -> tuple[BandwidthStep, ...]:
    gbps = scenario.link_gbps
    if scenario.link_drop is not None:
        at_s, dropped = scenario.link_drop
        if at_s <= 0 or dropped < 0:
            raise UserError(f"link drop needs AT_S > 0 and GBPS >= 0, got {at_s}:{dropped}")
        return tuple(bandwidth_drop(gbps, at_s, dropped))
    if scenario.link_fluctuation is not None:
        low, period_s = scenario.link_fluctuation
        if not (0 <= low <= 1 and period_s > 0):
            raise UserError(
                f"fluctuation needs 0 <= LOW <= 1 and PERIOD_S > 0, got {low}:{period_s}"
            )
        rng = random.Random(scenario.seed + _FLUCTUATION_STREAM)
        horizon_s = (scenario.duration_s or 3600.0) + scenario.drain_s
        steps = fluctuating_bandwidth(
            gbps, period_s=period_s, low_fraction=low, duration_s=horizon_s, rng=rng
        )
        return tuple(steps)
    return tuple(constant_bandwidth(gbps))


def traffic_of(scenario: Scenario) -> Traffic:
    """The length model the planner's equations (t, Λ_max) use for this scenario."""
    return CASE_TRAFFIC if scenario.trace is None else trace_traffic(scenario.trace)


def build_config(case: CaseStudy, scenario: Scenario) -> SimConfig:
    deployment = case_deployment(
        case, scenario.kind, scenario.link_gbps, traffic_of(scenario), scenario.decode_step
    )
    if scenario.static_threshold and deployment.route_config is not None:
        rules_off = replace(deployment.route_config, costs=None, scarce_utilization=math.inf)
        deployment = replace(deployment, route_config=rules_off)
    return SimConfig(
        deployment=deployment,
        kv_size=case.kv_size,
        num_kv_layers=case.num_kv_layers,
        bandwidth=bandwidth_of(scenario),
        chunk_tokens=scenario.chunk_tokens,
        slo_ttft_s=scenario.slo_ttft_s,
        slo_tpot_s=scenario.slo_tpot_s,
        drain_s=scenario.drain_s,
    )


def offered_rate(case: CaseStudy, scenario: Scenario) -> float | None:
    """The arrival rate the run uses; None: the trace's own timing."""
    if scenario.rate_per_s is not None:
        return scenario.rate_per_s
    if scenario.trace is not None:
        return None
    return scenario.load_fraction * _lambda_max(case, scenario)


def _lambda_max(case: CaseStudy, scenario: Scenario) -> float:
    return model_lambda_max(case, scenario.kind, scenario.link_gbps, traffic_of(scenario))


def build_requests(scenario: Scenario, rate_per_s: float | None) -> list[SimRequest]:
    if scenario.trace is not None:
        requests = trace_requests(
            scenario.trace,
            rate_per_s=rate_per_s,
            num_requests=scenario.num_requests,
            duration_s=scenario.duration_s,
        )
    else:
        assert rate_per_s is not None
        requests = synthetic_requests(
            CASE_LENGTHS,
            CASE_OUTPUT_TOKENS,
            rate_per_s,
            seed=scenario.seed,
            cv=scenario.cv,
            num_requests=scenario.num_requests,
            duration_s=scenario.duration_s,
        )
    if not requests:
        raise UserError("the workload holds no request (duration too short?)")
    return requests


def run_scenario(
    case: CaseStudy,
    scenario: Scenario,
    progress: ProgressFn | None = None,
    timeline: list[dict[str, Any]] | None = None,
    decisions: list[DecisionRecord] | None = None,
) -> dict[str, Any]:
    """Simulate one scenario; the summary also records the offered rate and the model's Λ_max.

    With `timeline`, the run's Chrome trace events are appended to it; with `decisions`, every
    routing decision and its inputs (`DecisionRecord`, for parity checks against a live router).
    """
    rate = offered_rate(case, scenario)
    requests = build_requests(scenario, rate)
    config = replace(build_config(case, scenario), record_decisions=decisions is not None)
    sim = Simulator(config, requests)
    summary = sim.run(progress)
    if timeline is not None:
        timeline += timeline_events(sim.log, str(scenario.kind))
    if decisions is not None:
        decisions += sim.decision_log
    route = config.deployment.route_config
    summary["threshold_tokens"] = None if route is None else round(route.threshold_tokens, 1)
    lam = _lambda_max(case, scenario)
    summary["offered_rate_rps"] = round(len(requests) / requests[-1].arrived_at, 6)
    summary["model_lambda_max_rps"] = round(lam, 6)
    return summary


def max_rate(case: CaseStudy, scenario: Scenario, rel_tol: float = 0.01) -> dict[str, Any]:
    """Bisection on the arrival rate (see prfaas.sim.maxrate for the bounded-queue criterion)."""
    config = replace(build_config(case, scenario), drain_s=0.0)

    def ratio_at(rate: float) -> float:
        requests = build_requests(scenario, rate)
        sim = Simulator(config, requests)
        sim.run()
        end_s = requests[-1].arrived_at
        return completion_ratio(sim.log, end_s / 2, end_s)

    lam = _lambda_max(case, scenario)
    result = find_max_rate(ratio_at, 0.9 * lam, rel_tol=rel_tol)
    return {
        "max_rate": round(result.max_rate_per_s, 6),
        "upper_rate": round(result.upper_rate_per_s, 6),
        "model_lambda_max": round(lam, 6),
        "ratio_vs_model": round(result.max_rate_per_s / lam, 6),
        "probes": [
            {"rate": round(p.rate_per_s, 6), "completion_ratio": round(p.completion_ratio, 6)}
            for p in result.probes
        ],
    }
