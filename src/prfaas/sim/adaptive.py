"""A case-study scenario run with the adaptive controller (`prfaas sim --controller adaptive`).

`prfaas.sim.scenario.run_scenario` runs a deployment as planned (static t and split).
`run_adaptive` runs the same scenario with the dual-timescale scheduler on: the long-timescale
controller (`prfaas.policy.controller`) ticking every period, and the routing rules' hysteresis
(`prfaas.policy.route.RouteState`). Only a PrfaaS-PD deployment adapts; the others run as planned.
The summary carries the same fields as `run_scenario`'s, plus `controller` (decision log, time
series of t, N_p, N_d, throughput and the link, and the exported metrics).

`simulate_controlled` is the same run returning the simulator too, and can record the time series
of a static run (`controller=None`, `series_period_s`), so both can be plotted side by side.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prfaas.policy.controller import ControllerConfig
from prfaas.sim.config import SimConfig
from prfaas.sim.metrics import round_floats
from prfaas.sim.presets import SimSetup, planned_split
from prfaas.sim.scenario import (
    Scenario,
    arrival_windows,
    build_config,
    build_requests,
    make_simulator,
    offered_rate,
    prefix_hits,
    run_scenario,
)
from prfaas.sim.simulator import ProgressFn, Simulator
from prfaas.sim.timeline import timeline_events
from prfaas.types import DeploymentKind


def controlled_config(
    config: SimConfig, controller: ControllerConfig | None, series_period_s: float | None = None
) -> SimConfig:
    """`config` with the long-timescale controller and the routing hysteresis on (a controller),
    or static and recording the time series every `series_period_s` (None)."""
    if controller is None:
        return replace(config, series_period_s=series_period_s)
    return replace(config, controller=controller, route_hysteresis=True)


def simulate_controlled(
    setup: SimSetup,
    scenario: Scenario,
    controller: ControllerConfig | None,
    *,
    series_period_s: float | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], Simulator]:
    """One PrfaaS-PD scenario, adaptive or static; its summary (with `run_scenario`'s fields) and
    the simulator (for per-request analysis)."""
    if scenario.kind is not DeploymentKind.PRFAAS:
        raise ValueError(f"only a PrfaaS-PD deployment adapts, not {scenario.kind}")
    rate = offered_rate(setup, scenario)
    requests = build_requests(setup, scenario, rate)
    config = controlled_config(build_config(setup, scenario), controller, series_period_s)
    sim = make_simulator(config, requests, scenario.routing)
    summary = sim.run(progress)
    route = config.deployment.route_config
    assert route is not None
    end_s = max(sim.now, sim.arrivals_end_s)
    planned = planned_split(setup, scenario.kind, scenario.link_gbps)
    extra = {  # the fields run_scenario adds, so both kinds of run read alike
        "routing": scenario.routing,
        "split": list(planned.split),
        "threshold_tokens": round(route.threshold_tokens, 1),
        "offered_rate_rps": len(requests) / requests[-1].arrived_at,
        "model_lambda_max_rps": planned.lambda_max_per_s,
        "prefix_hits": prefix_hits(sim.log, sim.decisions),
        "windows": arrival_windows(sim.log, end_s, scenario.window_s),
    }
    summary.update(round_floats(extra))
    return summary, sim


def run_adaptive(
    setup: SimSetup,
    scenario: Scenario,
    controller: ControllerConfig,
    progress: ProgressFn | None = None,
    timeline: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`run_scenario` with the adaptive controller (PrfaaS-PD only; others run as planned)."""
    if scenario.kind is not DeploymentKind.PRFAAS:
        return run_scenario(setup, scenario, progress, timeline)
    summary, sim = simulate_controlled(setup, scenario, controller, progress=progress)
    if timeline is not None:
        timeline += timeline_events(sim.log, str(scenario.kind))
    return summary
