"""The planner's outputs: the paper's Table 6 as text, and the same numbers as a JSON object."""

from __future__ import annotations

import math
from typing import Any

from prfaas.plan.cost import CostPoint, CostView
from prfaas.plan.inputs import PlanInputs
from prfaas.plan.search import DeploymentPlan, PlanResult, egress_gbps
from prfaas.types import DeploymentKind

_NAMES = {
    DeploymentKind.PRFAAS: "PrfaaS-PD",
    DeploymentKind.HOMOGENEOUS: "homogeneous PD",
    DeploymentKind.NAIVE: "naive heterogeneous",
}


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def _if_present(value: float, num_instances: int | None) -> float | None:
    return None if num_instances is None else value


def deployment_dict(
    plan: DeploymentPlan, homogeneous_lambda: float, link_gbps: float
) -> dict[str, Any]:
    """One deployment's fields, null where the field does not apply."""
    pt = plan.point
    gbps = egress_gbps(plan)
    return {
        "threshold_tokens": _finite_or_none(pt.threshold_tokens),
        "offload_fraction": _if_present(pt.offload_fraction, plan.num_prfaas),
        "n_prfaas": plan.num_prfaas,
        "n_p": plan.num_pd_p,
        "n_d": plan.num_pd_d,
        "theta_prfaas": _if_present(pt.theta_prfaas_per_s, plan.num_prfaas),
        "theta_pd_p": _if_present(pt.theta_pd_p_per_s, plan.num_pd_p),
        "theta_pd_d": pt.theta_pd_d_per_s,
        "lambda_max": pt.lambda_max_per_s,
        "ratio_vs_homogeneous": pt.lambda_max_per_s / homogeneous_lambda,
        "egress_gbps": gbps,
        "link_share": None if gbps is None else gbps / link_gbps,
        "ttft_mean_s": plan.ttft_mean_s,
        "ttft_p90_s": plan.ttft_p90_s,
        "l_long_tokens": pt.l_long_tokens,
        "l_short_tokens": pt.l_short_tokens,
        "prfaas_egress_limited": pt.prfaas_egress_limited if plan.num_prfaas else None,
        "gpus": plan.gpus_by_hardware,
    }


def _inputs_dict(inputs: PlanInputs) -> dict[str, Any]:
    return {
        "prfaas_cluster": _cluster_dict(inputs, "prfaas"),
        "pd_cluster": _cluster_dict(inputs, "pd"),
        "homogeneous_cluster": _cluster_dict(inputs, "homogeneous"),
        "kv_bytes": inputs.kv_source,
        "lengths": inputs.lengths_source,
        "link_gbps": inputs.link_gbps,
        "link_path": _link_path_dict(inputs),
        "output_tokens": inputs.num_output_tokens,
        "bs_max": inputs.max_batch_size,
        "t_decode_s": inputs.t_decode_step_s,
        "prices_per_gpu": dict(inputs.prices_per_gpu) or None,
    }


def _link_path_dict(inputs: PlanInputs) -> dict[str, Any]:
    path = inputs.link_path
    return {
        "rtt_ms": path.rtt_s * 1e3,
        "jitter_ms": path.jitter_s * 1e3,
        "jitter_distribution": path.jitter_distribution,
        "loss_pct": path.loss_rate * 100,
        "payload_efficiency": path.payload_efficiency,
        "num_connections": path.num_connections,
        "effective_gbps": inputs.effective_link_gbps(),
    }


def _cluster_dict(inputs: PlanInputs, which: str) -> dict[str, Any]:
    cluster = getattr(inputs, which)
    return {
        "hardware": cluster.hardware,
        "gpus": cluster.num_gpus,
        "gpus_per_instance": cluster.gpus_per_instance,
        "prefill_latency": cluster.latency_source,
    }


def result_dict(result: PlanResult, inputs: PlanInputs) -> dict[str, Any]:
    """The `--json` object: keys `prfaas`, `homogeneous`, `naive` (+ `equal_cost`, `inputs`)."""
    homo = result.homogeneous.point.lambda_max_per_s
    out: dict[str, Any] = {
        kind.value: deployment_dict(plan, homo, inputs.link_gbps)
        for kind, plan in result.by_kind().items()
    }
    ec = result.equal_cost
    out["equal_cost"] = None
    if ec is not None:
        out["equal_cost"] = {
            "cost": {k.value: v for k, v in ec.cost_by_kind.items()},
            "lambda_max_per_cost": {k.value: v for k, v in ec.lambda_per_cost_by_kind.items()},
            "homogeneous_at_equal_cost": deployment_dict(
                ec.homogeneous_at_equal_cost, homo, inputs.link_gbps
            ),
            "ratio_vs_equal_cost_homogeneous": _finite_or_none(ec.ratio_vs_equal_cost_homogeneous),
        }
    out["inputs"] = _inputs_dict(inputs)
    return out


