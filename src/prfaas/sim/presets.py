"""What the simulator builds its deployments from: the planner's inputs and the planner's answer.

`prfaas sim` takes the same inputs as `prfaas plan` (a `prfaas.plan.PlanSettings`: preset, then
`--config`, then flags). `prfaas.sim` does not import `prfaas.plan` (the two are independent
layers), so the command line resolves the settings (`prfaas.cli._sim_setup.load_setup`) into a
`SimSetup` of plain curves and numbers plus a `Planner`: a function of the link bandwidth that
returns `prfaas plan`'s answer for that link and the setup's workload. Each deployment then starts
from that answer (`build_deployment`): the instance split, the PrfaaS threshold t (Eq. 7, refined
as the planner does) and the model's Λ_max, so nothing here copies a result.

Routing (`ROUTINGS`, `prfaas.sim.routing`) is a run-time choice of the router: "cache-aware" (the
policy as it is) or "length-only". Both run the same deployment, planned on the uncached lengths,
so a comparison of the two changes nothing but the routing decision.

The `paper-case-study` constants below (`prfaas.casestudy.PAPER_CASE_STUDY`) are the defaults of
the preset of that name: PrfaaS cluster 4 x 8xH200, local PD cluster 8 x 8xH20, 100 Gbps,
uncached lengths ~ truncated log-normal(9.90, 1.00) in [128, 128K], 1024 output tokens, BS_max 20
at T_decode 25 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.throughput import LatencyCurve, StageCosts
from prfaas.sim.config import DeploymentSpec, PrefillClusterSpec
from prfaas.sim.cost import (
    DecodeStepByContext,
    DecodeStepTime,
    FixedDecodeStep,
    context_decode_step,
)
from prfaas.types import DeploymentKind
from prfaas.workload import LengthDistribution, TraceRequest

_CASE = PAPER_CASE_STUDY
CASE_LENGTHS = _CASE.lengths()
CASE_OUTPUT_TOKENS = _CASE.output_tokens
CASE_MAX_BATCH_SIZE = _CASE.max_batch_size
CASE_DECODE_STEP_S = _CASE.t_decode_step_s
CASE_LINK_GBPS = _CASE.link_gbps
ROUTINGS = ("cache-aware", "length-only")
DECODE_STEPS = ("fixed", "cost-model")


@dataclass(frozen=True, slots=True)
class PlannedSplit:
    """The planner's optimum of one deployment at one link and workload."""

    num_prfaas: int  # PrfaaS prefill instances (0: none)
    num_pd_p: int  # PD-P instances (0: none)
    num_pd_d: int  # PD-D instances
    threshold_tokens: float | None  # PrfaaS-PD's t (None for the other deployments)
    lambda_max_per_s: float  # Eq. 6 at that point

    @property
    def split(self) -> tuple[int, int, int]:
        return (self.num_prfaas, self.num_pd_p, self.num_pd_d)


@dataclass(frozen=True, slots=True)
class PlannedLink:
    """`prfaas plan`'s answer for one link bandwidth and length distribution."""

    splits: Mapping[DeploymentKind, PlannedSplit]  # per deployment
    costs: StageCosts  # T_prefill per cluster, S_kv, link: what the offload-delay rule reads


# link Gbps -> the planner's answer for that link and the setup's workload
Planner = Callable[[float], PlannedLink]


@dataclass(frozen=True, slots=True)
class CurveLatency:
    """A planner latency curve (tokens -> seconds) as the simulator's `PrefillLatency`."""

    curve: LatencyCurve

    def t_prefill_s(self, num_tokens: int) -> float:
        return self.curve(num_tokens)


@dataclass(frozen=True, slots=True)
class FootprintSize:
    """S_kv(l) in whole bytes: fixed per-request state plus bytes per token."""

    bytes_per_token: int
    fixed_bytes: int

    def kv_bytes(self, num_tokens: int) -> int:
        return self.fixed_bytes + self.bytes_per_token * num_tokens


