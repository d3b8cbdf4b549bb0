"""Threshold "auto": the planner's Eq. 7 threshold search at the topology's own instance split.

`prfaas plan` searches the threshold t together with the PD split N_p / N_d
(`prfaas.plan.search.plan_prfaas`). A topology fixes its instances, so only t is searched here,
the same way: the planner's threshold grid over the length range, then Eq. 7 (`best_threshold`)
solved within one grid step of the best grid point, kept if no worse. The planner's inputs come
from the topology:

- prefill latency: the topology's `model.prefill_latency` curve of each cluster's prefill
  hardware when it has one (`prefill_latency_curve`), else `prfaas.perf.CostModel` of
  `model.emulate` on that hardware and GPUs per instance: in both cases the durations an
  emulated engine sleeps;
- N_prfaas, N_p, N_d: the PrfaaS cluster's prefill instances, the PD cluster's prefill and
  decode instances;
- S_kv(l) of `model.emulate` (bf16 KV), and the link's Gbps in the model's units (the wire
  rate x `time_scale` / `payload_scale`: `ModelConfig.model_bytes_per_s`, so a testbed whose
  payloads and time are scaled plans like the unscaled deployment), with its RTT, loss and
  payload efficiency (`model_link_path`: times / `time_scale`);
- the paper's case-study length distribution and decode parameters (`prfaas.casestudy`). With
  N_d fixed, decode binds equally at every t, so the decode parameters do not move t.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING

from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.models.kv_codec import COMPRESSION_AUTO, KV_CODEC_NONE
from prfaas.plan.inputs import ClusterSpec, PlanInputs
from prfaas.plan.search import rank_point, threshold_grid
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.throughput import (
    LatencyCurve,
    SizeCurve,
    StageCosts,
    StagePoint,
    best_threshold,
    evaluate_split,
    scaled_curve,
    split_lengths,
)
from prfaas.policy.transfer import MAX_RTT_S, LinkPath

if TYPE_CHECKING:
    from prfaas.models import ModelSpec
    from prfaas.topology.config import ClusterConfig, ModelConfig, Topology

_CASE = PAPER_CASE_STUDY
CASE_STUDY_LENGTHS = (
    f"case-study lengths (truncated log-normal mu={_CASE.length_mu:g} "
    f"sigma={_CASE.length_sigma:g} in [{_CASE.min_tokens}, {_CASE.max_tokens}] tokens)"
)
REFINE_TOLERANCE_TOKENS = 0.5  # the planner's bisection tolerance


def _only_cluster(topology: Topology, kind: str) -> ClusterConfig:
    clusters = topology.clusters_of_kind(kind)
    if len(clusters) > 1 and kind == "prfaas":
        names = ", ".join(c.name for c in clusters)
        raise UserError(
            f"the planner models one prfaas cluster and one link; this topology has "
            f"{len(clusters)} providers ({names})"
        )
    if len(clusters) != 1:
        raise UserError(f"needs exactly one cluster of kind {kind!r}, found {len(clusters)}")
    return clusters[0]


def _prefill_shape(cluster: ClusterConfig) -> tuple[str, int]:
    """(hardware, GPUs per instance) shared by every prefill instance of `cluster` (by every
    instance of a PD cluster without prefill instances, as in a naive deployment)."""
    prefill = cluster.by_role("prefill")
    if not prefill and cluster.kind == "pd":
        prefill = cluster.instances
    if not prefill:
        raise UserError(f"needs a prefill instance in cluster {cluster.name!r}")
    shapes = sorted({(i.hardware, i.num_gpus) for i in prefill})
    if len(shapes) > 1:
        listed = ", ".join(f"{n} x {hw}" for hw, n in shapes)
        raise UserError(
            f"needs one hardware and num_gpus across the prefill instances of cluster "
            f"{cluster.name!r}, got {listed}"
        )
    return shapes[0]


def resolve_prefill_latency(spec: str) -> tuple[LatencyCurve, str]:
    """A `model.prefill_latency` spec, "quadratic:a,b,c" or "profile:NAME|PATH", -> (latency of
    one prefill instance at any length >= 1 token, description), parsed by the planner's own
    `resolve_latency`; UserError in one line for any other spec or a curve that is not > 0."""
    from prfaas.plan.presets import COST_MODEL, PlanSettings, resolve_latency

    spec = spec.strip()
    if spec == COST_MODEL:
        raise UserError(f"{COST_MODEL!r} is the default: leave the hardware out instead")
    if spec.partition(":")[0] not in ("quadratic", "profile"):
        raise UserError(f"bad latency spec {spec!r}: use quadratic:a,b,c or profile:NAME|PATH")
    curve, source = resolve_latency(PlanSettings(), spec, hardware="")
    try:
        at_one_token_s = curve(1)
    except ValueError as exc:  # a profile extrapolated below its first row
        raise UserError(f"latency spec {spec!r}: {exc}") from None
    if not at_one_token_s > 0:
        raise UserError(f"latency spec {spec!r} gives {at_one_token_s:.3g} s at 1 token")

    def t_prefill_s(num_tokens: float) -> float:
        return float(curve(max(1.0, num_tokens)))

    return t_prefill_s, source


def prefill_latency_curve(model: ModelConfig, hardware: str) -> tuple[LatencyCurve, str] | None:
    """The `model.prefill_latency` curve of one prefill instance of `hardware` and its
    description, or None when that hardware is timed by the cost model. What emulated engines
    sleep (`prfaas.instance.engines.build_engine`) and the planner's inputs agree through it."""
    spec = model.prefill_latency_spec(hardware)
    if spec is None:
        return None
    curve, source = resolve_prefill_latency(spec)
    return curve, f"{source} (model.prefill_latency.{hardware.strip().lower()})"