# --- text table ----------------------------------------------------------------------------------

_DASH = "-"


def _tokens(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _DASH
    return f"{value / 1000:.1f}K"


def _count(value: int | None) -> str:
    return _DASH if value is None else str(value)


def _rate(value: float, num_instances: int | None) -> str:
    return _DASH if num_instances is None else f"{value:.2f}"


def _column(plan: DeploymentPlan, homogeneous_lambda: float, link_gbps: float) -> list[str]:
    pt = plan.point
    gbps = egress_gbps(plan)
    has_prfaas = plan.num_prfaas is not None
    return [
        _tokens(pt.threshold_tokens),
        f"{pt.offload_fraction:.1%}" if has_prfaas else _DASH,
        f"{_tokens(pt.l_long_tokens)} / {_tokens(pt.l_short_tokens)}",
        " / ".join(_count(n) for n in (plan.num_prfaas, plan.num_pd_p, plan.num_pd_d)),
        f"{plan.ttft_mean_s:.2f} / {plan.ttft_p90_s:.2f}",
        " / ".join(
            (
                _rate(pt.theta_prfaas_per_s, plan.num_prfaas),
                _rate(pt.theta_pd_p_per_s, plan.num_pd_p),
                f"{pt.theta_pd_d_per_s:.2f}",
            )
        ),
        f"{pt.lambda_max_per_s:.2f}",
        f"{pt.lambda_max_per_s / homogeneous_lambda:.2f}x",
        _DASH if gbps is None else f"{gbps:.1f} ({gbps / link_gbps:.0%} of link)",
    ]


TABLE_ROWS = (
    "threshold t",
    "offloaded p",
    "l_long / l_short",
    "N_prfaas / N_p / N_d",
    "mean / P90 TTFT (s)",
    "Θ_prfaas / Θ_pd-p / Θ_pd-d (req/s)",
    "Λ_max (req/s)",
    "vs homogeneous",
    "PrfaaS egress (Gbps)",
)


def table6(result: PlanResult, inputs: PlanInputs) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the paper's Table 6 for these inputs."""
    plans = list(result.by_kind().values())
    homo = result.homogeneous.point.lambda_max_per_s
    columns = [_column(p, homo, inputs.link_gbps) for p in plans]
    headers = ["", *(_NAMES[p.kind] for p in plans)]
    rows = [[name, *(col[i] for col in columns)] for i, name in enumerate(TABLE_ROWS)]
    return headers, rows


def equal_cost_lines(result: PlanResult) -> list[str]:
    """Equal-cost comparison in words (empty without prices)."""
    ec = result.equal_cost
    if ec is None:
        return []
    lines = [
        f"{_NAMES[k]}: cost {ec.cost_by_kind[k]:g}, "
        f"Λ_max per unit cost {ec.lambda_per_cost_by_kind[k]:.4f}"
        for k in result.by_kind()
    ]
    eq = ec.homogeneous_at_equal_cost
    n = eq.num_pd_d + (eq.num_pd_p or 0)
    lines.append(
        f"homogeneous PD at PrfaaS-PD's cost: {n} instances ({eq.num_pd_p} / {eq.num_pd_d}), "
        f"Λ_max {eq.point.lambda_max_per_s:.2f} req/s; PrfaaS-PD is "
        f"{ec.ratio_vs_equal_cost_homogeneous:.2f}x that"
    )
    return lines


def input_lines(inputs: PlanInputs) -> list[str]:
    """Where every input came from, printed under the table."""
    lines = []
    for label, cluster in (
        ("PrfaaS", inputs.prfaas),
        ("PD", inputs.pd),
        ("homogeneous", inputs.homogeneous),
    ):
        lines.append(
            f"{label} cluster: {cluster.num_gpus} x {cluster.hardware} "
            f"({cluster.gpus_per_instance}/instance); prefill latency: {cluster.latency_source}"
        )
    lines += [
        f"S_kv: {inputs.kv_source}",
        f"uncached lengths: {inputs.lengths_source}",
        f"link {inputs.link_gbps:g} Gbps; output {inputs.num_output_tokens:g} tokens; "
        f"BS_max {inputs.max_batch_size}, T_decode {inputs.t_decode_step_s * 1000:g} ms",
        f"link path: {inputs.link_path.describe()}; effective PrfaaS egress "
        f"{inputs.effective_link_gbps():.4g} Gbps",
        "TTFT = prefill latency on the assigned hardware, no queueing or transfer (as the paper)",
    ]
    return lines


# --- cost view -----------------------------------------------------------------------------------

TTFT_CRITERION = (
    "P90 TTFT = the P90-length request's prefill latency on its cluster, no queueing or transfer"
)


def cost_point_dict(point: CostPoint) -> dict[str, Any]:
    """One split's costs, JSON-ready (infinite values as null)."""
    return {
        "deployment": point.kind.value,
        "threshold_tokens": _finite_or_none(point.threshold_tokens),
        "n_prfaas": point.num_prfaas,
        "n_p": point.num_pd_p,
        "n_d": point.num_pd_d,
        "lambda_max": point.lambda_max_per_s,
        "ttft_p90_s": point.ttft_p90_s,
        "prfaas_gpus": point.num_prfaas_gpus,
        "pd_gpus": point.num_pd_gpus,
        "gpu_usd_per_hour": point.gpu_usd_per_hour,
        "link_gb_per_hour": point.link_gb_per_hour,
        "usd_per_hour": point.usd_per_hour,
        "usd_per_request": _finite_or_none(point.usd_per_request),
        "usd_per_m_prompt_tokens": _finite_or_none(point.usd_per_m_prompt_tokens),
        "usd_per_m_output_tokens": _finite_or_none(point.usd_per_m_output_tokens),
    }


def cost_dict(view: CostView | None) -> dict[str, Any] | None:
    """The `--json` object's `cost` (null without a cost view)."""
    if view is None:
        return None
    p = view.prices
    return {
        "prices": {
            "prfaas_gpu_hour": p.prfaas_gpu_hour,
            "pd_gpu_hour": p.pd_gpu_hour,
            "link_gb": p.link_gb,
        },
        "ttft_slo_s": view.ttft_slo_s,
        "criterion": TTFT_CRITERION,
        "planned": {k.value: cost_point_dict(c) for k, c in view.planned.items()},
        "cheapest": None if view.cheapest is None else cost_point_dict(view.cheapest),
        "num_candidates": view.num_candidates,
        "num_meeting_slo": view.num_meeting_slo,
    }


def _usd(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if math.isfinite(value) else _DASH


def _cost_column(point: CostPoint) -> list[str]:
    split = " / ".join(_count(n) for n in (point.num_prfaas, point.num_pd_p, point.num_pd_d))
    return [
        f"{_tokens(point.threshold_tokens)}, {split}",
        f"{point.ttft_p90_s:.2f}",
        f"{point.num_prfaas_gpus} / {point.num_pd_gpus}",
        _usd(point.gpu_usd_per_hour),
        f"{point.link_gb_per_hour:,.0f}",
        _usd(point.usd_per_hour),
        f"{point.lambda_max_per_s:.2f}",
        _usd(point.usd_per_request * 1000, 3),
        _usd(point.usd_per_m_prompt_tokens, 3),
        _usd(point.usd_per_m_output_tokens, 3),
    ]


COST_ROWS = (
    "t, N_prfaas / N_p / N_d",
    "P90 TTFT (s)",
    "GPUs PrfaaS / PD",
    "GPUs ($/h)",
    "link (GB/h)",
    "total ($/h)",
    "Λ_max (req/s)",
    "$ per 1K requests",
    "$ per M prompt tokens",
    "$ per M output tokens",
)


def cost_table(view: CostView) -> tuple[list[str], list[list[str]]]:
    """Each deployment's costs at its planned split, and the cheapest split under the SLO."""
    points = list(view.planned.values())
    headers = ["cost at Λ_max", *(_NAMES[p.kind] for p in points)]
    if view.cheapest is not None:
        points.append(view.cheapest)
        headers.append(f"cheapest ({_NAMES[view.cheapest.kind]})")
    columns = [_cost_column(p) for p in points]
    rows = [[name, *(col[i] for col in columns)] for i, name in enumerate(COST_ROWS)]
    return headers, rows


def cost_lines(view: CostView) -> list[str]:
    """The prices, the SLO criterion and the cheapest split in words."""
    p = view.prices
    slo = "no TTFT SLO" if view.ttft_slo_s is None else f"P90 TTFT <= {view.ttft_slo_s:g} s"
    lines = [
        f"prices: PrfaaS ${p.prfaas_gpu_hour:g}/GPU-h, PD ${p.pd_gpu_hour:g}/GPU-h, link "
        f"${p.link_gb:g}/GB (wire bytes: KV egress / payload efficiency)",
        f"criterion: {slo}; {TTFT_CRITERION}",
    ]
    best = view.cheapest
    if best is None:
        lines.append(f"no split of the {view.num_candidates} searched meets {slo}")
        return lines
    lines.append(
        f"cheapest of {view.num_meeting_slo} splits meeting it (of {view.num_candidates}): "
        f"{_NAMES[best.kind]} at t={_tokens(best.threshold_tokens)}, "
        f"${best.usd_per_request * 1000:,.3f} per 1K requests"
    )
    return lines
