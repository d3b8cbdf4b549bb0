"""Planner settings -> the simulator's `SimSetup`: where `prfaas sim` meets `prfaas plan`.

`prfaas.sim` and `prfaas.plan` are independent import layers, so this command-line module joins
them: it resolves the settings once with `prfaas.plan.resolve` (the trace read once, for both),
hands the simulator plain curves and numbers, and a `Planner` that runs `prfaas.plan.run_plan` for
any link bandwidth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from prfaas.types import GBPS, DeploymentKind

if TYPE_CHECKING:
    from prfaas.plan import PlanInputs, PlanSettings
    from prfaas.sim.cost import DecodeStepByContext
    from prfaas.sim.presets import PlannedLink, Planner, SimSetup


def load_setup(settings: PlanSettings | None = None) -> SimSetup:
    """The simulator's inputs for planner settings (default: the `paper-case-study` preset)."""
    from prfaas.cli._plan_inputs import check_grid_size
    from prfaas.models import load_model_spec
    from prfaas.plan import get_preset, resolve
    from prfaas.sim.presets import FootprintSize, SimSetup
    from prfaas.workload import load_trace

    settings = settings or get_preset("paper-case-study")
    trace = tuple(load_trace(settings.trace)) if settings.trace is not None else None
    inputs = resolve(settings, trace)
    check_grid_size(inputs)
    model = load_model_spec(settings.model)
    footprint = model.footprint(kv_codec=settings.kv_codec)
    output = settings.output_tokens
    return SimSetup(
        prfaas_latency=inputs.prfaas.t_prefill_s,
        pd_latency=inputs.pd.t_prefill_s,
        prfaas_label=_label(inputs.prfaas.gpus_per_instance, inputs.prfaas.hardware),
        pd_label=_label(inputs.pd.gpus_per_instance, inputs.pd.hardware),
        kv_size=FootprintSize(footprint.bytes_per_token, footprint.fixed_bytes_per_request),
        num_kv_layers=model.num_layers,
        lengths=inputs.lengths,
        num_output_tokens=inputs.num_output_tokens,
        output_tokens_override=None if output is None else max(1, round(output)),
        max_batch_size=inputs.max_batch_size,
        t_decode_step_s=inputs.t_decode_step_s,
        trace=trace,
        reuses_prefixes=trace is not None and settings.trace_prefix_cache,
        planner=_planner(inputs),
        pd_cost_model=_pd_cost_model(settings),
    )


def load_preset_setup(name: str = "paper-case-study") -> SimSetup:
    """`load_setup` of a named preset (`paper-case-study`, `paper-case-study-costmodel`)."""
    from prfaas.plan import get_preset

    return load_setup(get_preset(name))


def _label(gpus_per_instance: int, hardware: str) -> str:
    return f"{gpus_per_instance}x{hardware.upper()}"


def _planner(inputs: PlanInputs) -> Planner:
    from prfaas.plan import run_plan
    from prfaas.sim.presets import PlannedLink, PlannedSplit

    def plan(link_gbps: float) -> PlannedLink:
        at_link = replace(inputs, link_bytes_per_s=link_gbps * GBPS / 8)
        result = run_plan(at_link)
        splits = {
            kind: PlannedSplit(
                num_prfaas=p.num_prfaas or 0,
                num_pd_p=p.num_pd_p or 0,
                num_pd_d=p.num_pd_d,
                threshold_tokens=(
                    p.point.threshold_tokens if kind is DeploymentKind.PRFAAS else None
                ),
                lambda_max_per_s=p.point.lambda_max_per_s,
            )
            for kind, p in result.by_kind().items()
        }
        return PlannedLink(splits, at_link.stage_costs(at_link.prfaas, at_link.pd))

    return plan


def _pd_cost_model(settings: PlanSettings) -> Callable[[], DecodeStepByContext] | None:
    """`prfaas.perf`'s model of one PD instance, calibrated on first use (it takes a second);
    None when the PrfaaS latency is not a profile (nothing to calibrate on)."""
    from prfaas.plan.presets import calibrated_cost_model

    if not settings.prfaas_latency.startswith("profile:"):
        return None
    models: list[DecodeStepByContext] = []

    def model() -> DecodeStepByContext:
        if not models:
            models.append(calibrated_cost_model(settings, settings.pd_hardware))
        return models[0]

    return model
