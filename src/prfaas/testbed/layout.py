"""The two-datacenter testbed's plan, as pure functions: names, addresses, scaling, topology.

A testbed is four network namespaces, `<name>-prfaas` (the PrfaaS cluster), `<name>-pd` (the
local PD cluster and the router), `<name>-client` and `<name>-wan`: the "WAN" PrfaaS <-> PD runs
through the WAN namespace (a veth to each cluster, its delay line's TUN device between them)
and is shaped by `tc tbf` on the PrfaaS side (PrfaaS -> PD egress is what the paper's link
limits); client <-> PD is one unshaped veth pair. Instances of one cluster share their namespace, so
intra-cluster traffic is that namespace's loopback: the faster intra-cluster link.

Scaling keeps every ratio of the paper's case study on a small machine: emulated engines sleep
`time_scale` (s) x the cost model's durations and export `payload_scale` (p) x the model's real
KV bytes, and the wire rate is `nominal_gbps x p / s`. A transfer then takes
`p x S / (R x p / s) = s x S / R`, the paper's time scaled like compute. The topology's
`[link] gbps` is that wire rate (what the router's link view must match); the threshold is
resolved on the nominal, unscaled deployment.

Prefill latency is the cost model's unless the spec gives a curve per hardware
(`prefill_latency`, the topology's `[model] prefill_latency`); `PAPER_CURVES` are the two the
paper's Table 6 implies (H20) and publishes (H200).

The deployment is one of the paper's three: `prfaas` (threshold routing between the clusters,
optionally adapted by the router's long-timescale `[controller]`), `homogeneous` (every prefill on
the PD cluster; with no PrfaaS instance the topology has no PrfaaS cluster, and the PrfaaS
namespace stays empty) or `naive` (every prefill on PrfaaS).

The I/O (namespaces, processes, state) is `prfaas.testbed.run`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from prfaas import topology as topo
from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.policy.controller import ControllerConfig
from prfaas.policy.transfer import TCP_IP_HEADER_BYTES
from prfaas.testbed.delay_schedule import DelaySettings
from prfaas.testbed.netns import VethEnd
from prfaas.topology.derived import model_mss_bytes
from prfaas.types import DeploymentKind

DEFAULT_NAME = "prfaas-tb"
DEFAULT_STATE_ROOT = Path("/run/prfaas-testbed")
ENGINES = ("emulated", "torch", "vllm")  # vllm: vLLM servers with the PrfaaS connector
DEPLOYMENTS = tuple(k.value for k in DeploymentKind)
PAPER_LINK_GBPS = 100.0  # the case study's inter-datacenter link
TORCH_LINK_GBPS = 1.0  # the tiny torch model's default link: its payloads are KB, not GB
MIN_WIRE_GBPS = 1e-4  # 100 kbit/s: below it a request's KV takes minutes
MAX_WIRE_GBPS = 400.0
# every WAN packet crosses the delay line, a Python process: on the project's 2-core machine
# the WAN kept goodput at the rate and the round trip at 2 x delay up to 2 Gbit/s (but for single
# stalls of the loaded machine), fell short at 4 in most runs and carried about 4 at most
# (docs/testbed.md, "Delay, jitter and loss")
MAX_DELAY_LINE_GBPS = 2.0
MAX_INSTANCES = 16  # per role: every instance is a process on this machine
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,19}$")  # "<name>-prfaas" stays a short path
MAX_WAN_MTU_BYTES = 64_000  # large, so that the delay line handles few packets per second
_MIN_WAN_MTU_BYTES = 1500  # Ethernet's
_PACKET_S = 0.0005  # the WAN's MTU: at most this long on the wire at the testbed's rate
_MIN_BURST_BYTES = 64 << 10  # the bucket must hold one whole WAN packet (tbf drops larger ones)
_BURST_S = 0.002  # the bucket holds 2 ms of the rate: shaping stays tight for small payloads
_WAN_SUBNET = "10.201.1"
_CLIENT_SUBNET = "10.201.2"
_WAN_ROUTER_SUBNET = "10.201.3"
DELAY_TUN = "delay"  # the WAN namespace's TUN device, read and written by the delay line
_ROUTER_PORT = 8000
_PORT_BASE = {
    "prfaas-prefill": 9100,
    "pd-prefill": 9200,
    "pd-decode": 9300,
    "kv": 9400,  # decode instances' KV receivers
    "pd-prefill-kv": 9500,  # PD prefill instances' (with a controller: they may become decode)
}
_PD_HOST = "127.0.0.1"  # PD instances talk to the router over the PD namespace's loopback
PREFILL_HARDWARE = ("h200", "h20")  # the PrfaaS cluster's, the PD cluster's
PAPER_CURVES: tuple[tuple[str, str], ...] = (
    ("h20", f"quadratic:{PAPER_CASE_STUDY.pd_latency.as_spec()}"),  # inferred from Table 6
    ("h200", f"profile:{PAPER_CASE_STUDY.prfaas_profile}"),  # the paper's Table 5
)


def check_name(name: str) -> str:
    """A testbed name: lower-case letters, digits and '-', starting with a letter, <= 20."""
    if not _NAME_PATTERN.match(name):
        raise UserError(
            f"testbed name {name!r} must be 1-20 characters of a-z, 0-9 and '-', "
            "starting with a letter"
        )
    return name


@dataclass(frozen=True)
class TestbedScale:
    """One scaling applied to compute time, payload bytes and link rate alike."""

    __test__ = False  # not a pytest test class, despite its name

    nominal_gbps: float = PAPER_LINK_GBPS  # the link being emulated
    time_scale: float = 1.0  # s: emulated compute sleeps s x the predicted durations
    payload_scale: float = 0.01  # p: emulated payloads are p x the real KV bytes

    def __post_init__(self) -> None:
        if not self.nominal_gbps > 0:
            raise UserError(f"the nominal link must be > 0 Gbps, got {self.nominal_gbps:g}")
        if not self.time_scale > 0:
            raise UserError(f"time scale must be > 0, got {self.time_scale:g}")
        if not 0 < self.payload_scale <= 1:
            raise UserError(f"payload scale must be in (0, 1], got {self.payload_scale:g}")
        wire = self.wire_gbps
        if not MIN_WIRE_GBPS <= wire <= MAX_WIRE_GBPS:
            raise UserError(
                f"the wire rate {self.nominal_gbps:g} Gbps x payload {self.payload_scale:g} / "
                f"time {self.time_scale:g} = {wire:g} Gbps is outside "
                f"[{MIN_WIRE_GBPS:g}, {MAX_WIRE_GBPS:g}] Gbps"
            )

    @property
    def wire_gbps(self) -> float:
        """The rate the tbf enforces: nominal x p / s."""
        return wire_gbps(self.nominal_gbps, self.time_scale, self.payload_scale)

    def with_nominal(self, nominal_gbps: float) -> TestbedScale:
        """The same scaling of another nominal link (`prfaas testbed link --gbps`)."""
        return TestbedScale(nominal_gbps, self.time_scale, self.payload_scale)

    def check_delay_line_rate(self) -> TestbedScale:
        """This scaling, if the WAN's delay line can carry its wire rate (else UserError)."""
        if self.wire_gbps > MAX_DELAY_LINE_GBPS:
            raise UserError(
                f"the wire rate {self.nominal_gbps:g} Gbps x payload {self.payload_scale:g} / "
                f"time {self.time_scale:g} = {self.wire_gbps:g} Gbps is above the "
                f"{MAX_DELAY_LINE_GBPS:g} Gbit/s the WAN's delay line carries faithfully"
            )
        return self


