"""A simulation run as data (`Scenario`), and the functions that turn it into a config, a workload,
a metrics summary or a max-rate search. Shared by `prfaas sim` and `scripts/sim_results.py`.

Every deployment starts from the planner's answer for the scenario's (initial) link
(`prfaas.sim.presets.build_deployment`); the workload is the setup's trace, or synthetic arrivals
with lengths from the setup's distribution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prfaas.errors import UserError
from prfaas.policy.route import RouteDecision, RouteTarget
from prfaas.policy.transfer import LinkPath
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.link import BandwidthStep, bandwidth_drop, constant_bandwidth, fluctuating_bandwidth
from prfaas.sim.maxrate import MIN_COMPLETION_RATIO, Probe, bisect_rate, completion_ratio
from prfaas.sim.metrics import RequestLog, percentile, round_floats, waited_s
from prfaas.sim.presets import (
    CASE_LINK_GBPS,
    SimSetup,
    build_deployment,
    check_routing,
    model_lambda_max,
    planned_split,
)
from prfaas.sim.routing import routing_policy
from prfaas.sim.simulator import ProgressFn, Simulator
from prfaas.sim.timeline import timeline_events
from prfaas.sim.traffic import synthetic_requests, trace_requests
from prfaas.sim.views import DecisionRecord
from prfaas.types import DeploymentKind

_FLUCTUATION_STREAM = 2_000_003  # offset of the bandwidth RNG's seed


@dataclass(frozen=True, slots=True)
class Scenario:
    """One deployment under one kind of traffic, link and routing."""

    kind: DeploymentKind  # which deployment
    rate_per_s: float | None = None  # arrival rate; None: load_fraction x Λ_max (or trace timing)
    load_fraction: float = 0.8  # offered load as a share of the model's Λ_max
    cv: float | None = None  # inter-arrival coefficient of variation; None/1: Poisson
    duration_s: float | None = 3600.0  # arrivals during this long
    num_requests: int | None = None  # or this many requests (both: whichever ends first)
    link_gbps: float = CASE_LINK_GBPS  # link capacity (at the start), Gbps; also the planned link
    link_drop: tuple[float, float] | None = None  # (at seconds, Gbps afterwards)
    link_fluctuation: tuple[float, float] | None = None  # (low fraction of capacity, period s)
    link_path: LinkPath = field(default_factory=LinkPath)  # RTT, jitter, loss, efficiency
    seed: int = 0
    chunk_tokens: int | None = None  # prefill token budget per step; None: whole requests
    slo_ttft_s: float = 10.0
    slo_tpot_s: float = 0.030
    drain_s: float = 600.0  # simulated time after the last arrival
    decode_step: str = "fixed"  # T_decode: "fixed" (the planner's) or "cost-model" (prfaas.perf)
    static_threshold: bool = False  # True: route by t and global prefix only (link/queue rules off)
    routing: str = "cache-aware"  # "cache-aware" or "length-only" (prfaas.sim.routing)
    window_s: float = 300.0  # width of the per-arrival-window series in the summary, seconds

    def __post_init__(self) -> None:
        if not (math.isfinite(self.link_gbps) and self.link_gbps > 0):
            raise UserError(f"link bandwidth must be > 0 Gbps, got {self.link_gbps}")
        if not self.load_fraction > 0:
            raise UserError(f"load fraction must be > 0, got {self.load_fraction}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise UserError(f"window must be > 0 s, got {self.window_s}")
        check_routing(self.routing)


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


def build_config(setup: SimSetup, scenario: Scenario) -> SimConfig:
    deployment = build_deployment(setup, scenario.kind, scenario.link_gbps, scenario.decode_step)
    if scenario.static_threshold and deployment.route_config is not None:
        rules_off = replace(deployment.route_config, costs=None, scarce_utilization=math.inf)
        deployment = replace(deployment, route_config=rules_off)
    return SimConfig(
        deployment=deployment,
        kv_size=setup.kv_size,
        num_kv_layers=setup.num_kv_layers,
        bandwidth=bandwidth_of(scenario),
        path=scenario.link_path,
        link_seed=scenario.seed,
        chunk_tokens=scenario.chunk_tokens,
        slo_ttft_s=scenario.slo_ttft_s,
        slo_tpot_s=scenario.slo_tpot_s,
        drain_s=scenario.drain_s,
    )


def offered_rate(setup: SimSetup, scenario: Scenario) -> float | None:
    """The arrival rate the run uses; None: the trace's own timing."""
    if scenario.rate_per_s is not None:
        return scenario.rate_per_s
    if setup.trace is not None:
        return None
    return scenario.load_fraction * _lambda_max(setup, scenario)


