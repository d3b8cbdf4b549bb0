"""`prfaas up --ray`: a topology's router and instances as Ray actors (the only module that imports
ray; `prfaas up` without `--ray` never loads it).

`RayLauncher.start()`:

1. connects to a Ray cluster, or starts a local one whose single node offers every cluster's
   resource (`prfaas-cluster-<name>`, see `prfaas.launch.ray_placement`);
2. checks that some node offers each cluster's resource, then reserves one placement-group bundle
   per service (CPUs/GPUs of its engine plus a share of its cluster's resource; the router's in
   the first PD cluster);
3. runs a probe task in each bundle that reports its node and free ports on the host the service
   will bind (the node's IP, or `RayOptions.host` on one machine), asking again for any port two
   services drew on the same host;
4. builds the resolved topology from those addresses and starts one `ServiceActor` per service
   in its bundle with that topology: the actor runs the same `serve_instance(topology, name)` /
   `serve_router(topology)` as the subprocess launcher, on a thread of the actor's process.

A service that stops (its server could not bind, or failed) ends the actor's process, and Ray
restarts the actor (`max_restarts`) in the same bundle, so on the same node, by re-running its
constructor with the same topology: it serves again at the same address, and the router's poller
marks it ready again (and down while it is away). `stop()` kills every actor, frees the bundles
and stops a Ray instance it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from prfaas.errors import UserError
from prfaas.launch.local import router_is_ready, serve_instance, serve_router
from prfaas.launch.ray_placement import (
    ROUTER_NAME,
    ActorNeeds,
    Placement,
    ResourceOptions,
    clashing_owners,
    cluster_resource,
    deployment_record,
    instance_needs,
    missing_resources,
    num_ports,
    resolve_topology,
    router_cluster,
    router_needs,
    total_cpus,
)
from prfaas.topology import Topology

log = logging.getLogger(__name__)

_SERVICE_ENDED_EXIT = 70  # the actor's process exits with this when its service stops
_NUM_PROBE_ROUNDS = 5
_PROBE_TIMEOUT_S = 120.0
_PING_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """How `RayLauncher` uses Ray."""

    address: str | None = None  # a running cluster ("auto", "host:6379", "ray://..."); None: local
    host: str | None = None  # bind every service here instead of its node's IP (one machine)
    resources: ResourceOptions = field(default_factory=ResourceOptions)
    router_cluster: str | None = None  # default: the first PD cluster
    max_restarts: int = 10  # per actor; -1: forever
    namespace: str = "prfaas"
    placement_timeout_s: float = 120.0  # for Ray to reserve every bundle
    log_to_driver: bool = True  # print the services' logs on this process's stderr
    # a local Ray instance (address None) only:
    local_num_cpus: int | None = None  # logical CPUs; default: enough for the topology
    local_object_store_bytes: int = 100 << 20  # the services pass nothing through it
    local_temp_dir: str | None = None  # Ray's session directory (default /tmp/ray)

    def __post_init__(self) -> None:
        if self.max_restarts < -1:
            raise ValueError(f"max_restarts must be >= -1, got {self.max_restarts}")
        if not self.placement_timeout_s > 0:
            raise ValueError(f"placement_timeout_s must be > 0, got {self.placement_timeout_s}")


class ServiceActor:
    """One service of the topology in a Ray actor: the router or instance `name`."""

    def __init__(self, topology: Topology, name: str) -> None:
        self.name = name
        self._thread = threading.Thread(
            target=_serve_until_exit, args=(topology, name), name=f"prfaas-{name}", daemon=True
        )
        self._thread.start()

    def ping(self) -> int:
        """The actor process's pid (changes when Ray restarts the actor)."""
        return os.getpid()

    def where(self) -> dict[str, Any]:
        """Its node, process and the resources Ray assigned to it."""
        context = ray.get_runtime_context()
        return {
            "name": self.name,
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "node_ip": _node_ip(),
            "resources": context.get_assigned_resources(),  # type: ignore[no-untyped-call]
            "serving": self._thread.is_alive(),
        }


