"""What one simulation run is: the deployment (clusters, instances, costs), the link and the knobs.

Plain frozen data plus cheap checks; building the paper's case study from real profiles lives in
`prfaas.sim.presets`. Bad values raise `UserError` (they come from flags or presets).

A deployment has one PrfaaS cluster (`DeploymentSpec.prfaas`, over `SimConfig.bandwidth` and
`SimConfig.path`), or two or more prefill providers (`DeploymentSpec.providers`), each a PrfaaS
cluster with its own link and prices; a long request then goes to the cheapest provider whose
predicted TTFT meets `SimConfig.ttft_target_s` (`prfaas.sim.providers`).

Prefix caching is one LRU block set per cluster (`SimConfig.prefix_cache_blocks`, the presets'),
or each prefill instance's own byte-budgeted pool as a served deployment keeps it
(`SimConfig.prefix_pools`, a topology's): `prfaas.sim.prefix`.

With `SimConfig.transfer_deadline_s`, a decode instance stops waiting for a request's KV at that
deadline, as a live one does, and applies `SimConfig.failure_policy` (`prfaas.sim.deadline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prfaas.errors import UserError
from prfaas.policy.controller import ControllerConfig
from prfaas.policy.providers import LOCAL, MAX_PRICE_USD
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.transfer import LinkPath
from prfaas.prefix_cache.entries import PoolEntrySizes
from prfaas.sim.cost import DecodeStepTime, KVSize, PrefillLatency
from prfaas.sim.link import BandwidthStep
from prfaas.types import FAILURE_POLICIES, RECOMPUTE, DeploymentKind


@dataclass(frozen=True, slots=True)
class PrefillClusterSpec:
    """A group of identical prefill instances."""

    num_instances: int  # instances in the cluster
    latency: PrefillLatency  # T_prefill(l) of one instance
    hardware: str  # label for reports, e.g. "8xH200"

    def __post_init__(self) -> None:
        if self.num_instances < 0:
            raise UserError(f"prefill instance count must be >= 0, got {self.num_instances}")


def check_bandwidth(bandwidth: tuple[BandwidthStep, ...], owner: str = "the link") -> None:
    """A bandwidth series starts at time 0 and never goes below 0 Gbps."""
    if not bandwidth or bandwidth[0].at != 0.0:
        raise UserError(f"{owner} bandwidth series must start at time 0")
    for step in bandwidth:
        if not (math.isfinite(step.gbps) and step.gbps >= 0):
            raise UserError(f"{owner} bandwidth must be >= 0 Gbps, got {step.gbps}")


def _check_price(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= MAX_PRICE_USD):
        raise UserError(f"{owner}: {name} must be in [0, {MAX_PRICE_USD:g}] USD, got {value}")


def _check_gpus(owner: str, num_gpus: int) -> None:
    if num_gpus < 1:
        raise UserError(f"{owner}: GPUs per instance must be >= 1, got {num_gpus}")


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One prefill provider: a PrfaaS cluster with its own link to the local PD cluster and its
    prices (`prfaas.policy.providers`)."""

    name: str  # the provider (its cluster's name); the name in reports and route reasons
    cluster: PrefillClusterSpec  # its prefill instances
    bandwidth: tuple[BandwidthStep, ...]  # its link's wire capacity over time
    path: LinkPath = field(default_factory=LinkPath)  # its link's RTT, jitter, loss, efficiency
    price_per_gpu_hour: float = 0.0  # USD per GPU-hour of its prefill instances
    gpus_per_instance: int = 1  # GPUs one of its prefill instances occupies
    price_per_gb: float = 0.0  # USD per GB (1e9 payload bytes) its link carries; 0: unmetered

    def __post_init__(self) -> None:
        owner = f"provider {self.name!r}"
        if not self.name or self.name == LOCAL:
            raise UserError(f"a provider needs a name other than {LOCAL!r}, got {self.name!r}")
        if self.cluster.num_instances < 1:
            raise UserError(f"{owner} needs at least one prefill instance")
        check_bandwidth(self.bandwidth, f"{owner}'s link")
        _check_price(owner, "price_per_gpu_hour", self.price_per_gpu_hour)
        _check_price(owner, "price_per_gb", self.price_per_gb)
        _check_gpus(owner, self.gpus_per_instance)


@dataclass(frozen=True, slots=True)
class PlannedDecode:
    """The decode figures the long-timescale controller plans with, where they are not the decode
    instances' own: a topology's controller, live and simulated, plans with the planner's."""

    t_decode_step_s: float  # T_decode per step at BS_max, seconds
    max_batch_size: int  # BS_max

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t_decode_step_s) and self.t_decode_step_s > 0):
            raise UserError(f"planned decode step must be > 0 s, got {self.t_decode_step_s}")
        if self.max_batch_size < 1:
            raise UserError(f"planned max batch size must be >= 1, got {self.max_batch_size}")


