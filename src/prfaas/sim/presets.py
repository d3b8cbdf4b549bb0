"""Named simulation setups. `paper-case-study`: the paper's section 4 deployments (docs/paper.md).

The inputs come from `prfaas.casestudy.PAPER_CASE_STUDY` (shared with the planner): PrfaaS cluster
4 x 8xH200 (Table 5 profile), local PD cluster 8 x 8xH20 (H20 prefill curve inferred from Table 6,
labelled as such), 100 Gbps between them, the 1T hybrid model's S_kv, BS_max 20 at T_decode 25 ms,
uncached lengths ~ truncated log-normal(9.90, 1.00) in [128, 128K], 1024 output tokens. Instance
splits are the planner's optima (Table 6); the PrfaaS threshold t is solved with Eq. 7
(`prfaas.policy.throughput.best_threshold`) for the split, so nothing here copies a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.throughput import StageCosts, best_threshold, evaluate
from prfaas.sim.config import DeploymentSpec, PrefillClusterSpec
from prfaas.sim.cost import (
    DecodeStepByContext,
    DecodeStepTime,
    FixedDecodeStep,
    KVSize,
    PrefillLatency,
    context_decode_step,
)
from prfaas.types import DeploymentKind
from prfaas.workload import (
    EmpiricalLengths,
    LengthDistribution,
    TraceRequest,
    uncached_lengths,
)

PRESETS = ("paper-case-study",)
_CASE = PAPER_CASE_STUDY
CASE_LENGTHS = _CASE.lengths()
CASE_OUTPUT_TOKENS = _CASE.output_tokens
CASE_MAX_BATCH_SIZE = _CASE.max_batch_size
CASE_DECODE_STEP_S = _CASE.t_decode_step_s
CASE_LINK_GBPS = _CASE.link_gbps
# (N_prfaas, N_p, N_d) per deployment: the planner's optima of the paper's Table 6
CASE_SPLITS: dict[DeploymentKind, tuple[int, int, int]] = {
    DeploymentKind.PRFAAS: (4, 3, 5),
    DeploymentKind.HOMOGENEOUS: (0, 9, 3),
    DeploymentKind.NAIVE: (4, 0, 8),
}


@dataclass(frozen=True, slots=True)
class CaseStudy:
    """The resolved inputs of the case study, shared by its three deployments."""

    h200: PrefillLatency  # 8xH200 prefill latency (Table 5 profile)
    h20: PrefillLatency  # 8xH20 prefill latency (inferred curve)
    kv_size: KVSize  # S_kv(l) of the 1T hybrid model
    num_kv_layers: int  # decoder layers of the model (KV streams layer by layer)
    pd_cost_model: DecodeStepByContext  # prfaas.perf model of one PD instance (H200-calibrated)


@dataclass(frozen=True, slots=True)
class _FootprintSize:
    bytes_per_token: int
    fixed_bytes: int

    def kv_bytes(self, num_tokens: int) -> int:
        return self.fixed_bytes + self.bytes_per_token * num_tokens


H20_CURVES = ("inferred", "predicted")


def load_case_study(h20_curve: str = "inferred") -> CaseStudy:
    """Read the 1T model spec and the H200 profile (prfaas.models, prfaas.perf).

    `h20_curve`: "inferred" is the curve back-solved from Table 6; "predicted" is `prfaas.perf`'s
    roofline model calibrated on the H200 profile only, moved to H20 hardware.
    """
    from prfaas.models import load_model_spec
    from prfaas.perf import calibrate, get_hardware, load_profile

    if h20_curve not in H20_CURVES:
        raise UserError(f"unknown H20 curve {h20_curve!r}; known: {', '.join(H20_CURVES)}")
    spec = load_model_spec(_CASE.model)
    footprint = spec.footprint()
    size = _FootprintSize(footprint.bytes_per_token, footprint.fixed_bytes_per_request)
    h200 = load_profile(_CASE.prfaas_profile)
    prfaas_hw = get_hardware(_CASE.prfaas_hardware)
    calibrated = calibrate(spec, prfaas_hw, _CASE.gpus_per_instance, h200)
    pd_model = replace(calibrated, hardware=get_hardware(_CASE.pd_hardware))
    h20: PrefillLatency = pd_model if h20_curve == "predicted" else _CASE.pd_latency
    return CaseStudy(h200, h20, size, spec.num_layers, pd_model)


def stage_costs(
    case: CaseStudy, link_gbps: float, num_output_tokens: float = CASE_OUTPUT_TOKENS
) -> StageCosts:
    return StageCosts(
        t_prefill_prfaas_s=lambda n: case.h200.t_prefill_s(round(n)),
        t_prefill_pd_s=lambda n: case.h20.t_prefill_s(round(n)),
        kv_bytes=lambda n: float(case.kv_size.kv_bytes(round(n))),
        egress_bytes_per_s=link_gbps * 1e9 / 8,
        max_batch_size=CASE_MAX_BATCH_SIZE,
        t_decode_step_s=CASE_DECODE_STEP_S,
        num_output_tokens=num_output_tokens,
    )


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the planner's equations need to know about the workload."""

    lengths: LengthDistribution  # uncached prompt lengths (after prefix hits), tokens
    num_output_tokens: float  # mean output length, tokens