def _serve_until_exit(topology: Topology, name: str) -> None:
    """Run the service; when it ends, for whatever reason, end the process so Ray restarts it."""
    try:
        if name == ROUTER_NAME:
            serve_router(topology)
        else:
            serve_instance(topology, name)
        log.error("%s: the service stopped", name)
    except BaseException:
        log.exception("%s: the service failed", name)
    finally:
        os._exit(_SERVICE_ENDED_EXIT)


def _node_ip() -> str:
    """The IP address Ray knows this process's node by."""
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def _probe(host: str | None, count: int) -> tuple[str, str, str, tuple[int, ...]]:
    """In a reserved bundle: (node id, node IP, bind host, `count` ports free on that host)."""
    node_ip = _node_ip()
    bind = host or node_ip
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sockets = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:  # held together, so one probe never draws a port twice
            s.bind((bind, 0))
        ports = tuple(int(s.getsockname()[1]) for s in sockets)
    finally:
        for s in sockets:
            s.close()
    return ray.get_runtime_context().get_node_id(), node_ip, bind, ports


def _free_resources() -> dict[str, float]:
    return dict(ray.available_resources())  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class ActorCheck:
    """The actors' state at one moment: alive (with pids), restarting, or dead for good."""

    pids: Mapping[str, int]
    restarting: tuple[str, ...]
    dead: tuple[str, ...]