@dataclass(frozen=True, slots=True)
class PrefixPoolSpec:
    """Prefix caching as a served deployment does it: every prefill instance keeps its own pool
    of `budget_bytes` (`prfaas.sim.prefix.InstancePools`)."""

    budget_bytes: int  # per prefill instance, the topology's `[prefix_cache] budget_bytes`
    sizes: PoolEntrySizes  # the model's bytes per cached block and per state checkpoint
    # clusters (RouteTarget values) whose prefill instances have a KV receiver, where a moved
    # prefix lands; a move to any other is skipped and the target computes the prefix
    receivers: frozenset[str] = frozenset({"prfaas", "pd_prefill"})
    # bytes an instance reserves in its pool per real byte of KV it sends, until the transfer
    # ends: an emulated engine reserves its payload, `model.payload_scale` x the real bytes
    reserved_share: float = 1.0

    def __post_init__(self) -> None:
        if self.budget_bytes < 0:
            raise UserError(f"prefix pool budget must be >= 0 bytes, got {self.budget_bytes}")
        if not 0 <= self.reserved_share <= 1:
            raise UserError(f"reserved share must be in [0, 1], got {self.reserved_share}")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One of the paper's three deployments, with instance counts and per-instance costs."""

    kind: DeploymentKind  # which deployment; also selects the routing policy
    prfaas: PrefillClusterSpec  # remote prefill cluster (0 instances when absent)
    pd_prefill: PrefillClusterSpec  # PD-P instances of the local cluster (0 when absent)
    num_decode_instances: int  # PD-D instances
    max_batch_size: int  # BS_max per decode instance
    decode_step: DecodeStepTime  # T_decode(batch size, context)
    route_config: RoutePolicyConfig | None = None  # threshold t and link rules (PrfaaS-PD only)
    # Two or more prefill providers in place of `prfaas` (which then has 0 instances); () : none
    providers: tuple[ProviderSpec, ...] = ()
    pd_price_per_gpu_hour: float = 0.0  # USD per GPU-hour of a PD-P instance (with providers)
    pd_gpus_per_instance: int = 1  # GPUs one PD-P instance occupies (with providers)
    # what the controller plans with; None: `decode_step` at `max_batch_size`
    planned_decode: PlannedDecode | None = None
    # T_prefill(l) of a decode instance prefilling a request itself (its KV lost); None: the
    # PD-P instances' (`pd_prefill.latency`), the same hardware in the paper's PD cluster
    decode_prefill: PrefillLatency | None = None

    @property
    def decode_prefill_latency(self) -> PrefillLatency:
        """A decode instance's own prefill latency (`decode_prefill`, else PD-P's)."""
        return self.pd_prefill.latency if self.decode_prefill is None else self.decode_prefill

    def __post_init__(self) -> None:
        if self.num_decode_instances < 1:
            raise UserError(f"need at least one decode instance, got {self.num_decode_instances}")
        if self.max_batch_size < 1:
            raise UserError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.providers:
            self._check_providers()
        elif self.kind is not DeploymentKind.HOMOGENEOUS and self.prfaas.num_instances < 1:
            raise UserError(f"a {self.kind} deployment needs at least one PrfaaS instance")
        if self.kind is not DeploymentKind.NAIVE and self.pd_prefill.num_instances < 1:
            raise UserError(f"a {self.kind} deployment needs at least one PD-P instance")
        if self.kind is DeploymentKind.PRFAAS and self.route_config is None:
            raise UserError("a PrfaaS deployment needs a routing threshold")

    def _check_providers(self) -> None:
        names = [p.name for p in self.providers]
        if len(names) < 2:
            raise UserError(
                "several providers means two or more; give one PrfaaS cluster as `prfaas`"
            )
        if len(set(names)) != len(names):
            raise UserError(f"provider names must be distinct, got {', '.join(names)}")
        if self.kind is not DeploymentKind.PRFAAS:
            raise UserError(f"several providers need a PrfaaS-PD deployment, not {self.kind}")
        if self.prfaas.num_instances != 0:
            raise UserError(
                "with several providers the PrfaaS instances are the providers': "
                "give `prfaas` 0 instances"
            )
        _check_price("local", "pd_price_per_gpu_hour", self.pd_price_per_gpu_hour)
        _check_gpus("local", self.pd_gpus_per_instance)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything but the workload: deployment, link, model sizes and run knobs."""

    deployment: DeploymentSpec
    kv_size: KVSize  # S_kv(l), bytes including fixed per-request state
    num_kv_layers: int  # layers whose KV streams layer by layer; the last one's share waits
    # Inter-cluster link capacity over time (the wire's) and its path; with several providers
    # each has its own link and these stay unset.
    bandwidth: tuple[BandwidthStep, ...] = ()
    path: LinkPath = field(default_factory=LinkPath)  # RTT, jitter, loss, payload efficiency
    link_seed: int = 0  # seeds the run's own RNG for per-transfer jitter
    chunk_tokens: int | None = None  # prefill token budget per step; None: one request per step
    slo_ttft_s: float = 10.0  # goodput: time to first token at most this, seconds
    slo_tpot_s: float = 0.030  # goodput: time per output token at most this, seconds
    drain_s: float = 600.0  # simulate this long after the last arrival, then report unfinished
    prefix_cache_blocks: int = 100_000  # prefix index capacity per cluster, blocks
    block_tokens: int = 512  # tokens per prefix block (Mooncake traces use 512)
    prefix_pools: PrefixPoolSpec | None = None  # per-instance pools in place of the cluster sets
    egress_bin_s: float = 60.0  # width of the egress-utilization time series bins, seconds
    link_window_s: float = 1.0  # the router sees egress utilization averaged over this window
    record_decisions: bool = False  # keep every routing decision with its inputs (decision_log)
    # Adaptive control (PrfaaS-PD only): the long-timescale controller ticking every period, and
    # the routing rules' hysteresis (a RouteState kept across requests). None / False: static.
    controller: ControllerConfig | None = None
    route_hysteresis: bool = False
    # Without a controller: record the same time series (t, N_p, N_d, throughput, link) this often
    series_period_s: float | None = None
    ttft_target_s: float | None = None  # with several providers: the TTFT a provider must meet
    # A decode instance waits this long for a request's KV from the dispatch of its decode job,
    # then applies `failure_policy` (`prfaas.sim.deadline`); None: it waits as long as it takes
    transfer_deadline_s: float | None = None
    failure_policy: str = RECOMPUTE  # "recompute": prefill on the decode instance; "fail": end

    @property
    def has_providers(self) -> bool:
        """Several prefill providers, each with its own link (`DeploymentSpec.providers`)."""
        return bool(self.deployment.providers)

    @property
    def tick_period_s(self) -> float | None:
        """Period of the ControllerTick events: the controller's, else `series_period_s`."""
        return self.controller.period_s if self.controller is not None else self.series_period_s

    def __post_init__(self) -> None:
        if self.has_providers:
            self._check_providers()
        else:
            check_bandwidth(self.bandwidth)
            if self.ttft_target_s is not None:
                raise UserError("a TTFT target chooses between several providers; there are none")
        pools = self.prefix_pools
        if pools is not None and pools.sizes.block_tokens != self.block_tokens:
            raise UserError(
                f"prefix pools of {pools.sizes.block_tokens}-token blocks, but the requests' "
                f"block hashes are of {self.block_tokens} tokens"
            )
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise UserError(f"chunk size must be >= 1 token, got {self.chunk_tokens}")
        if self.num_kv_layers < 1:
            raise UserError(f"num_kv_layers must be >= 1, got {self.num_kv_layers}")
        for name in ("slo_ttft_s", "slo_tpot_s", "egress_bin_s", "link_window_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        deadline_s = self.transfer_deadline_s
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise UserError(f"transfer_deadline_s must be > 0 s, got {deadline_s}")
        if self.failure_policy not in FAILURE_POLICIES:
            choices = " or ".join(FAILURE_POLICIES)
            raise UserError(f"failure policy must be {choices}, got {self.failure_policy!r}")
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

    def _check_providers(self) -> None:
        """What several providers need, and what the simulator does not do with them."""
        target = self.ttft_target_s
        if target is None or not (math.isfinite(target) and target > 0):
            raise UserError(f"several providers need a TTFT target > 0 s, got {target}")
        if self.bandwidth or self.path != LinkPath():
            raise UserError(
                "with several providers each link is the provider's: leave "
                "`bandwidth` and `path` unset"
            )
        unsupported = {
            "the adaptive controller": self.controller is not None,
            "routing hysteresis": self.route_hysteresis,
            "a controller time series": self.series_period_s is not None,
        }
        for what, is_set in unsupported.items():
            if is_set:
                raise UserError(f"{what} is not simulated with several providers")


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of the workload, as the simulator replays it."""

    arrived_at: float  # arrival time, seconds of simulated time
    num_prompt_tokens: int  # prompt length, tokens
    num_output_tokens: int  # tokens to generate (the first comes from prefill)
    block_hashes: tuple[int, ...] = ()  # prefix-block hashes; empty: no prefix information
