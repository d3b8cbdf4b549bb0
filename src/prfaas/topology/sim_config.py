"""A topology as the simulator sees it: the same instances, costs, link, threshold, prefix blocks
and controller, so one scripted workload runs through the live router and through the simulator
alike (the router/simulator parity test), and a user can simulate the deployment they serve.

The costs are the ones the live controller and threshold "auto" use
(`prfaas.topology.derived.planner_inputs`): each cluster's prefill curve (the
topology's `model.prefill_latency` for its hardware, else the cost model of `model.emulate`:
what emulated engines sleep), the case study's T_decode and batch size, S_kv(l) of
`model.emulate`, and the link in model units. Routing starts from the topology's t with the
router's rule knobs (`route_config_of`), with the hysteresis and the long-timescale controller
on when the topology has a `[controller]` table, as in the router.
"""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.plan.inputs import ClusterSpec
from prfaas.sim.config import DeploymentSpec, PrefillClusterSpec, SimConfig
from prfaas.sim.cost import FixedDecodeStep
from prfaas.sim.link import BandwidthStep
from prfaas.sim.presets import CurveLatency, FootprintSize
from prfaas.topology.config import DEFAULT_PREFIX_BLOCK_TOKENS, Topology
from prfaas.topology.derived import (
    model_link_gbps,
    model_link_path,
    num_prfaas_prefill,
    planned_kv_codec,
    planner_inputs,
    route_config_of,
)
from prfaas.types import DeploymentKind

_PREFIX_CACHE_BLOCKS = 1 << 20  # per cluster: the live budget is in bytes; the sim counts blocks


def sim_config_of(
    topology: Topology, bandwidth: Sequence[BandwidthStep] | None = None
) -> SimConfig:
    """The `SimConfig` of `topology`; `bandwidth` overrides its constant `[link]` (steps from
    time 0, in the model's units like the `[link]` rate: `ModelConfig.model_bytes_per_s`).
    Needs a PD cluster, and a PrfaaS cluster unless the deployment is homogeneous, with one
    hardware per cluster, like "auto"."""
    from prfaas.models import load_model_spec

    inputs, num_pd_p = planner_inputs(topology)
    pd = topology.clusters_of_kind("pd")[0]
    footprint = load_model_spec(topology.model.emulate).footprint(
        kv_codec=planned_kv_codec(topology)
    )
    deployment = DeploymentSpec(
        kind=DeploymentKind(topology.policy.deployment),
        prfaas=_prefill_spec(inputs.prfaas, num_prfaas_prefill(topology)),
        pd_prefill=_prefill_spec(inputs.pd, num_pd_p),
        num_decode_instances=len(pd.by_role("decode")),
        max_batch_size=inputs.max_batch_size,
        decode_step=FixedDecodeStep(inputs.t_decode_step_s),
        route_config=route_config_of(topology),
    )
    controller = topology.controller
    return SimConfig(
        deployment=deployment,
        kv_size=FootprintSize(footprint.bytes_per_token, footprint.fixed_bytes_per_request),
        num_kv_layers=load_model_spec(topology.model.emulate).num_layers,
        bandwidth=tuple(bandwidth or (BandwidthStep(0.0, model_link_gbps(topology)),)),
        path=model_link_path(topology),
        link_seed=topology.model.seed,
        block_tokens=_block_tokens(topology),
        prefix_cache_blocks=_PREFIX_CACHE_BLOCKS,
        record_decisions=True,
        controller=controller.config if controller.enabled else None,
        route_hysteresis=controller.enabled,
    )


def _block_tokens(topology: Topology) -> int:
    """The prefix cache's block, or the default one when the instances keep no cache."""
    cache = topology.prefix_cache
    return DEFAULT_PREFIX_BLOCK_TOKENS if cache is None else cache.block_tokens


def _prefill_spec(cluster: ClusterSpec, num_instances: int | None = None) -> PrefillClusterSpec:
    count = cluster.num_instances if num_instances is None else num_instances
    label = f"{cluster.gpus_per_instance}x{cluster.hardware.upper()}"
    return PrefillClusterSpec(count, CurveLatency(cluster.t_prefill_s), label)
