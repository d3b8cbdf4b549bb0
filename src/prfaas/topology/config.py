"""The topology file (TOML): one model, the router, clusters and their instances, the link, the
policy and transport security. `load_topology(path)` parses and validates it into frozen
dataclasses; every problem is reported as one `UserError` line naming the key at fault
(`prfaas.topology.schema`), and threshold "auto" is resolved by the planner's Eq. 7
(`prfaas.topology.derived`). Loading imports no torch.

Schema (documented for users in docs/serving.md, examples under examples/):

```toml
[model]
name = "qwen3_next"          # tiny preset name, or a local Hugging Face checkpoint directory
dtype = "fp32"               # fp32 | bf16
seed = 0                     # weights seed of tiny presets
emulate = "paper-1t"         # prfaas.models preset sized/timed by engine = "emulated" instances
time_scale = 1.0             # emulated engines sleep time_scale x the predicted durations
payload_scale = 1.0          # emulated engines export payload_scale x the real KV bytes (0, 1]
# optional: one prefill instance's latency per hardware, instead of the cost model's
prefill_latency = { h20 = "quadratic:0.469,1.300e-4,2.945e-10", h200 = "profile:paper-1t-h200" }

[router]                     # optional
http = "127.0.0.1:8000"
api_keys = ["sk-..."]        # optional: required `Authorization: Bearer` keys
# api_keys_file = "keys.txt" # or: one key per line (blank lines and # comments ignored)
max_body_bytes = 4194304
max_concurrent_per_key = 256 # requests in flight per API key; more get 429

[link]                       # optional
gbps = 100                   # nominal inter-cluster link, PrfaaS -> PD (the wire's rate)
rtt_ms = 0                   # round-trip time (prfaas.policy.transfer: ACK, handshake, slow start)
jitter_ms = 0                # extra RTT drawn per transfer in the simulator
jitter_distribution = "normal"  # normal |N(0, jitter)|, pareto (Lomax, mean jitter), uniform
loss_pct = 0                 # packet loss, [0, 100): caps each transfer at its Mathis bound
payload_efficiency = 1.0     # KV payload bytes per wire byte, (0, 1]; about 0.9 on the testbed
mss_bytes = 1448             # TCP segment size on the path (1500-byte MTU; 8948 for jumbo frames)
price_per_gb = 0.02          # optional: USD per wire GB of a metered link

[policy]
threshold = 64               # tokens, or "auto" (Eq. 7 over the planner's inputs)
failure = "recompute"        # recompute | fail
transfer_deadline_s = 30
deployment = "prfaas"        # prfaas | homogeneous | naive
drain_s = 30                 # after SIGTERM every service finishes in-flight requests this long
ttft_target_s = 5            # optional; required with several prfaas clusters (providers):
                             # each long request goes to the cheapest one whose predicted TTFT
                             # meets it (prfaas.policy.providers), else to local prefill

[prefix_cache]               # optional; present = every instance keeps a hybrid prefix cache
block_tokens = 64            # tokens per cached block (hashes chain block by block)
budget_bytes = 268435456     # bytes of cached KV and state per instance (LRU beyond it)

[controller]                 # optional; present = the long-timescale loop runs in the router
period_s = 30                # tick period (re-search t, maybe convert one PD instance)
window_s = 300               # sliding window of incremental lengths
driven = false               # true: no timer; ticks come from POST /internal/control/tick
# also: min_samples, persistence_ticks, threshold_persistence_ticks, cooldown_s,
# min_role_gain, threshold_min_gain, link_change_share, link_hold_s
# (prfaas.policy.ControllerConfig)

[transport]
token = "..."                # or token_file, or tls_cert + tls_key + tls_ca (or both kinds)
num_connections = 2          # TCP connections per KV destination
receive_pool_bytes = 8589934592  # KV receiver's buffer budget; a fuller pool holds senders back
congestion_control = "cubic" # optional: KV senders' TCP congestion control (default: kernel's)

[[clusters]]
name = "prfaas"
kind = "prfaas"              # prfaas | pd
price_per_gpu_hour = 4.5     # optional (required on every cluster with several providers)
  [clusters.link]            # optional, prfaas clusters of a topology with several only: this
  gbps = 25                  # provider's link to the PD cluster, the keys of [link] (absent:
                             # [link] applies)
  [[clusters.instances]]
  name = "prfaas-p0"
  role = "prefill"           # prefill | decode
  http = "127.0.0.1:8101"
  kv = "127.0.0.1:8102"      # KV receiver: required on decode instances; optional on prefill
                             # ones, where it receives prefixes moved from the other cluster
                             # (PD prefill: also makes it convertible, needed with [controller];
                             # PrfaaS prefill: moved prefixes only)
  kv_listen = "0.0.0.0:8102" # optional, only with kv: where the KV receiver binds when the
                             # others reach it at kv through NAT or a proxy (default: kv)
  engine = "torch"           # torch | emulated | vllm (a running `vllm serve` at http)
  hardware = "h200"          # hardware preset, timing of the emulated engine
  num_gpus = 8
```

Relative paths (checkpoint directory, token_file, TLS files, api_keys_file, a prefill_latency
profile file) resolve against the topology file's directory and are stored absolute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from prfaas.policy.controller import ControllerConfig
from prfaas.policy.transfer import DEFAULT_MSS_BYTES, LinkPath, link_path_of
from prfaas.prefix_cache.config import PrefixCacheConfig as PrefixCacheConfig
from prfaas.types import FAILURE_POLICIES as FAILURE_POLICIES
from prfaas.types import DeploymentKind

DTYPES = ("fp32", "bf16")
ENGINES = ("torch", "emulated", "vllm")
ROLES = ("prefill", "decode")
CLUSTER_KINDS = ("prfaas", "pd")
# `[prefix_cache]` keys a file leaves out
DEFAULT_PREFIX_BLOCK_TOKENS = 64  # tokens per block; fixed-size states checkpointed at multiples
DEFAULT_PREFIX_BUDGET_BYTES = 256 << 20  # cached KV + state per instance, evicted LRU beyond it


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str  # tiny preset name or checkpoint directory
    dtype: str = "fp32"
    seed: int = 0
    emulate: str = "paper-1t"  # prfaas.models preset used by emulated engines
    time_scale: float = 1.0  # emulated engines sleep this times the predicted durations (0: none)
    payload_scale: float = 1.0  # emulated engines export this times the real KV bytes, in (0, 1]
    # (hardware, latency spec) pairs, sorted: one prefill instance of that hardware takes
    # "quadratic:a,b,c" or "profile:NAME|PATH" seconds instead of the cost model's prediction
    prefill_latency: tuple[tuple[str, str], ...] = ()

    def prefill_latency_spec(self, hardware: str) -> str | None:
        """The latency spec of one prefill instance of `hardware` (lower case, as instances
        name it), or None when the cost model times it."""
        return dict(self.prefill_latency).get(hardware.strip().lower())

    @property
    def served_name(self) -> str:
        """The model id in the OpenAI API: the preset name or the directory's base name."""
        return Path(self.name).name if "/" in self.name else self.name

    def model_bytes_per_s(self, wire_bytes_per_s: float) -> float:
        """A link's rate in the model's units: real (unscaled) KV bytes per modelled second.

        Emulated engines send `payload_scale` x the real bytes and run `time_scale` x faster
        than modelled, so a wire moving B bytes per second carries B x time_scale /
        payload_scale real bytes per modelled second. With time_scale 0 (no sleeping) there is
        no modelled time to convert to: the wire rate is returned as it is."""
        if self.time_scale <= 0:
            return wire_bytes_per_s
        return wire_bytes_per_s * self.time_scale / self.payload_scale

    def model_seconds(self, wall_s: float) -> float:
        """A wall-clock duration (an RTT) in modelled seconds: wall / time_scale (as it is with
        time_scale 0)."""
        return wall_s if self.time_scale <= 0 else wall_s / self.time_scale

    def wall_seconds(self, model_s: float) -> float:
        """The inverse of `model_seconds`: a modelled duration as the emulation's wall seconds."""
        return model_s if self.time_scale <= 0 else model_s * self.time_scale


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    name: str  # unique in the topology, e.g. "prfaas-p0"
    cluster: str  # name of its cluster
    role: str  # "prefill" | "decode"
    http: str  # "host:port" of its HTTP API
    # "host:port" of its KV receiver: required on decode instances; a prefill instance with one
    # receives moved prefixes (and a PD one may change role under [controller])
    kv: str | None = None
    kv_listen: str | None = None  # "host:port" the receiver binds when not kv (NAT, a proxy)
    engine: str = "torch"  # "torch" | "emulated" | "vllm" (a `vllm serve` with the connector)
    hardware: str = "h200"  # hardware preset timing the emulated engine
    num_gpus: int = 8

    @property
    def kv_bind_address(self) -> str | None:
        """Where this instance's KV receiver binds: `kv_listen`, else `kv` (None: no receiver)."""
        return self.kv_listen or self.kv


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    kind: str  # "prfaas" | "pd"
    instances: tuple[InstanceConfig, ...]
    price_per_gpu_hour: float | None = None  # USD per GPU-hour of its hardware; None: not given
    # a prfaas cluster's own link to the PD cluster (`[clusters.link]`); None: `[link]` applies
    link: LinkConfig | None = None

    def by_role(self, role: str) -> tuple[InstanceConfig, ...]:
        return tuple(i for i in self.instances if i.role == role)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    http: str = "127.0.0.1:8000"
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no authentication
    max_body_bytes: int = 4 << 20
    max_concurrent_per_key: int = 256  # requests in flight per API key (429 beyond)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    gbps: float = 100.0  # nominal PrfaaS -> PD link
    rtt_ms: float = 0.0  # round-trip time, ms
    jitter_ms: float = 0.0  # scale of the extra RTT drawn per transfer, ms
    jitter_distribution: str = "normal"  # prfaas.policy.transfer.JITTER_DISTRIBUTIONS
    loss_pct: float = 0.0  # packet loss, percent in [0, 100)
    payload_efficiency: float = 1.0  # KV payload bytes per wire byte, (0, 1]
    mss_bytes: int = DEFAULT_MSS_BYTES  # TCP maximum segment size on the path, wire bytes
    price_per_gb: float | None = (
        None  # USD per wire GB (1e9 bytes) of a metered link; None: not given
    )

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    threshold_tokens: float  # resolved t ("auto" is resolved at load time)
    threshold_source: str = "fixed"  # "fixed" | "auto: <how it was computed>"
    failure: str = "recompute"
    transfer_deadline_s: float = 30.0
    deployment: str = "prfaas"  # prfaas | homogeneous | naive (prfaas.types.DeploymentKind)
    drain_s: float = 30.0  # after SIGTERM a service finishes in-flight requests this long
    # the TTFT a long request's provider must be predicted to meet (several providers); None: none
    ttft_target_s: float | None = None