def _cost_model_curve(model: ModelSpec, hardware: str, num_gpus: int) -> LatencyCurve:
    """The cost model's prefill latency at any real length (rounded, cached)."""
    from prfaas.perf import CostModel, get_hardware

    cost = CostModel(model, get_hardware(hardware), num_gpus)
    at_tokens = functools.lru_cache(maxsize=1 << 16)(cost.t_prefill_s)

    def t_prefill_s(num_tokens: float) -> float:
        return at_tokens(max(1, round(num_tokens)))

    return t_prefill_s


def _prefill_curve(
    config: ModelConfig, model: ModelSpec, hardware: str, num_gpus: int
) -> tuple[LatencyCurve, str]:
    """(latency of one prefill instance, its source): the topology's curve for `hardware`
    when it has one, else the cost model's."""
    given = prefill_latency_curve(config, hardware)
    if given is not None:
        curve, source = given
        return curve, f"{source} on {num_gpus} x {hardware}"
    cost_source = f"perf cost model of {model.name} on {num_gpus} x {hardware}"
    return _cost_model_curve(model, hardware, num_gpus), cost_source


def planned_kv_codec(topology: Topology) -> str:
    """The KV codec the planner and the simulator size offloaded transfers with: the configured
    `[transport] compression`, or "none" for "auto" (which codes only while the link binds: the
    planner's figures are then those of the uncoded deployment, a lower bound)."""
    codec = topology.transport.compression
    return KV_CODEC_NONE if codec == COMPRESSION_AUTO else codec


def prefill_curve_of(topology: Topology, hardware: str, num_gpus: int) -> LatencyCurve:
    """One prefill instance of `hardware` with `num_gpus` GPUs, in the model's seconds: the
    topology's `model.prefill_latency` curve for it, else the cost model's (what an emulated
    engine sleeps, before `time_scale`)."""
    from prfaas.models import load_model_spec

    model = load_model_spec(topology.model.emulate)
    return _prefill_curve(topology.model, model, hardware, num_gpus)[0]


def kv_bytes_curve(topology: Topology) -> SizeCurve:
    """S_kv(l) of `model.emulate` in real bytes, coded as the planner sizes offloaded transfers
    (`planned_kv_codec`)."""
    from prfaas.models import load_model_spec

    return _kv_curve(load_model_spec(topology.model.emulate), planned_kv_codec(topology))


def _kv_curve(model: ModelSpec, kv_codec: str) -> SizeCurve:
    footprint = model.footprint(kv_codec=kv_codec)

    def kv_bytes(num_tokens: float) -> float:
        return float(footprint.bytes_for(max(0, round(num_tokens))))

    return kv_bytes


def _cluster_spec(
    config: ModelConfig, model: ModelSpec, cluster: ClusterConfig, num_instances: int
) -> ClusterSpec:
    hardware, gpus_per_instance = _prefill_shape(cluster)
    curve, source = _prefill_curve(config, model, hardware, gpus_per_instance)
    return ClusterSpec(
        hardware=hardware,
        num_gpus=num_instances * gpus_per_instance,
        gpus_per_instance=gpus_per_instance,
        t_prefill_s=curve,
        latency_source=source,
    )


