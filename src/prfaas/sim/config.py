"""What one simulation run is: the deployment (clusters, instances, costs), the link and the knobs.

Plain frozen data plus cheap checks; building the paper's case study from real profiles lives in
`prfaas.sim.presets`. Bad values raise `UserError` (they come from flags or presets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prfaas.errors import UserError
from prfaas.policy.controller import ControllerConfig
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.transfer import LinkPath
from prfaas.sim.cost import DecodeStepTime, KVSize, PrefillLatency
from prfaas.sim.link import BandwidthStep
from prfaas.types import DeploymentKind


@dataclass(frozen=True, slots=True)
class PrefillClusterSpec:
    """A group of identical prefill instances."""

    num_instances: int  # instances in the cluster
    latency: PrefillLatency  # T_prefill(l) of one instance
    hardware: str  # label for reports, e.g. "8xH200"

    def __post_init__(self) -> None:
        if self.num_instances < 0:
            raise UserError(f"prefill instance count must be >= 0, got {self.num_instances}")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One of the paper's three deployments, with instance counts and per-instance costs."""

    kind: DeploymentKind  # which deployment; also selects the routing policy
    prfaas: PrefillClusterSpec  # remote prefill cluster (0 instances when absent)
    pd_prefill: PrefillClusterSpec  # PD-P instances of the local cluster (0 when absent)
    num_decode_instances: int  # PD-D instances
    max_batch_size: int  # BS_max per decode instance
    decode_step: DecodeStepTime  # T_decode(batch size)
    route_config: RoutePolicyConfig | None = None  # threshold t and link rules (PrfaaS-PD only)

    def __post_init__(self) -> None:
        if self.num_decode_instances < 1:
            raise UserError(f"need at least one decode instance, got {self.num_decode_instances}")
        if self.max_batch_size < 1:
            raise UserError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.kind is not DeploymentKind.HOMOGENEOUS and self.prfaas.num_instances < 1:
            raise UserError(f"a {self.kind} deployment needs at least one PrfaaS instance")
        if self.kind is not DeploymentKind.NAIVE and self.pd_prefill.num_instances < 1:
            raise UserError(f"a {self.kind} deployment needs at least one PD-P instance")
        if self.kind is DeploymentKind.PRFAAS and self.route_config is None:
            raise UserError("a PrfaaS deployment needs a routing threshold")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything but the workload: deployment, link, model sizes and run knobs."""

    deployment: DeploymentSpec
    kv_size: KVSize  # S_kv(l), bytes including fixed per-request state
    num_kv_layers: int  # layers whose KV streams layer by layer; the last one's share waits
    bandwidth: tuple[BandwidthStep, ...]  # inter-cluster link capacity over time (the wire's)
    path: LinkPath = field(default_factory=LinkPath)  # RTT, jitter, loss, payload efficiency
    link_seed: int = 0  # seeds the run's own RNG for per-transfer jitter
    chunk_tokens: int | None = None  # prefill token budget per step; None: one request per step
    slo_ttft_s: float = 10.0  # goodput: time to first token at most this, seconds
    slo_tpot_s: float = 0.030  # goodput: time per output token at most this, seconds
    drain_s: float = 600.0  # simulate this long after the last arrival, then report unfinished
    prefix_cache_blocks: int = 100_000  # prefix index capacity per cluster, blocks
    block_tokens: int = 512  # tokens per prefix block (Mooncake traces use 512)
    egress_bin_s: float = 60.0  # width of the egress-utilization time series bins, seconds
    link_window_s: float = 1.0  # the router sees egress utilization averaged over this window
    record_decisions: bool = False  # keep every routing decision with its inputs (decision_log)
    # Adaptive control (PrfaaS-PD only): the long-timescale controller ticking every period, and
    # the routing rules' hysteresis (a RouteState kept across requests). None / False: static.
    controller: ControllerConfig | None = None
    route_hysteresis: bool = False
    # Without a controller: record the same time series (t, N_p, N_d, throughput, link) this often
    series_period_s: float | None = None

    @property
    def tick_period_s(self) -> float | None:
        """Period of the ControllerTick events: the controller's, else `series_period_s`."""
        return self.controller.period_s if self.controller is not None else self.series_period_s

    def __post_init__(self) -> None:
        if not self.bandwidth or self.bandwidth[0].at != 0.0:
            raise UserError("the link bandwidth series must start at time 0")
        for step in self.bandwidth:
            if not (math.isfinite(step.gbps) and step.gbps >= 0):
                raise UserError(f"link bandwidth must be >= 0 Gbps, got {step.gbps}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise UserError(f"chunk size must be >= 1 token, got {self.chunk_tokens}")
        if self.num_kv_layers < 1:
            raise UserError(f"num_kv_layers must be >= 1, got {self.num_kv_layers}")
        for name in ("slo_ttft_s", "slo_tpot_s", "egress_bin_s", "link_window_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.drain_s < 0:
            raise UserError(f"drain_s must be >= 0, got {self.drain_s}")
        if self.series_period_s is not None and not (
            math.isfinite(self.series_period_s) and self.series_period_s > 0
        ):
            raise UserError(f"series_period_s must be > 0, got {self.series_period_s}")
        is_prfaas = self.deployment.kind is DeploymentKind.PRFAAS
        if (self.controller is not None or self.route_hysteresis) and not is_prfaas:
            kind = self.deployment.kind
            raise UserError(f"the adaptive controller needs a PrfaaS-PD deployment, not {kind}")


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of the workload, as the simulator replays it."""

    arrived_at: float  # arrival time, seconds of simulated time
    num_prompt_tokens: int  # prompt length, tokens
    num_output_tokens: int  # tokens to generate (the first comes from prefill)
    block_hashes: tuple[int, ...] = ()  # prefix-block hashes; empty: no prefix information
