"""A topology as the simulator sees it: the same instances, costs, link, threshold, prefix blocks
and controller, so one scripted workload runs through the live router and through the simulator
alike (the router/simulator parity test), and a user can simulate the deployment they serve.

The costs are the ones the live controller and threshold "auto" use
(`prfaas.topology.derived.planner_inputs`): each cluster's prefill curve (the
topology's `model.prefill_latency` for its hardware, else the cost model of `model.emulate`:
what emulated engines sleep), S_kv(l) of `model.emulate`, and the link in model units. The decode
instances run as emulated decode engines do: each step the cost model of `model.emulate` on
their hardware at the batch's size and mean context (`emulated_cost_model`), up to the engine's
batch of 256; the controller still plans with the case study's T_decode and BS_max, as the live
one does (`PlannedDecode`). With `[prefix_cache]` every prefill instance keeps its own pool of the
topology's budget, sized as the emulated engines size it (`PrefixPoolSpec`, `prfaas.sim.prefix`),
and a cluster whose prefill instances all have a KV receiver takes moved prefixes; without one
nothing is cached, as live. A decode instance waits for a request's KV at most `[policy]
transfer_deadline_s` (in model seconds), then applies `[policy] failure` as live
(`prfaas.sim.deadline`): recomputing, it prefills by its own hardware's prefill curve, what its
emulated engine sleeps. Routing starts from the topology's t with the
router's rule knobs (`route_config_of`), with the hysteresis and the long-timescale controller
on when the topology has a `[controller]` table, as in the router.

A topology with several prfaas clusters (providers) becomes a simulation with several providers
(`prfaas.sim.config.ProviderSpec`): each provider's prefill curve, instances and link (its
`[clusters.link]`, else `[link]`, in model units) come from the topology as it would be with
that provider alone, its price from its cluster, the PD-P price from the PD cluster, and the
TTFT target from `[policy] ttft_target_s` in model seconds. A link's `price_per_gb` is charged
per GB of the simulated KV payload (real bytes, not the emulation's scaled ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from prfaas.engine.emulated import (
    EMULATED_KV_DTYPE,
    EMULATED_MAX_BATCH_SIZE,
    emulated_cost_model,
)
from prfaas.errors import UserError
from prfaas.plan.inputs import ClusterSpec
from prfaas.prefix_cache.entries import PoolEntrySizes
from prfaas.sim.config import (
    DeploymentSpec,
    PlannedDecode,
    PrefillClusterSpec,
    PrefixPoolSpec,
    ProviderSpec,
    SimConfig,
)
from prfaas.sim.cost import BatchContextDecodeStep
from prfaas.sim.link import BandwidthStep
from prfaas.sim.presets import CurveLatency, FootprintSize
from prfaas.topology.config import DEFAULT_PREFIX_BLOCK_TOKENS, ClusterConfig, Topology
from prfaas.topology.derived import (
    model_link_gbps,
    model_link_path,
    num_prfaas_prefill,
    planned_kv_codec,
    planner_inputs,
    prefill_curve_of,
    route_config_of,
)
from prfaas.types import DeploymentKind


def sim_config_of(
    topology: Topology, bandwidth: Sequence[BandwidthStep] | None = None
) -> SimConfig:
    """The `SimConfig` of `topology`; `bandwidth` overrides its constant `[link]` (steps from
    time 0, in the model's units like the `[link]` rate: `ModelConfig.model_bytes_per_s`).
    Needs a PD cluster, and a PrfaaS cluster unless the deployment is homogeneous, with one
    hardware per cluster, like "auto". Several providers have a link each: `bandwidth` is
    refused with them."""
    if len(topology.providers) > 1:
        return _providers_config(topology, bandwidth)
    inputs, num_pd_p = planner_inputs(topology)
    pd = topology.clusters_of_kind("pd")[0]
    deployment = DeploymentSpec(
        kind=DeploymentKind(topology.policy.deployment),
        prfaas=_prefill_spec(inputs.prfaas, num_prfaas_prefill(topology)),
        pd_prefill=_prefill_spec(inputs.pd, num_pd_p),
        num_decode_instances=len(pd.by_role("decode")),
        max_batch_size=EMULATED_MAX_BATCH_SIZE,
        decode_step=decode_step_of(topology),
        route_config=route_config_of(topology),
        planned_decode=PlannedDecode(inputs.t_decode_step_s, inputs.max_batch_size),
        decode_prefill=decode_prefill_of(topology),
    )
    controller = topology.controller
    return _sim_config(
        topology,
        deployment,
        bandwidth=tuple(bandwidth or _constant_link(topology)),
        path=model_link_path(topology),
        controller=controller.config if controller.enabled else None,
        route_hysteresis=controller.enabled,
    )


def _sim_config(topology: Topology, deployment: DeploymentSpec, **knobs: object) -> SimConfig:
    """The knobs every simulation of `topology` shares: model sizes, seed, prefix pools."""
    from prfaas.models import load_model_spec

    model = load_model_spec(topology.model.emulate)
    footprint = model.footprint(kv_codec=planned_kv_codec(topology))
    policy = topology.policy
    return SimConfig(
        deployment=deployment,
        kv_size=FootprintSize(footprint.bytes_per_token, footprint.fixed_bytes_per_request),
        num_kv_layers=model.num_layers,
        link_seed=topology.model.seed,
        block_tokens=_block_tokens(topology),
        prefix_cache_blocks=0,  # the cluster-wide sets stay empty: pools, or no cache at all
        prefix_pools=prefix_pools_of(topology),
        record_decisions=True,
        transfer_deadline_s=topology.model.model_seconds(policy.transfer_deadline_s),
        failure_policy=policy.failure,
        **knobs,  # type: ignore[arg-type]
    )


def decode_step_of(topology: Topology) -> BatchContextDecodeStep:
    """T_decode(batch, context) of the PD cluster's decode instances: the cost model of
    `model.emulate` on their hardware, what their emulated engines sleep per step."""
    from prfaas.models import load_model_spec

    hardware, num_gpus = _decode_shape(topology)
    model = load_model_spec(topology.model.emulate)
    return BatchContextDecodeStep(emulated_cost_model(model, hardware, num_gpus))


def decode_prefill_of(topology: Topology) -> CurveLatency:
    """T_prefill(l) of a decode instance prefilling a request itself (its KV past the deadline):
    the prefill curve of its hardware as a prefill instance of that hardware has it, what its
    emulated engine sleeps for a local prefill."""
    return CurveLatency(prefill_curve_of(topology, *_decode_shape(topology)))


def _decode_shape(topology: Topology) -> tuple[str, int]:
    """(hardware, GPUs) shared by the PD cluster's decode instances."""
    decode = topology.clusters_of_kind("pd")[0].by_role("decode")
    shapes = sorted({(i.hardware, i.num_gpus) for i in decode})
    if len(shapes) != 1:
        listed = ", ".join(f"{n} x {hw}" for hw, n in shapes) or "none"
        raise UserError(
            f"needs one hardware and num_gpus across the decode instances, got {listed}"
        )
    return shapes[0]


def prefix_pools_of(topology: Topology) -> PrefixPoolSpec | None:
    """Every prefill instance's own pool as `[prefix_cache]` sizes it (None without one); the
    clusters whose prefill instances all have a KV receiver take moved prefixes."""
    from prfaas.models import load_model_spec

    cache = topology.prefix_cache
    if cache is None:
        return None
    model = load_model_spec(topology.model.emulate)
    sizes = PoolEntrySizes.of_model(model, EMULATED_KV_DTYPE, cache.block_tokens)
    targets = {"prfaas": "prfaas", "pd": "pd_prefill"}  # cluster kind -> RouteTarget value
    receivers = frozenset(
        targets[c.kind]
        for c in topology.clusters
        if c.by_role("prefill") and all(i.kv is not None for i in c.by_role("prefill"))
    )
    return PrefixPoolSpec(cache.budget_bytes, sizes, receivers, topology.model.payload_scale)


def _constant_link(topology: Topology) -> tuple[BandwidthStep, ...]:
    """The topology's `[link]` at its rate from time 0, in model units."""
    return (BandwidthStep(0.0, model_link_gbps(topology)),)


def _alone(topology: Topology, provider: ClusterConfig) -> Topology:
    """`topology` with `provider` as its only prfaas cluster, over that provider's link."""
    clusters = tuple(c for c in topology.clusters if c.kind != "prfaas" or c is provider)
    return replace(topology, clusters=clusters, link=topology.link_of(provider.name))


def _price_per_gpu_hour(cluster: ClusterConfig) -> float:
    if cluster.price_per_gpu_hour is None:  # the topology's checks require it with providers
        raise UserError(f"cluster {cluster.name!r} needs price_per_gpu_hour (several providers)")
    return cluster.price_per_gpu_hour


def _provider_spec(topology: Topology, provider: ClusterConfig) -> ProviderSpec:
    alone = _alone(topology, provider)
    inputs, _ = planner_inputs(alone)
    return ProviderSpec(
        name=provider.name,
        cluster=_prefill_spec(inputs.prfaas, num_prfaas_prefill(alone)),
        bandwidth=_constant_link(alone),
        path=model_link_path(alone),
        price_per_gpu_hour=_price_per_gpu_hour(provider),
        gpus_per_instance=inputs.prfaas.gpus_per_instance,
        price_per_gb=alone.link.price_per_gb or 0.0,
    )


def _providers_config(topology: Topology, bandwidth: Sequence[BandwidthStep] | None) -> SimConfig:
    """The `SimConfig` of a topology with several providers."""
    if bandwidth is not None:
        raise UserError("a bandwidth series replaces the one link; several providers have one each")
    target_s = topology.policy.ttft_target_s
    if target_s is None:  # the topology's checks require it with providers
        raise UserError("several providers need [policy] ttft_target_s")
    providers = tuple(_provider_spec(topology, c) for c in topology.providers)
    inputs, num_pd_p = planner_inputs(_alone(topology, topology.providers[0]))
    pd = topology.clusters_of_kind("pd")[0]
    deployment = DeploymentSpec(
        kind=DeploymentKind.PRFAAS,
        prfaas=_prefill_spec(inputs.prfaas, 0),
        pd_prefill=_prefill_spec(inputs.pd, num_pd_p),
        num_decode_instances=len(pd.by_role("decode")),
        max_batch_size=EMULATED_MAX_BATCH_SIZE,
        decode_step=decode_step_of(topology),
        route_config=route_config_of(topology),
        planned_decode=PlannedDecode(inputs.t_decode_step_s, inputs.max_batch_size),
        providers=providers,
        pd_price_per_gpu_hour=_price_per_gpu_hour(pd),
        pd_gpus_per_instance=inputs.pd.gpus_per_instance,
        decode_prefill=decode_prefill_of(topology),
    )
    return _sim_config(topology, deployment, ttft_target_s=topology.model.model_seconds(target_s))


def _block_tokens(topology: Topology) -> int:
    """The prefix cache's block, or the default one when the instances keep no cache."""
    cache = topology.prefix_cache
    return DEFAULT_PREFIX_BLOCK_TOKENS if cache is None else cache.block_tokens


def _prefill_spec(cluster: ClusterSpec, num_instances: int | None = None) -> PrefillClusterSpec:
    count = cluster.num_instances if num_instances is None else num_instances
    label = f"{cluster.gpus_per_instance}x{cluster.hardware.upper()}"
    return PrefillClusterSpec(count, CurveLatency(cluster.t_prefill_s), label)