def num_prfaas_prefill(topology: Topology) -> int:
    """The PrfaaS cluster's prefill instances (0 without a PrfaaS cluster)."""
    return sum(len(c.by_role("prefill")) for c in topology.clusters_of_kind("prfaas"))


def model_link_gbps(topology: Topology) -> float:
    """The `[link]` in the model's units, Gbps (`ModelConfig.model_bytes_per_s`)."""
    return topology.model.model_bytes_per_s(topology.link.bytes_per_s) * 8 / 1e9


def model_link_path(topology: Topology, cluster_name: str | None = None) -> LinkPath:
    """The `[link]`'s path (or that of cluster `cluster_name`'s link, `Topology.link_of`) with
    its times and its segment in the model's units, like the link's rate: a wire segment of an
    emulated engine's scaled payloads carries 1 / `payload_scale` times its bytes of real KV."""
    path = topology.link_path if cluster_name is None else topology.link_path_of(cluster_name)
    to_model = topology.model.model_seconds
    return replace(
        path,
        rtt_s=min(MAX_RTT_S, to_model(path.rtt_s)),
        jitter_s=min(MAX_RTT_S, to_model(path.jitter_s)),
        mss_bytes=model_mss_bytes(path.mss_bytes, topology.model.payload_scale),
    )


def model_mss_bytes(wire_mss_bytes: int, payload_scale: float) -> int:
    """A wire segment's bytes of real KV: an emulated engine's payloads are `payload_scale`
    times the real ones, so each wire byte carries 1 / `payload_scale` model bytes."""
    return max(1, round(wire_mss_bytes / payload_scale))


def _prfaas_spec(
    topology: Topology, model: ModelSpec, pd_spec: ClusterSpec
) -> tuple[ClusterSpec, int]:
    """The PrfaaS cluster's spec and its number of prefill instances. A homogeneous deployment
    may have no PrfaaS cluster (or an empty one): its spec is then one instance of the PD
    hardware, which the homogeneous deployment never uses, with 0 instances returned."""
    clusters = topology.clusters_of_kind("prfaas")
    is_empty = not clusters or (len(clusters) == 1 and not clusters[0].by_role("prefill"))
    if topology.policy.deployment == "homogeneous" and is_empty:
        return replace(pd_spec, num_gpus=pd_spec.gpus_per_instance), 0
    prfaas = _only_cluster(topology, "prfaas")
    num_prfaas = len(prfaas.by_role("prefill"))
    return _cluster_spec(topology.model, model, prfaas, num_prfaas), num_prfaas


def planner_inputs(topology: Topology) -> tuple[PlanInputs, int]:
    """The planner's inputs for this topology, and its N_p (PD prefill instances).

    `homogeneous` (unused by the threshold) is the PD hardware with as many instances as the
    topology has prefill and decode instances, so `run_plan` works on these inputs too."""
    from prfaas.models import load_model_spec

    model = load_model_spec(topology.model.emulate)
    pd = _only_cluster(topology, "pd")
    num_pd_p, num_pd_d = len(pd.by_role("prefill")), len(pd.by_role("decode"))
    pd_spec = _cluster_spec(topology.model, model, pd, num_pd_p + num_pd_d)
    prfaas_spec, num_prfaas = _prfaas_spec(topology, model, pd_spec)
    homogeneous_gpus = (num_prfaas + num_pd_p + num_pd_d) * pd_spec.gpus_per_instance
    inputs = PlanInputs(
        prfaas=prfaas_spec,
        pd=pd_spec,
        homogeneous=replace(pd_spec, num_gpus=homogeneous_gpus),
        kv_bytes=_kv_curve(model, planned_kv_codec(topology)),
        kv_source=f"model {model.name}, KV codec {planned_kv_codec(topology)}",
        lengths=_CASE.lengths(),
        lengths_source=CASE_STUDY_LENGTHS,
        link_bytes_per_s=topology.model.model_bytes_per_s(topology.link.bytes_per_s),
        num_output_tokens=_CASE.output_tokens,
        max_batch_size=_CASE.max_batch_size,
        t_decode_step_s=_CASE.t_decode_step_s,
        link_path=model_link_path(topology),
    )
    return inputs, num_pd_p


