"""What the instance services share: their engine thread, their metrics, and their HTTP app.

`EngineService` is the start of every role's service (prefill, decode): the engine thread it
runs the engine on (its own, or one a convertible PD instance shares between its two roles), the
Prometheus registry its `/metrics` shows, metrics labelled with the instance's name
(`instance_metric`), and the size of the engine's prefix cache; a role adds its own state in
`_setup`. `build_instance_app` is the app every instance serves: the engine loads (on a thread)
and the service is made and started when the app starts, and closed when it stops; `/internal/*`
takes the deployment token; `/health`, `/ready`, `/metrics`, `/internal/stats` and
`/internal/kv_events` are there for every role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge

from prfaas.engine.protocol import ServingEngine
from prfaas.instance.engines import build_engine, prefix_cache_bytes
from prfaas.instance.kv_events import add_kv_event_route
from prfaas.instance.worker import EngineWorker
from prfaas.service.auth import InternalAuth, deployment_token
from prfaas.service.http import add_instance_routes
from prfaas.topology import InstanceConfig, Topology

log = logging.getLogger(__name__)
_Metric = TypeVar("_Metric", Counter, Gauge)


class EngineService:
    """An instance role's service over one engine thread, with its own metrics registry."""

    def __init__(
        self,
        topology: Topology,
        instance: InstanceConfig,
        engine: ServingEngine,
        worker: EngineWorker | None = None,
    ) -> None:
        """`worker`: an engine thread shared with the instance's other role (convertible PD
        instances); by default the service starts its own."""
        self.topology, self.instance = topology, instance
        self.loop = asyncio.get_running_loop()
        self.worker = worker or EngineWorker(engine, self.loop, name=instance.name)
        self.registry = CollectorRegistry()
        self._setup()

    def _setup(self) -> None:
        """The role's own state and metrics (nothing here)."""

    def instance_metric(self, kind: type[_Metric], name: str, documentation: str) -> _Metric:
        """A counter or gauge of this instance (labelled with its name) in the registry."""
        metric = kind(name, documentation, ["instance"], registry=self.registry)
        return metric.labels(self.instance.name)

    @property
    def prefix_cache_bytes(self) -> int:
        """Bytes in the engine's prefix cache (read without the engine thread: one int)."""
        return prefix_cache_bytes(self.worker.engine)


class InstanceService(Protocol):
    """What an instance's app holds as `app.state.service`, as far as the app needs it."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def build_instance_app(
    topology: Topology,
    instance: InstanceConfig,
    kind: str,
    make_service: Callable[[Topology, InstanceConfig, ServingEngine], InstanceService],
) -> FastAPI:
    """The app of an instance of `kind` ("prefill", "decode", "pd"); at start the engine loads
    and `make_service(topology, instance, engine)` starts. The caller adds its role's routes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(build_engine, topology, instance)
        service = make_service(topology, instance, engine)
        await service.start()
        app.state.service = service
        log.info(
            "%s instance %s ready on %s (KV %s, bound on %s) as %s",
            kind,
            instance.name,
            instance.http,
            instance.kv,
            instance.kv_bind_address,
            instance.role,
        )
        yield
        await service.close()

    app = FastAPI(title=f"prfaas {kind} {instance.name}", lifespan=lifespan)
    app.add_middleware(InternalAuth, token=deployment_token(topology))
    add_instance_routes(app, instance)
    add_kv_event_route(app)
    return app
