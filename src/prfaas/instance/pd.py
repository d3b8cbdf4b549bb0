"""A convertible PD instance: one engine that serves as PD prefill or as PD decode, and changes
between the two when the router's long-timescale controller says so.

With a `[controller]` table every instance of the PD cluster runs this app instead of the plain
prefill or decode one. It holds a `PrefillService` and a `DecodeService` over one engine thread
and serves one role at a time: `/internal/prefill` takes jobs in the prefill role,
`/internal/decode` in the decode role; a job for the other role gets 409. The KV receiver
listens in both roles, so the instance's addresses never change, and the prefix cache belongs to
the engine, so it survives a change. The receiver also takes moved prefixes (a manifest marked
with `PrefixTransferInfo`) into the prefix cache, and `/internal/prefix_export` sends one of its
cached prefixes to another instance, in either role (`prefix_transfer`).

A change (`POST /internal/role {"role": "decode"}`): the instance reports `draining_to` in its
stats at once (the router sends it nothing new), still finishes the old role's jobs, and once
none is left serves in the new role. The router drains its own side first (it waits until
nothing it dispatched there is in flight), so no job arrives for a role that has ended.
`/metrics` shows the role in force (each role's counters live in its own registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry

from prfaas.engine.protocol import ServingEngine
from prfaas.instance.decode import DecodeService, handle_abort, handle_decode
from prfaas.instance.prefill import PrefillService, handle_prefill, handle_prefix_export
from prfaas.instance.service_base import build_instance_app
from prfaas.instance.worker import EngineWorker
from prfaas.messages import InstanceStats, JSONDict
from prfaas.service.http import error_response
from prfaas.topology.config import ROLES, InstanceConfig, Topology

log = logging.getLogger(__name__)
_DRAIN_POLL_S = 0.05


class RoleConflict(Exception):
    """A role change was asked while another one is still draining."""


class ConvertibleService:
    """Both roles' services over one engine thread, the role in force, and a change under way."""

    def __init__(self, topology: Topology, instance: InstanceConfig, engine: ServingEngine) -> None:
        self.instance = instance
        self.worker = EngineWorker(engine, asyncio.get_running_loop(), name=instance.name)
        self.prefill = PrefillService(topology, instance, engine, worker=self.worker)
        self.decode = DecodeService(topology, instance, engine, worker=self.worker)
        self.decode.take_prefix = self.prefill.prefix_importer.take_if_prefix  # into the pool
        self.role = instance.role
        self.draining_to: str | None = None
        self.num_role_changes = 0
        self._drain_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.decode.start()

    @property
    def is_ready(self) -> bool:
        """Whether the KV receiver listens (it does in both roles); `/ready` asks."""
        return self.decode.is_ready

    # ---- roles -----------------------------------------------------------------------------
    def takes(self, role: str) -> bool:
        """Whether a job of `role` is served now (the old role's, while draining, too)."""
        return role == self.role

    def change_role(self, role: str) -> JSONDict:
        """Start draining toward `role` (nothing to do if it is the role in force)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if self.draining_to is not None and role != self.draining_to:
            raise RoleConflict(f"already changing to {self.draining_to!r}")
        if self.draining_to is None and role != self.role:
            self.draining_to = role
            log.info(
                json.dumps(
                    {
                        "event": "role_drain",
                        "instance": self.instance.name,
                        "from_role": self.role,
                        "to_role": role,
                    }
                )
            )
            self._drain_task = asyncio.create_task(self._drain(time.monotonic()))
        return self.role_status()

    def role_status(self) -> JSONDict:
        return {"instance": self.instance.name, "role": self.role, "draining_to": self.draining_to}

    def _is_busy(self) -> bool:
        if self.role == "prefill":
            return bool(self.prefill.jobs)
        return bool(self.decode.running) or self.decode.num_waiting > 0

    async def _drain(self, started_at: float) -> None:
        while self._is_busy():
            await asyncio.sleep(_DRAIN_POLL_S)
        old, self.role, self.draining_to = self.role, self.draining_to or self.role, None
        self.num_role_changes += 1
        log.info(
            json.dumps(
                {
                    "event": "role_changed",
                    "instance": self.instance.name,
                    "from_role": old,
                    "to_role": self.role,
                    "drain_s": round(time.monotonic() - started_at, 4),
                }
            )
        )

    # ---- reporting -------------------------------------------------------------------------
    def stats(self) -> InstanceStats:
        active = self.prefill if self.role == "prefill" else self.decode
        return replace(active.stats(), role=self.role, draining_to=self.draining_to)

    @property
    def registry(self) -> CollectorRegistry:
        return self.prefill.registry if self.role == "prefill" else self.decode.registry

    async def close(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        await self.prefill.sender.close()
        await self.decode.close()  # stops the shared engine thread too


def _wrong_role(service: ConvertibleService, role: str) -> Response:
    message = (
        f"instance {service.instance.name} serves as {service.role}"
        f"{f' (changing to {service.draining_to})' if service.draining_to else ''}, not {role}"
    )
    return error_response(409, message, "conflict", "wrong_role")


def build_pd_app(topology: Topology, instance: InstanceConfig) -> FastAPI:
    """The convertible PD instance's HTTP app; the engine loads and the receiver listens at
    start, in the role the topology gives it."""

    app = build_instance_app(topology, instance, "pd", ConvertibleService)

    async def prefill(request: Request) -> Response:
        service: ConvertibleService = app.state.service
        if not service.takes("prefill"):
            return _wrong_role(service, "prefill")
        return await handle_prefill(service.prefill, request)

    async def decode(request: Request) -> Response:
        service: ConvertibleService = app.state.service
        if not service.takes("decode"):
            return _wrong_role(service, "decode")
        return await handle_decode(service.decode, request)

    async def prefix_export(request: Request) -> Response:  # the cache serves in either role
        return await handle_prefix_export(app.state.service.prefill, request)

    app.add_route("/internal/prefill", prefill, methods=["POST"])
    app.add_route("/internal/prefix_export", prefix_export, methods=["POST"])
    app.add_route("/internal/decode", decode, methods=["POST"])

    @app.post("/internal/abort")
    async def abort(request: Request) -> Response:
        return await handle_abort(app.state.service.decode, request)

    @app.get("/internal/role")
    async def role() -> JSONResponse:
        return JSONResponse(app.state.service.role_status())

    @app.post("/internal/role")
    async def change_role(request: Request) -> Response:
        try:
            body = await request.json()
            status = app.state.service.change_role(str(body["role"]))
        except RoleConflict as exc:
            return error_response(409, str(exc), "conflict", "role_change_in_progress")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return error_response(400, f"bad role change: {exc!r}"[:300], "invalid_request_error")
        return JSONResponse(status, status_code=202)

    return app
