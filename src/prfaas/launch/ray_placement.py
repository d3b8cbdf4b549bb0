"""Placing a topology on Ray, without Ray: resource names, what each actor asks for, the
addresses the actors found, and the resolved topology and deployment record built from them.

Each cluster of the topology (a datacenter) maps to Ray nodes through a custom resource,
`prfaas-cluster-<name>`, that the operator gives its nodes (`ray start --resources
'{"prfaas-cluster-pd": 1}'`). Every actor asks for a small share of its cluster's resource, so a
node holding 1 unit can run up to 1 / `CLUSTER_RESOURCE_SHARE` actors of that cluster, and for
the CPUs/GPUs of its engine. `prfaas.launch.ray_launcher` (the only module that imports ray)
reserves these needs, asks each reserved slot for its host and free ports (`Placement`), and
hands `resolve_topology`'s result to every actor.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.topology import ClusterConfig, InstanceConfig, Topology

CLUSTER_RESOURCE_PREFIX = "prfaas-cluster-"
CLUSTER_RESOURCE_SHARE = 0.001  # of the node's cluster resource (1 unit) taken by one actor
ROUTER_NAME = "router"  # the router's key among the placements (instance names cannot clash:
# the router is not an instance, and a Ray deployment names its actors after both)
DEPLOYMENT_FORMAT = 1  # version of the deployment record's JSON


def cluster_resource(cluster: str) -> str:
    """The custom Ray resource that marks the nodes of datacenter `cluster`."""
    return f"{CLUSTER_RESOURCE_PREFIX}{cluster}"


@dataclass(frozen=True)
class ResourceOptions:
    """The logical CPUs/GPUs an actor declares to Ray, by what it runs.

    The torch engine of this project computes on CPU, so instances ask for no GPU unless
    `num_gpus_per_instance` says otherwise (Ray then sets CUDA_VISIBLE_DEVICES for them)."""

    num_cpus_torch: float = 1.0  # an instance with engine = "torch"
    num_cpus_emulated: float = 0.25  # an emulated engine sleeps through its compute
    num_cpus_router: float = 0.5
    num_gpus_per_instance: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value >= 0:  # NaN fails too
                raise ValueError(f"{f.name} must be >= 0, got {value}")


@dataclass(frozen=True)
class ActorNeeds:
    """What one actor asks Ray for: CPUs, GPUs and its cluster's share."""

    num_cpus: float
    num_gpus: float
    resources: Mapping[str, float] = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        """The placement-group bundle that reserves exactly these needs."""
        out = {"CPU": self.num_cpus, **self.resources}
        if self.num_gpus > 0:
            out["GPU"] = self.num_gpus
        return {k: v for k, v in out.items() if v > 0}


def instance_needs(instance: InstanceConfig, options: ResourceOptions) -> ActorNeeds:
    cpus = options.num_cpus_torch if instance.engine == "torch" else options.num_cpus_emulated
    share = {cluster_resource(instance.cluster): CLUSTER_RESOURCE_SHARE}
    return ActorNeeds(cpus, options.num_gpus_per_instance, share)


def router_needs(cluster: ClusterConfig, options: ResourceOptions) -> ActorNeeds:
    share = {cluster_resource(cluster.name): CLUSTER_RESOURCE_SHARE}
    return ActorNeeds(options.num_cpus_router, 0.0, share)


def router_cluster(topology: Topology, name: str | None = None) -> ClusterConfig:
    """Where the router runs: cluster `name`, or the first PD cluster (the users' datacenter)."""
    if name is not None:
        for cluster in topology.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in topology.clusters)
        raise UserError(f"router cluster {name!r} is not in the topology; known: {known}")
    pd = topology.clusters_of_kind("pd")
    return pd[0] if pd else topology.clusters[0]


def missing_resources(topology: Topology, available: Mapping[str, float]) -> list[str]:
    """One line per cluster whose resource no Ray node offers (each names the fix)."""
    lines = []
    for cluster in topology.clusters:
        name = cluster_resource(cluster.name)
        if available.get(name, 0.0) <= 0:
            lines.append(
                f"no Ray node offers resource {name!r} for cluster {cluster.name!r}: start its "
                f"nodes with ray start --resources '{{\"{name}\": 1}}'"
            )
    return lines


@dataclass(frozen=True)
class Placement:
    """Where one actor's reserved slot is: its Ray node, the host its services bind, free ports."""

    node_id: str
    node_ip: str
    host: str
    ports: tuple[int, ...]


def num_ports(instance: InstanceConfig) -> int:
    """HTTP, plus the KV receiver's port for an instance that has one."""
    return 2 if instance.kv is not None else 1


def format_address(host: str, port: int) -> str:
    """ "host:port", an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def router_port(topology: Topology) -> int:
    """The router keeps the topology's port (users know it); only its host is discovered."""
    return int(topology.router.http.rpartition(":")[2])