def threshold_of(deployment: str, tokens: float | None = None) -> tuple[float, str]:
    """(t, how it was chosen): `tokens` as given, or for None what a deployment whose file gives
    no threshold implies: homogeneous keeps every prefill local (t = inf), naive offloads every
    one (t = 0); prfaas needs one (the schema refuses a file without)."""
    if tokens is not None:
        return tokens, "fixed"
    implied = math.inf if deployment == DeploymentKind.HOMOGENEOUS else 0.0
    return implied, f"implied by deployment {deployment!r}"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """The router's long-timescale loop (off unless the file has a `[controller]` table).

    `config` holds the pure controller's knobs; `driven` replaces the router's timer by ticks
    that an operator or a test sends (`POST /internal/control/tick`, with the tick's time)."""

    enabled: bool = False
    config: ControllerConfig = field(default_factory=ControllerConfig)
    driven: bool = False


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    token: str | None = field(default=None, repr=False)  # shared transport token (secret)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    num_connections: int = 2  # TCP connections per KV destination
    receive_pool_bytes: int = 8 << 30  # a KV receiver's buffer budget, in use + idle
    congestion_control: str | None = None  # senders' TCP congestion control (None: kernel's)
    # KV codec of offloaded requests' attention K/V (`prfaas.models.kv_codec`), or "auto"
    compression: str = "none"