class RayLauncher:
    """A topology's services as Ray actors placed by cluster resource."""

    def __init__(
        self, topology: Topology, options: RayOptions, config_path: Path | None = None
    ) -> None:
        self.template = topology
        self.topology = topology  # the resolved topology once started
        self.options = options
        self.config_path = config_path
        self.run_id = secrets.token_hex(3)
        self.actors: dict[str, Any] = {}
        self.placements: dict[str, Placement] = {}
        self._names: list[str] = []
        self._needs: list[ActorNeeds] = []
        self._group: Any = None  # the deployment's PlacementGroup once reserved
        self._owns_ray = False
        self.ray_address = ""

    # ---- starting --------------------------------------------------------------------------
    def start(self) -> None:
        """Reserve, probe, resolve and start every actor; on failure undo what was done."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._slots()
        self._connect()
        available = ray.cluster_resources()  # type: ignore[no-untyped-call]
        problems = missing_resources(self.template, available)
        if problems:
            raise UserError("\n".join(problems))
        self._group = self._reserve()
        self.placements = self._probe_all()
        self.topology = resolve_topology(
            self.template, self.placements, self.placements[ROUTER_NAME]
        )
        for index, name in enumerate(self._names):
            self.actors[name] = self._start_actor(index)

    def _slots(self) -> None:
        """One bundle per service: the instances in topology order, then the router."""
        options = self.options.resources
        self._names = [i.name for i in self.template.instances] + [ROUTER_NAME]
        home = router_cluster(self.template, self.options.router_cluster)
        self._needs = [instance_needs(i, options) for i in self.template.instances]
        self._needs.append(router_needs(home, options))

    def _connect(self) -> None:
        if ray.is_initialized():
            self.ray_address = ray.get_runtime_context().gcs_address
            return
        opts = self.options
        common: dict[str, Any] = {
            "namespace": opts.namespace,
            "log_to_driver": opts.log_to_driver,
            "logging_level": logging.WARNING,
        }
        if opts.address is None:
            ray.init(
                address="local",
                num_cpus=opts.local_num_cpus or self._local_cpus(),
                resources={cluster_resource(c.name): 1.0 for c in self.template.clusters},
                include_dashboard=False,
                object_store_memory=opts.local_object_store_bytes,
                _temp_dir=opts.local_temp_dir,
                **common,
            )
        else:
            try:
                ray.init(address=opts.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot connect to Ray at {opts.address}: {exc}") from None
        self._owns_ray = True
        self.ray_address = ray.get_runtime_context().gcs_address

    def _local_cpus(self) -> int:
        return max(os.cpu_count() or 1, math.ceil(total_cpus(self._needs)))

    def _reserve(self) -> Any:
        bundles = [n.bundle() for n in self._needs]
        group = placement_group(bundles, strategy="SPREAD", name=f"prfaas-{self.run_id}")
        try:
            ray.get(group.ready(), timeout=self.options.placement_timeout_s)
        except GetTimeoutError:
            remove_placement_group(group)
            wanted = "; ".join(f"{n}: {b}" for n, b in zip(self._names, bundles, strict=True))
            raise UserError(
                f"Ray could not reserve the deployment within "
                f"{self.options.placement_timeout_s:g} s (free: {_free_resources()}); "
                f"wanted {wanted}"
            ) from None
        return group

    def _strategy(self, index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(
            placement_group=self._group, placement_group_bundle_index=index
        )

    def _probe_all(self) -> dict[str, Placement]:
        """Every service's placement, asking again for ports that clash on one host."""
        placements: dict[str, Placement] = {}
        pending = list(range(len(self._names)))
        for _ in range(_NUM_PROBE_ROUNDS):
            refs = {index: self._probe(index) for index in pending}
            for index, ref in refs.items():
                placements[self._names[index]] = Placement(*ray.get(ref, timeout=_PROBE_TIMEOUT_S))
            clashes = clashing_owners(self.template, placements)
            if not clashes:
                return placements
            pending = [self._names.index(name) for name in sorted(clashes)]
        raise UserError(f"no free ports without clashes after {_NUM_PROBE_ROUNDS} tries")

    def _probe(self, index: int) -> Any:
        name, needs = self._names[index], self._needs[index]
        count = 0 if name == ROUTER_NAME else num_ports(self.template.instance(name))
        task = ray.remote(_probe).options(
            num_cpus=needs.num_cpus,
            num_gpus=needs.num_gpus,
            resources=dict(needs.resources),
            scheduling_strategy=self._strategy(index),
        )
        return task.remote(self.options.host, count)

    def _start_actor(self, index: int) -> Any:
        name, needs = self._names[index], self._needs[index]
        actor_class = ray.remote(ServiceActor).options(
            name=f"prfaas-{self.run_id}-{name}",
            num_cpus=needs.num_cpus,
            num_gpus=needs.num_gpus,
            resources=dict(needs.resources),
            scheduling_strategy=self._strategy(index),
            max_restarts=self.options.max_restarts,
            max_task_retries=0,
        )
        return actor_class.remote(self.topology, name)

    # ---- running ---------------------------------------------------------------------------
    @property
    def router_url(self) -> str:
        return f"http://{self.topology.router.http}"

    def wait_ready(self, timeout_s: float) -> None:
        """Until the router's /ready answers 200; UserError if an actor dies for good or time
        runs out."""
        deadline = time.monotonic() + timeout_s
        next_check = time.monotonic()
        while time.monotonic() < deadline:
            if router_is_ready(self.router_url):
                return
            if time.monotonic() >= next_check:
                dead = self.check().dead
                if dead:
                    raise UserError(f"{', '.join(dead)} died while starting (see Ray's logs)")
                next_check = time.monotonic() + 2.0
            time.sleep(0.25)
        raise UserError(f"the deployment was not ready within {timeout_s:g} s")

    def check(self, timeout_s: float = _PING_TIMEOUT_S) -> ActorCheck:
        """Ping every actor at once."""
        refs = {name: actor.ping.remote() for name, actor in self.actors.items()}
        pids: dict[str, int] = {}
        restarting: list[str] = []
        dead: list[str] = []
        deadline = time.monotonic() + timeout_s
        for name, ref in refs.items():
            try:
                pids[name] = int(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
            except ActorDiedError:
                dead.append(name)
            except (RayActorError, GetTimeoutError):
                restarting.append(name)
        return ActorCheck(pids, tuple(restarting), tuple(dead))

    def where(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Actor `name`'s node, pid and assigned resources (waits while it restarts)."""
        return dict(ray.get(self.actors[name].where.remote(), timeout=timeout_s))

    def kill(self, name: str) -> None:
        """Kill actor `name`'s process; Ray restarts it (fault tests)."""
        ray.kill(self.actors[name], no_restart=False)

    def deployment(self) -> dict[str, Any]:
        """The record `prfaas status --deployment FILE` reads."""
        return deployment_record(self.topology, self.placements, self.config_path, self.ray_address)

    def write_deployment(self, path: Path) -> None:
        path.write_text(json.dumps(self.deployment(), indent=2) + "\n")

    # ---- stopping --------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill every actor (no restart), free the bundles, stop the Ray instance we started."""
        if not ray.is_initialized():
            return
        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self._group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._group)
            self._group = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayLauncher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