def resolve_topology(
    template: Topology, placements: Mapping[str, Placement], router: Placement
) -> Topology:
    """The topology with every address replaced by where its actor landed.

    Instances take their placement's ports in order (HTTP, then KV, whatever the instance's
    cluster: a PrfaaS prefill instance's `kv` receives moved prefixes); each KV receiver binds its
    new `kv` (`kv_listen` is dropped); the router keeps its port on its placement's host.
    ValueError if a placement is missing or two services share an address (the launcher then
    asks again for the clashing ones)."""
    clusters = []
    for cluster in template.clusters:
        instances = tuple(_placed(i, placements) for i in cluster.instances)
        clusters.append(dataclasses.replace(cluster, instances=instances))
    router_http = format_address(router.host, router_port(template))
    resolved = dataclasses.replace(
        template,
        clusters=tuple(clusters),
        router=dataclasses.replace(template.router, http=router_http),
    )
    clashes = duplicate_addresses(resolved)
    if clashes:
        raise ValueError(f"services share addresses: {', '.join(clashes)}")
    return resolved


def _placed(instance: InstanceConfig, placements: Mapping[str, Placement]) -> InstanceConfig:
    place = placements.get(instance.name)
    if place is None:
        raise ValueError(f"no placement for instance {instance.name!r}")
    if len(place.ports) < num_ports(instance):
        raise ValueError(f"{instance.name}: needs {num_ports(instance)} ports, got {place.ports}")
    http = format_address(place.host, place.ports[0])
    kv = None if instance.kv is None else format_address(place.host, place.ports[1])
    # the probe found the port free on the host the receiver binds, and the others reach it
    # there: the template's `kv_listen` (a bind address for NAT or a proxy) no longer applies
    return dataclasses.replace(instance, http=http, kv=kv, kv_listen=None)


def addresses(topology: Topology) -> list[tuple[str, str]]:
    """(owner, address) of every listening socket: the router, each HTTP and KV address."""
    out = [(ROUTER_NAME, topology.router.http)]
    for inst in topology.instances:
        out.append((inst.name, inst.http))
        if inst.kv is not None:
            out.append((f"{inst.name} kv", inst.kv))
    return out


def duplicate_addresses(topology: Topology) -> list[str]:
    """The addresses that more than one socket would bind."""
    counts = Counter(address for _, address in addresses(topology))
    return sorted(address for address, n in counts.items() if n > 1)


def clashing_owners(topology: Topology, placements: Mapping[str, Placement]) -> set[str]:
    """Placement keys to ask again: those that drew a port another socket on the host holds
    (every owner of a clash but the first), or the router's port on the router's host."""
    seen: set[tuple[str, int]] = set()
    redo: set[str] = set()
    router = placements.get(ROUTER_NAME)
    if router is not None:
        seen.add((router.host, router_port(topology)))
    for name in (i.name for i in topology.instances):
        place = placements[name]
        for port in place.ports:
            if (place.host, port) in seen:
                redo.add(name)
            seen.add((place.host, port))
    return redo


# ---- the deployment record: what `prfaas status` reads ----------------------------------------


@dataclass(frozen=True)
class Member:
    """One service of a running deployment, as `prfaas status` lists it."""

    name: str
    cluster: str
    role: str
    http: str
    kv: str | None
    node: str  # Ray node IP and short id, or the host of its address outside Ray

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def node_label(node_ip: str, node_id: str) -> str:
    return f"{node_ip} ({node_id[:8]})" if node_id else node_ip


def members_of(
    topology: Topology, placements: Mapping[str, Placement] | None = None
) -> list[Member]:
    """Every instance of `topology`, on its Ray node when `placements` are known."""
    out = []
    for inst in topology.instances:
        place = None if placements is None else placements.get(inst.name)
        host = inst.http.rpartition(":")[0].strip("[]")
        node = host if place is None else node_label(place.node_ip, place.node_id)
        out.append(Member(inst.name, inst.cluster, inst.role, inst.http, inst.kv, node))
    return out


def deployment_record(
    topology: Topology,
    placements: Mapping[str, Placement],
    config_path: Path | None,
    ray_address: str,
) -> dict[str, Any]:
    """The JSON a Ray deployment writes for `prfaas status --deployment FILE`. No secrets: the
    token stays in the topology file (`config`), which status reads for it."""
    router = placements[ROUTER_NAME]
    return {
        "format": DEPLOYMENT_FORMAT,
        "config": None if config_path is None else str(config_path),
        "ray_address": ray_address,
        "router": {
            "url": f"http://{topology.router.http}",
            "node": node_label(router.node_ip, router.node_id),
        },
        "instances": [m.to_dict() for m in members_of(topology, placements)],
    }


@dataclass(frozen=True)
class Deployment:
    """A deployment record read back: the router, the members, the topology file for the token."""

    router_url: str
    members: tuple[Member, ...]
    config_path: str | None


def read_deployment(path: Path) -> Deployment:
    """Parse a deployment record; UserError naming the file and what is wrong with it."""
    text = read_text_file(path)
    try:
        data = json.loads(text)
        if data.get("format") != DEPLOYMENT_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {DEPLOYMENT_FORMAT}")
        members = tuple(_member(m) for m in data["instances"])
        return Deployment(str(data["router"]["url"]), members, data.get("config"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a prfaas deployment record: {exc}") from None


def _member(d: Mapping[str, Any]) -> Member:
    kv = d.get("kv")
    return Member(
        str(d["name"]),
        str(d["cluster"]),
        str(d["role"]),
        str(d["http"]),
        None if kv is None else str(kv),
        str(d["node"]),
    )


def total_cpus(needs: Iterable[ActorNeeds]) -> float:
    return sum(n.num_cpus for n in needs)