def wire_gbps(nominal_gbps: float, time_scale: float, payload_scale: float) -> float:
    """Link rate on the wire such that transfer time scales like compute time."""
    return nominal_gbps * payload_scale / time_scale


def scaled_transfer_s(num_real_bytes: float, scale: TestbedScale) -> float:
    """Seconds a payload of `num_real_bytes` (unscaled) takes on the scaled wire."""
    return num_real_bytes * scale.payload_scale * 8 / (scale.wire_gbps * 1e9)


def wan_mtu_bytes(wire_gbps: float) -> int:
    """The WAN devices' MTU for a wire rate: half a millisecond of the rate, between Ethernet's
    1500 bytes and `MAX_WAN_MTU_BYTES`. Large packets keep the delay line at about 2,000 packets
    a second at any rate it carries; short ones keep each packet's time on a slow (scaled) wire
    small next to the RTT: at 0.02 Gbit/s a 64 KB packet takes 26 ms, which sets off TCP's tail
    loss probes (spurious retransmits, seen by the router as a congested link)."""
    mtu = int(wire_gbps * 1e9 / 8 * _PACKET_S)
    return max(_MIN_WAN_MTU_BYTES, min(MAX_WAN_MTU_BYTES, mtu))


def tbf_burst_bytes(rate_gbps: float) -> int:
    """The token bucket's size: 2 ms of the rate, at least 64 KiB (one WAN packet of
    `MAX_WAN_MTU_BYTES` and its header)."""
    return max(_MIN_BURST_BYTES, int(rate_gbps * 1e9 / 8 * _BURST_S))