CASE_TRAFFIC = Traffic(CASE_LENGTHS, CASE_OUTPUT_TOKENS)


def trace_traffic(trace: Sequence[TraceRequest]) -> Traffic:
    """The empirical uncached lengths (infinite prefix cache) and mean output of a trace."""
    mean_output = sum(r.num_output_tokens for r in trace) / len(trace)
    return Traffic(EmpiricalLengths(uncached_lengths(trace)), mean_output)


def case_threshold(case: CaseStudy, link_gbps: float, traffic: Traffic = CASE_TRAFFIC) -> float:
    """Eq. 7's t for the PrfaaS-PD split (the planner's rule, from prfaas.policy)."""
    n_prfaas, n_p, _ = CASE_SPLITS[DeploymentKind.PRFAAS]
    lengths = traffic.lengths
    costs = stage_costs(case, link_gbps, traffic.num_output_tokens)
    return best_threshold(costs, lengths, n_prfaas, n_p, lengths.quantile(0), lengths.quantile(1))


def model_lambda_max(
    case: CaseStudy, kind: DeploymentKind, link_gbps: float, traffic: Traffic = CASE_TRAFFIC
) -> float:
    """Λ_max of Eq. 6 for a deployment of the case study (the fluid limit the sim should reach)."""
    n_prfaas, n_p, n_d = CASE_SPLITS[kind]
    t = {
        DeploymentKind.PRFAAS: case_threshold(case, link_gbps, traffic),
        DeploymentKind.HOMOGENEOUS: math.inf,
        DeploymentKind.NAIVE: -math.inf,
    }[kind]
    costs = stage_costs(case, link_gbps, traffic.num_output_tokens)
    point = evaluate(costs, traffic.lengths, t, n_prfaas, n_p, n_d)
    return point.lambda_max_per_s


DECODE_STEPS = ("fixed", "cost-model")


def decode_step_of(case: CaseStudy, how: str, traffic: Traffic = CASE_TRAFFIC) -> DecodeStepTime:
    """T_decode(batch): "fixed" is the paper's 25 ms SLO step; "cost-model" reads `prfaas.perf`'s
    roofline model of one PD instance at the workload's mean context (mean prompt + half the
    output), per batch size."""
    if how == "fixed":
        return FixedDecodeStep(CASE_DECODE_STEP_S)
    if how == "cost-model":
        context = round(traffic.lengths.mean() + traffic.num_output_tokens / 2)
        return context_decode_step(case.pd_cost_model, context, CASE_MAX_BATCH_SIZE)
    raise UserError(f"unknown decode step {how!r}; known: {', '.join(DECODE_STEPS)}")


def case_deployment(
    case: CaseStudy,
    kind: DeploymentKind,
    link_gbps: float = CASE_LINK_GBPS,
    traffic: Traffic = CASE_TRAFFIC,
    decode_step: str = "fixed",
) -> DeploymentSpec:
    """One of the three case-study deployments; PrfaaS-PD's t is solved for `traffic`.

    `decode_step` picks T_decode (see `decode_step_of`); the threshold and Λ_max always use the
    paper's fixed 25 ms step."""
    n_prfaas, n_p, n_d = CASE_SPLITS[kind]
    route_config = None
    if kind is DeploymentKind.PRFAAS:
        t = case_threshold(case, link_gbps, traffic)
        costs = stage_costs(case, link_gbps, traffic.num_output_tokens)
        route_config = RoutePolicyConfig(threshold_tokens=t, costs=costs)
    return DeploymentSpec(
        kind=kind,
        prfaas=PrefillClusterSpec(n_prfaas, case.h200, _label(_CASE.prfaas_hardware)),
        pd_prefill=PrefillClusterSpec(n_p, case.h20, _label(_CASE.pd_hardware)),
        num_decode_instances=n_d,
        max_batch_size=CASE_MAX_BATCH_SIZE,
        decode_step=decode_step_of(case, decode_step, traffic),
        route_config=route_config,
    )


def _label(hardware: str) -> str:
    return f"{_CASE.gpus_per_instance}x{hardware.upper()}"


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