@dataclass(frozen=True)
class SimSetup:
    """The resolved inputs of one `prfaas sim` invocation, shared by its deployments and runs.

    Plans are cached per link bandwidth, so a max-rate search or a table of runs plans once.
    """

    prfaas_latency: LatencyCurve  # T_prefill(l) of one PrfaaS instance
    pd_latency: LatencyCurve  # T_prefill(l) of one PD (and homogeneous) instance
    prfaas_label: str  # e.g. "8xH200", for reports
    pd_label: str  # e.g. "8xH20"
    kv_size: FootprintSize  # S_kv(l) of the model, whole bytes
    num_kv_layers: int  # decoder layers (KV streams layer by layer)
    lengths: LengthDistribution  # uncached prompt lengths the synthetic workload draws from
    num_output_tokens: float  # L_out the planner uses (a trace's mean unless given)
    output_tokens_override: int | None  # every request's output length (None: the trace's own)
    max_batch_size: int  # BS_max per decode instance
    t_decode_step_s: float  # the planner's T_decode (the "fixed" decode step)
    trace: tuple[TraceRequest, ...] | None  # requests to replay (None: synthetic arrivals)
    reuses_prefixes: bool  # the replayed requests carry their prefix blocks
    planner: Planner  # `prfaas plan` for a link (see `Planner`)
    pd_cost_model: Callable[[], DecodeStepByContext] | None = None  # perf model of a PD instance
    _plans: dict[float, PlannedLink] = field(default_factory=dict, compare=False, repr=False)


def check_routing(routing: str) -> None:
    if routing not in ROUTINGS:
        raise UserError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")


def plan_for(setup: SimSetup, link_gbps: float) -> PlannedLink:
    """The planner's answer for this link (cached on the setup)."""
    if link_gbps not in setup._plans:
        setup._plans[link_gbps] = setup.planner(link_gbps)
    return setup._plans[link_gbps]


def planned_split(setup: SimSetup, kind: DeploymentKind, link_gbps: float) -> PlannedSplit:
    """The planner's optimum of one deployment for this link."""
    return plan_for(setup, link_gbps).splits[DeploymentKind(kind)]


def model_lambda_max(setup: SimSetup, kind: DeploymentKind, link_gbps: float) -> float:
    """Λ_max of Eq. 6 at the planner's optimum (the fluid limit the simulation should reach)."""
    return planned_split(setup, kind, link_gbps).lambda_max_per_s


def decode_step_of(setup: SimSetup, how: str) -> DecodeStepTime:
    """T_decode(batch): "fixed" is the planner's T_decode (the decode SLO step); "cost-model"
    reads `prfaas.perf`'s roofline model of one PD instance (calibrated on the PrfaaS profile) at
    the workload's mean context (mean uncached prompt + half the output), per batch size."""
    if how == "fixed":
        return FixedDecodeStep(setup.t_decode_step_s)
    if how == "cost-model":
        if setup.pd_cost_model is None:
            raise UserError("--decode-step cost-model needs the PrfaaS latency from a profile")
        context = round(setup.lengths.mean() + setup.num_output_tokens / 2)
        return context_decode_step(setup.pd_cost_model(), context, setup.max_batch_size)
    raise UserError(f"unknown decode step {how!r}; known: {', '.join(DECODE_STEPS)}")


def build_deployment(
    setup: SimSetup, kind: DeploymentKind, link_gbps: float, decode_step: str = "fixed"
) -> DeploymentSpec:
    """One deployment at the planner's split for this link; PrfaaS-PD routes with the planner's t
    and stage costs (the offload-delay rule's T_prefill and S_kv).

    `decode_step` picks T_decode (see `decode_step_of`); t and Λ_max always use the planner's."""
    kind = DeploymentKind(kind)
    planned = plan_for(setup, link_gbps)
    split = planned.splits[kind]
    route_config = None
    if kind is DeploymentKind.PRFAAS:
        assert split.threshold_tokens is not None
        route_config = RoutePolicyConfig(
            threshold_tokens=split.threshold_tokens, costs=planned.costs
        )
    return DeploymentSpec(
        kind=kind,
        prfaas=PrefillClusterSpec(
            split.num_prfaas, CurveLatency(setup.prfaas_latency), setup.prfaas_label
        ),
        pd_prefill=PrefillClusterSpec(
            split.num_pd_p, CurveLatency(setup.pd_latency), setup.pd_label
        ),
        num_decode_instances=split.num_pd_d,
        max_batch_size=setup.max_batch_size,
        decode_step=decode_step_of(setup, decode_step),
        route_config=route_config,
    )