@dataclass(frozen=True)
class TestbedLayout:
    """Namespaces, veth ends and addresses of testbed `name` (fixed: each namespace has its own
    addresses and ports, so two testbeds of different names never collide)."""

    __test__ = False  # not a pytest test class, despite its name

    name: str

    @property
    def prfaas_ns(self) -> str:
        return f"{self.name}-prfaas"

    @property
    def pd_ns(self) -> str:
        return f"{self.name}-pd"

    @property
    def client_ns(self) -> str:
        return f"{self.name}-client"

    @property
    def wan_ns(self) -> str:
        """The WAN between the clusters: forwards and, through its TUN, delays every packet."""
        return f"{self.name}-wan"

    @property
    def namespaces(self) -> tuple[str, str, str, str]:
        return (self.prfaas_ns, self.pd_ns, self.client_ns, self.wan_ns)

    @property
    def wan_prfaas(self) -> VethEnd:
        """The shaped end: PrfaaS -> PD egress."""
        return VethEnd(self.prfaas_ns, "wan-pd", f"{_WAN_SUBNET}.1")

    @property
    def wan_pd(self) -> VethEnd:
        return VethEnd(self.pd_ns, "wan-prfaas", f"{_WAN_SUBNET}.2")

    @property
    def wan_hops(self) -> tuple[VethEnd, VethEnd]:
        """The WAN namespace's ends of the veths to PrfaaS and to PD (no address of their own:
        they answer ARP for the far cluster's address, proxy ARP)."""
        return (VethEnd(self.wan_ns, "prfaas", ""), VethEnd(self.wan_ns, "pd", ""))

    @property
    def wan_router_id(self) -> str:
        """The WAN namespace's own address (on its loopback), the source of its ARP requests."""
        return f"{_WAN_ROUTER_SUBNET}.1"

    @property
    def client_pd(self) -> VethEnd:
        """The router's side of the client link."""
        return VethEnd(self.pd_ns, "client", f"{_CLIENT_SUBNET}.1")

    @property
    def client(self) -> VethEnd:
        return VethEnd(self.client_ns, "pd", f"{_CLIENT_SUBNET}.2")

    def router_address(self, port: int = _ROUTER_PORT) -> str:
        return f"{self.client_pd.ip}:{port}"

    def namespace_of_cluster(self, cluster: str) -> str:
        return self.prfaas_ns if cluster == "prfaas" else self.pd_ns