def _lambda_max(setup: SimSetup, scenario: Scenario) -> float:
    return model_lambda_max(setup, scenario.kind, scenario.link_gbps)


def build_requests(
    setup: SimSetup, scenario: Scenario, rate_per_s: float | None
) -> list[SimRequest]:
    """The setup's trace (its prefix blocks dropped without prefix caching, its outputs replaced
    by an explicit output length), or synthetic arrivals at `rate_per_s`."""
    if setup.trace is not None:
        requests = trace_requests(
            setup.trace,
            rate_per_s=rate_per_s,
            num_requests=scenario.num_requests,
            duration_s=scenario.duration_s,
        )
        requests = _adapt_trace_requests(setup, requests)
    else:
        assert rate_per_s is not None
        requests = synthetic_requests(
            setup.lengths,
            max(1, round(setup.num_output_tokens)),
            rate_per_s,
            seed=scenario.seed,
            cv=scenario.cv,
            num_requests=scenario.num_requests,
            duration_s=scenario.duration_s,
        )
    if not requests:
        raise UserError("the workload holds no request (duration too short?)")
    return requests


def _adapt_trace_requests(setup: SimSetup, requests: list[SimRequest]) -> list[SimRequest]:
    output = setup.output_tokens_override
    if setup.reuses_prefixes and output is None:
        return requests
    hashes_of = (lambda r: r.block_hashes) if setup.reuses_prefixes else (lambda r: ())
    return [
        replace(
            r,
            block_hashes=hashes_of(r),
            num_output_tokens=r.num_output_tokens if output is None else output,
        )
        for r in requests
    ]


def make_simulator(config: SimConfig, requests: Sequence[SimRequest], routing: str) -> Simulator:
    """A simulator whose policy routes as `routing` says (`prfaas.sim.routing`)."""
    sim = Simulator(config, requests)
    sim.policy = routing_policy(sim.policy, routing)
    return sim


def run_scenario(
    setup: SimSetup,
    scenario: Scenario,
    progress: ProgressFn | None = None,
    timeline: list[dict[str, Any]] | None = None,
    decisions: list[DecisionRecord] | None = None,
) -> dict[str, Any]:
    """Simulate one scenario; the summary also records the offered rate, the planner's split,
    t and Λ_max, the routing, prefix hits per cluster and a series per arrival window.

    With `timeline`, the run's Chrome trace events are appended to it; with `decisions`, every
    routing decision and its inputs (`DecisionRecord`, for parity checks against a live router).
    """
    rate = offered_rate(setup, scenario)
    requests = build_requests(setup, scenario, rate)
    config = replace(build_config(setup, scenario), record_decisions=decisions is not None)
    sim = make_simulator(config, requests, scenario.routing)
    summary = sim.run(progress)
    if timeline is not None:
        timeline += timeline_events(sim.log, str(scenario.kind))
    if decisions is not None:
        decisions += sim.decision_log
    route = config.deployment.route_config
    end_s = max(sim.now, sim.arrivals_end_s)
    planned = planned_split(setup, scenario.kind, scenario.link_gbps)
    extra = {
        "routing": scenario.routing,
        "split": list(planned.split),
        "threshold_tokens": None if route is None else round(route.threshold_tokens, 1),
        "offered_rate_rps": len(requests) / requests[-1].arrived_at,
        "model_lambda_max_rps": planned.lambda_max_per_s,
        "prefix_hits": prefix_hits(sim.log, sim.decisions),
        "windows": arrival_windows(sim.log, end_s, scenario.window_s),
    }
    summary.update(round_floats(extra))
    return summary


def prefix_hits(
    log: RequestLog, decisions: Sequence[RouteDecision | None]
) -> dict[str, dict[str, float | int | None]]:
    """Per prefill cluster: requests routed there, their prompt tokens, the cached prompt tokens
    they reused there (`hit_tokens`, moved prefixes included), the tokens moved there from the
    other cluster first, and hit_tokens / prompt_tokens."""
    out: dict[str, dict[str, float | int | None]] = {}
    for target in RouteTarget:
        routed = [(i, d) for i, d in enumerate(decisions) if d is not None and d.target is target]
        prompt = sum(log.num_prompt_tokens[i] for i, _ in routed)
        hit = sum(d.num_prefix_hit_tokens for _, d in routed)
        out[str(target)] = {
            "num_requests": len(routed),
            "prompt_tokens": prompt,
            "hit_tokens": hit,
            "moved_tokens": sum(d.num_prefix_transfer_tokens for _, d in routed),
            "hit_ratio": hit / prompt if prompt else None,
        }
    return out


