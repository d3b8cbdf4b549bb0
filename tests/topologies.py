"""The one factory of the topologies tests use (pytest puts tests/ on sys.path).

A `TopologySpec` holds keyword options (the clusters, their instances, prices and own links, the
engine, the model, threshold, TTFT target and deployment, router, link, transport token and
compression, prefix cache, controller); `in_code()` builds its `Topology` in code, `topology()`
writes it with the project's writer (`prfaas.topology.write`) and reads it back with the loader,
so every topology is checked as a file is, and `write(directory)` leaves the file for tests that
start processes. No test formats topology text of its own; tests of the parser itself (bad keys
and values) keep theirs.

    TopologySpec(threshold=16, prefix_cache=PrefixCacheConfig(4, 1 << 20)).topology()
    TopologySpec(clusters=(prfaas(Node("r0")), pd(Node("p0"), decode("d0")))).write(tmp_path)

Addresses are free loopback ports (new ones on every call) unless a node names its own, or
`port_base` fixes them: the router at `port_base`, the k-th instance (from 1, in file order) at
`port_base + 100 k`, its KV receiver one above.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prfaas import topology as topo
from prfaas.launch.local import free_port
from prfaas.policy.controller import ControllerConfig

LOOPBACK = "127.0.0.1"
ROUTER_API_KEY = "sk-test-key"  # the key of the router unit tests' app (tests/unit/router)
HARDWARE_OF_KIND = {"prfaas": "h200", "pd": "h20"}  # the paper's: H200 prefills, H20 serves


@dataclass(frozen=True)
class Node:
    """One instance. `http`: its address (None: the spec picks one). `kv`: its KV receiver's
    address, True for one the spec picks, False for none (a decode node always has one)."""

    name: str
    role: str = "prefill"
    hardware: str | None = None  # None: its cluster kind's (HARDWARE_OF_KIND)
    http: str | None = None
    kv: str | bool = False
    kv_listen: str | None = None
    num_gpus: int = 8

    @property
    def has_kv(self) -> bool:
        return self.role == "decode" or self.kv is not False


def decode(name: str, *, http: str | None = None, kv: str | bool = True) -> Node:
    """A decode node (it always has a KV receiver)."""
    return Node(name, "decode", http=http, kv=kv)


@dataclass(frozen=True)
class Cluster:
    name: str
    kind: str
    nodes: tuple[Node, ...]
    price: float | None = None  # USD per GPU-hour (needed on every cluster with 2+ providers)
    link: topo.LinkConfig | None = None  # a provider's own link (`[clusters.link]`)


def prfaas(
    *nodes: Node,
    name: str = "prfaas",
    price: float | None = None,
    link: topo.LinkConfig | None = None,
) -> Cluster:
    return Cluster(name, "prfaas", nodes, price, link)


def pd(*nodes: Node, name: str = "pd", price: float | None = None) -> Cluster:
    return Cluster(name, "pd", nodes, price)


STANDARD = (prfaas(Node("r0")), pd(Node("p0"), decode("d0")))  # PrfaaS-P, PD-P, PD-D


def two_providers(cheap_link: topo.LinkConfig | None = None) -> tuple[Cluster, ...]:
    """Prefill providers "cheap" (1 $/GPU-h, an H100 instance `cheap-p0`, its own link if
    given) and "fast" (3 $/GPU-h, a B200 instance `fast-p0`), and a PD cluster (2 $/GPU-h,
    `pd-p0` and `pd-d0` on H20)."""
    return (
        prfaas(Node("cheap-p0", hardware="h100"), name="cheap", price=1.0, link=cheap_link),
        prfaas(Node("fast-p0", hardware="b200"), name="fast", price=3.0),
        pd(Node("pd-p0"), decode("pd-d0"), price=2.0),
    )


# `prfaas up`'s shape, with its instance names
EMBEDDED = (prfaas(Node("prfaas-prefill-0")), pd(Node("pd-prefill-0"), decode("pd-decode-0")))


@dataclass(frozen=True)
class TopologySpec:
    """A topology as keyword options; the defaults are a small valid one (`STANDARD`, torch
    engines, tiny qwen3_next, t = 64, a token)."""

    __test__ = False  # not a test class

    clusters: tuple[Cluster, ...] = STANDARD
    engine: str = "torch"
    model: str = "qwen3_next"
    emulate: str = "paper-1t"
    time_scale: float = 1.0
    payload_scale: float = 1.0
    prefill_latency: tuple[tuple[str, str], ...] = ()
    deployment: str = "prfaas"
    threshold: float | None = 64.0  # None: the deployment's own (homogeneous, naive)
    failure: str = "recompute"
    transfer_deadline_s: float = 30.0
    drain_s: float = 30.0
    ttft_target_s: float | None = None  # `[policy] ttft_target_s` (several providers need one)
    router_http: str | None = None
    api_keys: tuple[str, ...] = ()
    link_gbps: float = 100.0
    token: str = "test-topology-token"
    compression: str = "none"  # `[transport] compression`: a KV codec or "auto"
    prefix_cache: topo.PrefixCacheConfig | None = None
    controller: ControllerConfig | None = None  # present: a `[controller]` of these knobs
    driven: bool = False  # the controller ticks when told (POST /internal/control/tick)
    port_base: int | None = None  # fixed addresses (see the module); None: free ports
    base_dir: Path = Path(".")  # where relative paths (a checkpoint directory) resolve

    def in_code(self) -> topo.Topology:
        """The topology as built in code, before any writing (not checked)."""
        ports = self._ports()
        router_http = self.router_http or _address(next(ports))
        clusters = tuple(self._cluster(c, ports) for c in self.clusters)
        controller = topo.ControllerSettings()
        if self.controller is not None:
            controller = topo.ControllerSettings(True, self.controller, self.driven)
        return topo.Topology(
            model=topo.ModelConfig(
                self.model,
                emulate=self.emulate,
                time_scale=self.time_scale,
                payload_scale=self.payload_scale,
                prefill_latency=self.prefill_latency,
            ),
            clusters=clusters,
            policy=self._policy(),
            router=topo.RouterConfig(http=router_http, api_keys=self.api_keys),
            link=topo.LinkConfig(self.link_gbps),
            transport=topo.SecurityConfig(token=self.token, compression=self.compression),
            prefix_cache=self.prefix_cache,
            controller=controller,
        )

    def topology(self) -> topo.Topology:
        """The topology written by the project's writer and read back by its loader."""
        text = topo.topology_to_toml(self.in_code())
        return topo.parse_topology(tomllib.loads(text), self.base_dir, source="test topology")

    def write(self, directory: Path, name: str = "topology.toml") -> Path:
        """The topology's file in `directory` (owner-only, as every topology file)."""
        return topo.write_topology(directory / name, self.in_code())

    def _policy(self) -> topo.PolicyConfig:
        threshold = topo.threshold_of(self.deployment, self.threshold)
        options = (self.failure, self.transfer_deadline_s, self.deployment, self.drain_s)
        return topo.PolicyConfig(*threshold, *options, ttft_target_s=self.ttft_target_s)

    def _ports(self) -> Iterator[int | None]:
        """The router's port, then two per instance (HTTP, KV): fixed, or None for free ones."""
        if self.port_base is None:
            while True:
                yield None
        yield self.port_base
        k = 1
        while True:
            yield self.port_base + 100 * k
            yield self.port_base + 100 * k + 1
            k += 1

    def _cluster(self, cluster: Cluster, ports: Iterator[int | None]) -> topo.ClusterConfig:
        instances = tuple(self._instance(cluster, node, ports) for node in cluster.nodes)
        return topo.ClusterConfig(
            cluster.name, cluster.kind, instances, cluster.price, cluster.link
        )

    def _instance(
        self, cluster: Cluster, node: Node, ports: Iterator[int | None]
    ) -> topo.InstanceConfig:
        http_port, kv_port = next(ports), next(ports)
        kv = None
        if node.has_kv:
            kv = node.kv if isinstance(node.kv, str) else _address(kv_port)
        return topo.InstanceConfig(
            node.name,
            cluster.name,
            node.role,
            node.http or _address(http_port),
            kv=kv,
            kv_listen=node.kv_listen,
            engine=self.engine,
            hardware=node.hardware or HARDWARE_OF_KIND[cluster.kind],
            num_gpus=node.num_gpus,
        )


def _address(port: int | None) -> str:
    return f"{LOOPBACK}:{free_port() if port is None else port}"
