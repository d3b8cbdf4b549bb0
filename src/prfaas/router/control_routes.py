"""The router's `/internal/control*` endpoints: the long-timescale controller's state, and the
inputs an operator, a testbed or a scripted test gives it. Behind the deployment token, like every
`/internal/*` path; refused (403) on a deployment without one.

- `GET /internal/control`: t, N_p / N_d, conversions under way, the decision log, the link as
  the policy sees it, and how far the global KV index has read each instance's events.
- `POST /internal/control/link {"gbps": G}`: the PrfaaS -> PD link's capacity changed; answers
  the capacity the router's link view now uses. Also served without a `[controller]` (the
  router's monitor takes the capacity directly; `prfaas testbed link` sends it). The controller
  ticks at once on it; in driven mode the driver posts that tick itself (`/tick`).
- `POST /internal/control/clock {"at_s": T}` (driven mode): the controller's time is now T.
- `POST /internal/control/tick {"at_s": T}` (driven mode): time T, then one tick; answers the
  decisions it made and `wake_at_s`, when the controller wants its next tick before the
  period (a new link capacity it holds; null when none).

Every endpoint but `link` answers 404 on a deployment without a `[controller]`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from prfaas.router.control_loop import RouterControl
from prfaas.router.dispatch import Dispatcher
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.service.auth import deployment_token
from prfaas.service.http import error_response
from prfaas.topology import Topology

_MAX_LINK_GBPS = 1e6

log = logging.getLogger("prfaas.router")


class RouterParts(Protocol):
    """What these routes use of the router's service (`app.state.service`)."""

    topology: Topology
    monitor: ClusterMonitor
    prefixes: RouterPrefixIndex
    dispatcher: Dispatcher
    control: RouterControl | None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _require_token(topology: Topology) -> None:
    if deployment_token(topology) is None:
        raise _Refused(403, "the control API needs the deployment's transport token")


def _service(app: FastAPI) -> RouterParts:
    service: RouterParts = app.state.service
    return service


def _control(service: RouterParts) -> RouterControl:
    _require_token(service.topology)
    control = service.control
    if control is None:
        raise _Refused(404, "this deployment has no [controller]")
    return control


async def _number(request: Request, key: str, low: float, high: float) -> float:
    """`key` of the JSON body: a finite number in [low, high]."""
    try:
        body = await request.json()
        value = float(body[key])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _Refused(400, f"body must be a JSON object with a number {key!r}: {exc!r}") from exc
    if not (math.isfinite(value) and low <= value <= high):
        raise _Refused(400, f"{key} must be a finite number in [{low:g}, {high:g}], got {value}")
    return value


def _require_one_provider(topology: Topology) -> None:
    """A reported capacity is that of the one PrfaaS -> PD link; with several providers each
    has its own (`[clusters.link]`), which this endpoint does not name."""
    num_providers = len(topology.providers)
    if num_providers > 1:
        raise _Refused(
            409, f"{num_providers} prefill providers: each link's capacity is its topology's"
        )


def set_link_capacity(service: RouterParts, bytes_per_s: float) -> None:
    """The router's link view takes a new capacity, and its controller, when it has one, hears
    of it."""
    service.monitor.link_capacity_bytes_per_s = bytes_per_s
    log.info(json.dumps({"event": "link_capacity", "bytes_per_s": bytes_per_s}))
    control = service.control
    if control is not None:
        control.link_capacity_changed()


def add_control_routes(app: FastAPI) -> None:
    """Mount the control endpoints on the router's app (its service on `app.state.service`)."""

    def refused(exc: _Refused) -> Response:
        return error_response(exc.status, str(exc), "invalid_request_error", "control")

    @app.get("/internal/control")
    async def status() -> Response:
        service = _service(app)
        try:
            control = _control(service)
        except _Refused as exc:
            return refused(exc)
        link = service.monitor.link_view(service.dispatcher.prfaas, service.dispatcher.pd)
        extra = {
            "link_utilization": None if link is None else link.utilization,
            "link_backlog_bytes": None if link is None else link.backlog_bytes,
            "link_retransmit_rate": None if link is None else link.retransmit_rate,
            "prefix_index": service.prefixes.cursors(),
        }
        return JSONResponse({**control.status(), **extra})

    @app.post("/internal/control/link")
    async def link(request: Request) -> Response:
        service = _service(app)
        try:
            _require_token(service.topology)
            _require_one_provider(service.topology)
            gbps = await _number(request, "gbps", 1e-6, _MAX_LINK_GBPS)
        except _Refused as exc:
            return refused(exc)
        set_link_capacity(service, gbps * 1e9 / 8)
        return JSONResponse({"link_bytes_per_s": service.monitor.link_capacity_bytes_per_s})

    async def move_clock(request: Request) -> RouterControl | Response:
        """The controller, its clock moved to the body's `at_s` (a `Response` if refused)."""
        try:
            control = _control(_service(app))
            control.set_clock(await _number(request, "at_s", 0.0, math.inf))
        except _Refused as exc:
            return refused(exc)
        except ValueError as exc:  # driven = false, or time going backwards
            return error_response(409, str(exc), "invalid_request_error", "control")
        return control

    @app.post("/internal/control/clock")
    async def clock(request: Request) -> Response:
        control = await move_clock(request)
        if isinstance(control, Response):
            return control
        return JSONResponse({"now_s": control.now()})

    @app.post("/internal/control/tick")
    async def tick(request: Request) -> Response:
        control = await move_clock(request)
        if isinstance(control, Response):
            return control
        now = control.now()
        decisions = control.tick(now)
        wake_at_s = control.controller.wake_at_s()
        return JSONResponse({"now_s": now, "decisions": decisions, "wake_at_s": wake_at_s})
