"""The router's live operator dashboard: `GET /dashboard` (one HTML page, its CSS and script
inline, shipped as package data: `dashboard.html`) and `GET /dashboard/state` (the JSON the page
polls).

The state is built from what the router already holds: the monitor's instances by cluster (role,
health, waiting and running requests) and its link view (capacity, utilization, RTT and the
retransmitted share, as the PrfaaS prefill instances' transports measured them; "measured" is
false while no KV has crossed the link, and the page then shows the measured fields as not
measured), the threshold t in force, and the `DashboardHistory` ring buffers (samples of t,
offload ratio and latency percentiles, the latest route decisions with their reasons, the
controller's decisions).

With API keys set, `/dashboard/state` wants the same `Authorization: Bearer` key as the API and
answers the API's 401 otherwise; the page carries no data, asks for the key on a 401 and keeps it
in the tab's sessionStorage.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from prfaas.router.dashboard_history import DashboardHistory
from prfaas.router.intake import RequestIntake
from prfaas.router.monitor import ClusterMonitor, InstanceState
from prfaas.topology import Topology


class DashboardParts(Protocol):
    """What the dashboard reads of the router's service (`app.state.service`)."""

    topology: Topology
    intake: RequestIntake
    monitor: ClusterMonitor
    dashboard: DashboardHistory

    def threshold_tokens(self) -> float | None: ...


def health(state: InstanceState) -> str:
    """ready, converting (by the router), draining (changing role), down, or starting (never
    answered yet)."""
    if state.converting_to is not None:
        return "converting"
    if state.stats is not None and state.stats.draining_to is not None:
        return "draining"
    if state.is_ready:
        return "ready"
    return "down" if state.stats is not None else "starting"


def instance_row(state: InstanceState) -> dict[str, Any]:
    s = state.stats
    return {
        "name": state.config.name,
        "role": state.converting_to or state.role,
        "health": health(state),
        "num_waiting": 0 if s is None else s.num_requests_waiting,
        "num_running": 0 if s is None else s.num_requests_running,
        "num_queued_tokens": 0 if s is None else s.num_queued_tokens,
        "num_pending": state.pending_requests,
    }


def link_state(monitor: ClusterMonitor) -> dict[str, Any] | None:
    """The PrfaaS -> PD link (None: the deployment has no PrfaaS cluster); with several
    providers, the first one's."""
    topology = monitor.topology
    prfaas = next(iter(topology.clusters_of_kind("prfaas")), None)
    pd = topology.clusters_of_kind("pd")[0]
    if prfaas is None:
        return None
    connections = monitor.link_connections(prfaas, pd)
    view = monitor.link_view(prfaas, pd)
    measured = view is not None and bool(connections)
    return {
        "provider": prfaas.name,
        "capacity_bytes_per_s": monitor.link_capacity_of(prfaas),
        "measured": measured,
        "num_connections": len(connections),
        "utilization": view.utilization if view is not None else None,
        "backlog_bytes": view.backlog_bytes if view is not None else None,
        "rtt_s": view.rtt_s if measured and view is not None else None,
        "retransmit_rate": view.retransmit_rate if measured and view is not None else None,
    }


def dashboard_state(service: DashboardParts) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    topology, monitor = service.topology, service.monitor
    clusters = [
        {
            "name": c.name,
            "kind": c.kind,
            "instances": [instance_row(monitor.states[i.name]) for i in c.instances],
        }
        for c in topology.clusters
    ]
    return {
        "now_s": service.dashboard.clock(),
        "deployment": topology.policy.deployment,
        "threshold_tokens": service.threshold_tokens(),
        "clusters": clusters,
        "link": link_state(monitor),
        **service.dashboard.snapshot(),
    }


def dashboard_page() -> str:
    return resources.files("prfaas.router").joinpath("dashboard.html").read_text("utf-8")


def add_dashboard_routes(app: FastAPI) -> None:
    @app.get("/dashboard", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(dashboard_page(), headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/state")
    async def state(request: Request) -> JSONResponse:
        service: DashboardParts = app.state.service
        service.intake.check_auth(request)
        return JSONResponse(dashboard_state(service), headers={"Cache-Control": "no-store"})