@dataclass(frozen=True)
class TestbedSpec:
    """Everything `prfaas testbed up` decides from its flags."""

    __test__ = False  # not a pytest test class, despite its name

    name: str = DEFAULT_NAME
    engine: str = "emulated"  # emulated | torch | vllm
    model: str = "qwen3_next"  # served name and tokenizer (torch: a tiny preset; vllm: a directory)
    emulate: str = "paper-1t"  # emulated engines' model preset
    scale: TestbedScale = field(default_factory=TestbedScale)
    num_prfaas_prefill: int = 1
    num_pd_prefill: int = 1
    num_pd_decode: int = 1
    deployment: str = DeploymentKind.PRFAAS.value  # prfaas | homogeneous | naive
    threshold: float | str = "auto"  # tokens, or "auto" (prfaas only: the others route by kind)
    controller: bool = False  # the router's adaptive long-timescale controller (prfaas only)
    controller_period_s: float | None = None  # its tick period (None: the controller's default)
    failure: str = "recompute"
    compression: str = "none"  # [transport] compression: the KV codec of offloaded requests
    transfer_deadline_s: float = 60.0
    drain_s: float = 5.0
    router_port: int = _ROUTER_PORT
    delay: DelaySettings = field(default_factory=DelaySettings)  # the WAN's delay line
    delay_seed: int = 0  # its loss and jitter draws
    # (hardware, latency spec) of one prefill instance, replacing the cost model's (emulated)
    prefill_latency: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name)
        self._check_prefill_latency()
        if self.engine not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.deployment not in DEPLOYMENTS:
            raise UserError(
                f"deployment must be one of {', '.join(DEPLOYMENTS)}, got {self.deployment!r}"
            )
        self._check_counts()
        if self.controller and not self.uses_threshold:
            raise UserError(f"the controller adapts a 'prfaas' deployment, not {self.deployment!r}")
        if self.controller_period_s is not None and not self.controller:
            raise UserError("a controller period needs --controller")
        real = self.engine != "emulated"  # a model really runs: nothing is scaled
        if self.uses_threshold and real and self.threshold == "auto":
            raise UserError("threshold 'auto' needs the emulated engine; give a token count")
        if real and (self.scale.time_scale, self.scale.payload_scale) != (1, 1):
            raise UserError("time and payload scaling apply to the emulated engine only")

    def _check_prefill_latency(self) -> None:
        """One spec per testbed hardware, each resolving to a curve, emulated engines only."""
        from prfaas.topology.derived import resolve_prefill_latency

        if self.prefill_latency and self.engine != "emulated":
            raise UserError("a prefill latency curve applies to the emulated engine only")
        names = [hardware for hardware, _ in self.prefill_latency]
        for hardware, spec in self.prefill_latency:
            if hardware not in PREFILL_HARDWARE:
                raise UserError(
                    f"prefill latency for {hardware!r}: the testbed's hardware is "
                    f"{' or '.join(PREFILL_HARDWARE)}"
                )
            if names.count(hardware) > 1:
                raise UserError(f"prefill latency for {hardware!r} is given twice")
            try:
                resolve_prefill_latency(spec)
            except UserError as exc:
                raise UserError(f"prefill latency for {hardware!r}: {exc}") from None

    @property
    def uses_threshold(self) -> bool:
        """Whether the deployment routes by a length threshold (only `prfaas` does)."""
        return self.deployment == DeploymentKind.PRFAAS

    def _check_counts(self) -> None:
        """0..MAX_INSTANCES per role, and the roles the deployment needs: a PrfaaS prefill
        (prfaas, naive) or a PD prefill (homogeneous) instance, and a PD decode one."""
        counts = (self.num_prfaas_prefill, self.num_pd_prefill, self.num_pd_decode)
        got = f"PrfaaS prefill {counts[0]}, PD prefill {counts[1]}, PD decode {counts[2]}"
        if not all(0 <= n <= MAX_INSTANCES for n in counts):
            raise UserError(f"instances per role must be in 0..{MAX_INSTANCES}; got {got}")
        if self.deployment == DeploymentKind.HOMOGENEOUS:
            needs = {"PD prefill": counts[1], "PD decode": counts[2]}
        else:
            needs = {"PrfaaS prefill": counts[0], "PD decode": counts[2]}
        missing = [role for role, n in needs.items() if n < 1]
        if missing:
            raise UserError(
                f"deployment {self.deployment!r} needs at least one {' and one '.join(missing)} "
                f"instance; instances: {got}"
            )