@dataclass(frozen=True, slots=True)
class Topology:
    model: ModelConfig
    clusters: tuple[ClusterConfig, ...]
    policy: PolicyConfig
    router: RouterConfig = field(default_factory=RouterConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    transport: SecurityConfig = field(default_factory=SecurityConfig)
    prefix_cache: PrefixCacheConfig | None = None  # None: no `[prefix_cache]`, nothing cached
    controller: ControllerSettings = field(default_factory=ControllerSettings)

    @property
    def instances(self) -> tuple[InstanceConfig, ...]:
        return tuple(i for c in self.clusters for i in c.instances)

    def instance(self, name: str) -> InstanceConfig:
        """The instance called `name`; UserError naming the known ones otherwise."""
        for inst in self.instances:
            if inst.name == name:
                return inst
        from prfaas.errors import UserError

        known = ", ".join(i.name for i in self.instances)
        raise UserError(f"no instance {name!r} in the topology; known: {known}")

    @property
    def link_path(self) -> LinkPath:
        """The `[link]`'s latency, jitter, loss and efficiency, over `[transport]`'s connections."""
        return link_path_of(self.link, self.transport.num_connections, self.link.mss_bytes)

    def clusters_of_kind(self, kind: str) -> tuple[ClusterConfig, ...]:
        return tuple(c for c in self.clusters if c.kind == kind)

    @property
    def providers(self) -> tuple[ClusterConfig, ...]:
        """The prefill providers: the prfaas clusters, in file order."""
        return self.clusters_of_kind("prfaas")

    def link_of(self, cluster_name: str) -> LinkConfig:
        """The link from cluster `cluster_name` to the PD cluster: its own `[clusters.link]`,
        else the topology's `[link]`; KeyError for a name no cluster has."""
        for cluster in self.clusters:
            if cluster.name == cluster_name:
                return cluster.link or self.link
        raise KeyError(f"no cluster {cluster_name!r} in the topology")

    def link_path_of(self, cluster_name: str) -> LinkPath:
        """`link_path` of the link from cluster `cluster_name` (`link_of`)."""
        link = self.link_of(cluster_name)
        return link_path_of(link, self.transport.num_connections, link.mss_bytes)

    def is_convertible(self, instance: InstanceConfig) -> bool:
        """Whether `instance` may change role: a PD instance under the `[controller]`."""
        if not self.controller.enabled:
            return False
        return any(c.kind == "pd" and instance in c.instances for c in self.clusters)