def search_threshold(inputs: PlanInputs, num_pd_p: int) -> StagePoint:
    """The planner's search for t at a fixed split: grid, then Eq. 7 within one grid step."""
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    num_prfaas, num_pd_d = inputs.prfaas.num_instances, inputs.pd.num_instances - num_pd_p

    def at(threshold_tokens: float) -> StagePoint:
        split = split_lengths(inputs.lengths, threshold_tokens)
        return evaluate_split(costs, split, num_prfaas, num_pd_p, num_pd_d)

    step = inputs.threshold_step_tokens
    best = max((at(t) for t in threshold_grid(inputs.lengths, step)), key=rank_point)
    lo = max(best.threshold_tokens - step, inputs.lengths.quantile(0.0))
    hi = min(best.threshold_tokens + step, inputs.lengths.quantile(1.0))
    if not lo < hi:
        return best
    t = best_threshold(
        costs, inputs.lengths, num_prfaas, num_pd_p, lo, hi, tol_tokens=REFINE_TOLERANCE_TOKENS
    )
    refined = at(t)
    return refined if rank_point(refined) >= rank_point(best) else best


def resolve_auto_threshold(topology: Topology) -> tuple[float, str]:
    """(t, how it was computed); UserError in one line when the topology does not allow it."""
    inputs, num_pd_p = planner_inputs(topology)
    if num_pd_p == 0:  # t splits work between PrfaaS and PD prefill: there must be both
        raise UserError(
            f"needs a prefill instance in cluster {_only_cluster(topology, 'pd').name!r}"
        )
    point = search_threshold(inputs, num_pd_p)
    prfaas, pd = inputs.prfaas, inputs.pd
    source = (
        f"auto: Eq. 7 over {topology.model.emulate}, PrfaaS {prfaas.num_instances} x "
        f"{prfaas.gpus_per_instance} {prfaas.hardware}, PD {num_pd_p} prefill + "
        f"{pd.num_instances - num_pd_p} decode x {pd.gpus_per_instance} {pd.hardware}, "
        f"{topology.link.gbps:g} Gbps link, {CASE_STUDY_LENGTHS} -> "
        f"t={point.threshold_tokens:.0f} tokens (offloads {point.offload_fraction:.0%})"
    )
    return point.threshold_tokens, source


def route_config_of(topology: Topology, *, wall_units: bool = False) -> RoutePolicyConfig:
    """The routing rule's knobs for this topology, the same for the router and `sim_config_of`.

    Under `[controller]` (the paper's dual-timescale scheduling), two things change:

    - t is the controller's alone: a congested link (retransmissions) still switches routing to
      cache-affine but does not also multiply t (`threshold_raise_factor` 1), which would move the
      longest prompts onto PD prefill on top of the controller's own answer to the link's
      capacity;
    - the short-timescale offload-delay rule runs (`RoutePolicyConfig.costs`,
      `offload_delay_costs`): a request whose KV would wait behind the link's backlog longer than
      a local prefill takes stays local.

    The simulator's link and queues are in the model's units (`wall_units` False); the router's
    are what the instances and transports report: wall seconds and wire bytes."""
    config = RoutePolicyConfig(topology.policy.threshold_tokens)
    if topology.controller.enabled:
        costs = offload_delay_costs(topology, wall_units=wall_units)
        config = replace(config, threshold_raise_factor=1.0, costs=costs)
    return config


def offload_delay_costs(topology: Topology, *, wall_units: bool) -> StageCosts | None:
    """The prefill curves and S_kv(l) the offload-delay rule compares paths with, or None (rule
    off) when the prefill instances are not all emulated engines that sleep (`time_scale` > 0):
    only those report queued prefill seconds that the curves predict.

    In wall units, prefill seconds are multiplied by `time_scale` and KV bytes by
    `payload_scale`, as the emulated engines sleep and send them."""
    model = topology.model
    prefill = [i for c in topology.clusters for i in c.by_role("prefill")]
    if model.time_scale <= 0 or any(i.engine != "emulated" for i in prefill):
        return None
    inputs, _ = planner_inputs(topology)
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    if not wall_units:
        return costs
    return replace(
        costs,
        t_prefill_prfaas_s=scaled_curve(costs.t_prefill_prfaas_s, model.time_scale),
        t_prefill_pd_s=scaled_curve(costs.t_prefill_pd_s, model.time_scale),
        kv_bytes=scaled_curve(costs.kv_bytes, model.payload_scale),
        egress_bytes_per_s=topology.link.bytes_per_s,
    )