def _instances(spec: TestbedSpec, layout: TestbedLayout) -> list[topo.InstanceConfig]:
    """PrfaaS prefill on the WAN address (the router reaches them over the WAN), PD instances
    on loopback, decode KV receivers on the PD side of the WAN (PrfaaS sends there; PD prefill
    reaches the same address through its own loopback)."""
    wan_prfaas, wan_pd = layout.wan_prfaas.ip, layout.wan_pd.ip
    port = _PORT_BASE
    hardware = dict(zip(("prfaas", "pd"), PREFILL_HARDWARE, strict=True))

    def instance(
        name: str, cluster: str, role: str, http: str, kv: str | None = None
    ) -> topo.InstanceConfig:
        return topo.InstanceConfig(
            name, cluster, role, http, kv=kv, engine=spec.engine, hardware=hardware[cluster]
        )

    out = [
        instance(f"prfaas-prefill-{i}", "prfaas", "prefill",
                 f"{wan_prfaas}:{port['prfaas-prefill'] + i}")
        for i in range(spec.num_prfaas_prefill)
    ]  # fmt: skip
    out += [
        instance(f"pd-prefill-{i}", "pd", "prefill", f"{_PD_HOST}:{port['pd-prefill'] + i}",
                 kv=f"{wan_pd}:{port['pd-prefill-kv'] + i}" if spec.controller else None)
        for i in range(spec.num_pd_prefill)
    ]  # fmt: skip
    out += [
        instance(f"pd-decode-{i}", "pd", "decode", f"{_PD_HOST}:{port['pd-decode'] + i}",
                 kv=f"{wan_pd}:{port['kv'] + i}")
        for i in range(spec.num_pd_decode)
    ]  # fmt: skip
    return out


def _policy(spec: TestbedSpec, threshold_tokens: float | None) -> topo.PolicyConfig:
    """The spec's deployment and, for `prfaas` only, its threshold (the other deployments
    imply theirs: homogeneous keeps every prefill local, naive offloads every one)."""
    if spec.uses_threshold and threshold_tokens is None:
        raise ValueError("a prfaas deployment needs a threshold")
    given = threshold_tokens if spec.uses_threshold else None
    tokens, source = topo.threshold_of(spec.deployment, given)
    return topo.PolicyConfig(
        tokens,
        source,
        failure=spec.failure,
        transfer_deadline_s=spec.transfer_deadline_s,
        deployment=spec.deployment,
        drain_s=spec.drain_s,
    )


def _controller(spec: TestbedSpec) -> topo.ControllerSettings:
    """The controller's defaults, with the spec's tick period if it sets one; off without one."""
    if not spec.controller:
        return topo.ControllerSettings()
    config = ControllerConfig()
    if spec.controller_period_s is not None:
        config = dataclasses.replace(config, period_s=spec.controller_period_s)
    return topo.ControllerSettings(enabled=True, config=config)


# The KV senders' TCP congestion control on the testbed. On the scaled WAN (a 10 Gbps link at
# 20 Mbit/s behind a tbf queue of 50 ms, 125 KB) BBR, this machine's default, kept sending into
# the full queue: a link-drop run retransmitted 40-80% of what it sent, so the link delivered
# well under its rate, which a real deep-buffered link of the nominal rate does not do.
WAN_CONGESTION_CONTROL = "cubic"
_PLACEHOLDER_TOKEN = "placeholder-never-served"