def arrival_windows(log: RequestLog, end_s: float, window_s: float) -> list[dict[str, Any]]:
    """Per window of arrival time: arrivals, offload ratio and TTFT p90 (a request with no first
    token by `end_s` counts with its wait so far, as in the summary)."""
    arrived = [t for t in log.arrived_at if not math.isnan(t)]
    num_windows = max(1, math.ceil(max(arrived, default=0.0) / window_s))
    ttft: list[list[float]] = [[] for _ in range(num_windows)]
    offloaded = [0] * num_windows
    for i, at in enumerate(log.arrived_at):
        if math.isnan(at):
            continue
        w = min(int(at // window_s), num_windows - 1)
        ttft[w].append(waited_s(log.first_token_at[i], at, end_s))
        offloaded[w] += log.is_offloaded[i]
    return [
        {
            "start_s": w * window_s,
            "num_arrived": len(ttft[w]),
            "offload_ratio": offloaded[w] / len(ttft[w]) if ttft[w] else None,
            "ttft_p90_s": percentile(sorted(ttft[w]), 90) if ttft[w] else None,
        }
        for w in range(num_windows)
    ]


def ttft_p90_s(log: RequestLog, end_s: float) -> float:
    """TTFT p90 over every arrival, waits so far for those with no first token by `end_s`."""
    values = sorted(
        waited_s(log.first_token_at[i], at, end_s)
        for i, at in enumerate(log.arrived_at)
        if not math.isnan(at)
    )
    return percentile(values, 90)


def _no_stable_rate(lowest: Probe, max_ttft_p90_s: float | None) -> str:
    """Why the search found no stable rate, from its lowest probe."""
    text = f"no arrival rate is stable: at {lowest.rate_per_s:.3g} req/s"
    p90 = lowest.ttft_p90_s
    if p90 is not None and max_ttft_p90_s is not None and p90 > max_ttft_p90_s:
        return f"{text} the TTFT p90 was {p90:.3g} s > {max_ttft_p90_s:g} s"
    return f"{text} {lowest.completion_ratio:.3f} of the arrivals completed"


def max_rate(
    setup: SimSetup,
    scenario: Scenario,
    rel_tol: float = 0.01,
    max_ttft_p90_s: float | None = None,
) -> dict[str, Any]:
    """Bisection on the arrival rate (see prfaas.sim.maxrate for the bounded-queue criterion).

    With `max_ttft_p90_s`, a rate also needs the run's TTFT p90 (every arrival, the scenario's
    drain included) at most that: the highest throughput at that TTFT p90."""
    config = build_config(setup, scenario)
    if max_ttft_p90_s is None:
        config = replace(config, drain_s=0.0)  # the completion criterion ends at the last arrival

    def run_at(rate: float) -> Probe:
        requests = build_requests(setup, scenario, rate)
        sim = make_simulator(config, requests, scenario.routing)
        sim.run()
        end_s = requests[-1].arrived_at
        ratio = completion_ratio(sim.log, end_s / 2, end_s)
        if max_ttft_p90_s is None:
            return Probe(rate, ratio, ratio >= MIN_COMPLETION_RATIO)
        p90 = ttft_p90_s(sim.log, max(sim.now, end_s))
        return Probe(rate, ratio, ratio >= MIN_COMPLETION_RATIO and p90 <= max_ttft_p90_s, p90)

    lam = _lambda_max(setup, scenario)
    result = bisect_rate(run_at, 0.9 * lam, rel_tol=rel_tol)
    if result.max_rate_per_s == 0.0:
        raise UserError(_no_stable_rate(result.probes[-1], max_ttft_p90_s))
    probes = []
    for p in result.probes:
        entry = {"rate": p.rate_per_s, "completion_ratio": p.completion_ratio}
        if p.ttft_p90_s is not None:
            entry["ttft_p90_s"] = p.ttft_p90_s
        probes.append(entry)
    planned = planned_split(setup, scenario.kind, scenario.link_gbps)
    found = {
        "routing": scenario.routing,
        "split": list(planned.split),
        "threshold_tokens": planned.threshold_tokens,
        "max_rate": result.max_rate_per_s,
        "upper_rate": result.upper_rate_per_s,
        "model_lambda_max": lam,
        "ratio_vs_model": result.max_rate_per_s / lam,
        "max_ttft_p90_s": max_ttft_p90_s,
        "probes": probes,
    }
    return round_floats(found)  # type: ignore[no-any-return]