def testbed_topology(
    spec: TestbedSpec, layout: TestbedLayout, threshold_tokens: float | None, link_gbps: float
) -> topo.Topology:
    """The testbed's topology: scaled emulated engines (or tiny torch ones), the router in the PD
    namespace on the client link, `[link] gbps = link_gbps`, the spec's prefill latency curves,
    the spec's deployment (its threshold only for `prfaas`), a `[controller]` when the spec has
    one, and no PrfaaS cluster when it has no PrfaaS instance. Its transport token is a
    placeholder: a testbed's services read theirs from the file `topology_text` names."""
    scaled = spec.engine == "emulated"
    model = topo.ModelConfig(
        spec.model,
        emulate=spec.emulate,
        time_scale=spec.scale.time_scale if scaled else 1.0,
        payload_scale=spec.scale.payload_scale if scaled else 1.0,
        prefill_latency=tuple(sorted(spec.prefill_latency)),
    )
    instances = _instances(spec, layout)
    clusters = tuple(
        topo.ClusterConfig(kind, kind, tuple(i for i in instances if i.cluster == kind))
        for kind in ("prfaas", "pd")
        if any(i.cluster == kind for i in instances)
    )
    return topo.Topology(
        model=model,
        clusters=clusters,
        policy=_policy(spec, threshold_tokens),
        router=topo.RouterConfig(http=layout.router_address(spec.router_port)),
        link=_link(spec.delay, link_gbps),
        transport=topo.SecurityConfig(
            token=_PLACEHOLDER_TOKEN,
            congestion_control=WAN_CONGESTION_CONTROL,
            compression=spec.compression,
        ),
        controller=_controller(spec),
    )


def _link(delay: DelaySettings, wire_gbps: float) -> topo.LinkConfig:
    """`[link]`: the WAN's wire rate and the delay line's path as the router, the simulator and
    the planner take it: the round trip twice the one-way delay, its jitter, distribution and
    loss (live seconds; the simulator converts them to the model's units), and the WAN's TCP
    segment (its MTU less the headers), which a loss's window cut is counted in."""
    return topo.LinkConfig(
        gbps=wire_gbps,
        rtt_ms=2 * delay.delay_ms,
        jitter_ms=delay.jitter_ms,
        jitter_distribution=delay.jitter_distribution,
        loss_pct=delay.loss_pct,
        mss_bytes=wan_mtu_bytes(wire_gbps) - TCP_IP_HEADER_BYTES,
    )


def topology_text(
    spec: TestbedSpec,
    layout: TestbedLayout,
    token_file: Path | None,
    threshold_tokens: float | None,
    link_gbps: float,
) -> str:
    """The TOML of `testbed_topology`, naming `token_file` for the transport token (without one
    the token is a placeholder: a topology parsed, never served)."""
    return topo.topology_to_toml(
        testbed_topology(spec, layout, threshold_tokens, link_gbps),
        token_file=token_file,
        comment=f"prfaas testbed {spec.name}: generated by `prfaas testbed up`",
    )


def resolve_threshold(spec: TestbedSpec) -> tuple[float | None, str]:
    """t in tokens and how it was chosen: the given number, or Eq. 7 over the NOMINAL (unscaled)
    deployment of this many instances, so the testbed routes as the paper's would; None for a
    deployment that routes without a threshold."""
    if not spec.uses_threshold:
        where = "PD" if spec.deployment == DeploymentKind.HOMOGENEOUS else "PrfaaS"
        return None, f"no threshold, every prefill on {where}"
    if not isinstance(spec.threshold, str):
        return float(spec.threshold), "fixed"
    nominal = dataclasses.replace(spec, scale=TestbedScale(spec.scale.nominal_gbps, 1.0, 1.0))
    layout = TestbedLayout(spec.name)
    topology = testbed_topology(nominal, layout, 0.0, spec.scale.nominal_gbps)
    # the segment the scaled WAN really has, in real KV bytes (what the simulator counts)
    scaled_link = _link(spec.delay, spec.scale.wire_gbps)
    mss_bytes = model_mss_bytes(scaled_link.mss_bytes, spec.scale.payload_scale)
    link = dataclasses.replace(topology.link, mss_bytes=mss_bytes)
    topology = dataclasses.replace(topology, link=link)
    policy = topo.with_auto_threshold(topology, source="testbed (nominal)").policy
    return policy.threshold_tokens, policy.threshold_source
