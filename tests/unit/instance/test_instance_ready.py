"""Every instance's `/ready`: 503 before its service (engine, KV receiver) is up, 200 while it
serves, 503 once the process got SIGTERM (draining); `/health` stays "ok" throughout. In process,
on the real apps' routes, without loading an engine."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prfaas.service.http import DrainingServer, add_instance_routes, not_ready_reason
from prfaas.topology import InstanceConfig

INSTANCE = InstanceConfig(name="d0", cluster="pd", role="decode", http="127.0.0.1:1", kv="x:2")


def _app() -> FastAPI:
    app = FastAPI()
    add_instance_routes(app, INSTANCE)
    return app


def _get(app: FastAPI, path: str) -> tuple[int, dict[str, Any]]:
    reply = TestClient(app).get(path)  # no `with`: the lifespan (engine load) never runs
    return reply.status_code, reply.json()


def test_not_ready_before_the_service_is_up() -> None:
    app = _app()
    status, body = _get(app, "/ready")
    assert status == 503
    assert body == {"ready": False, "instance": "d0", "reason": "starting: the engine is loading"}
    assert _get(app, "/health")[1]["status"] == "ok"


def test_not_ready_while_the_receiver_is_not_listening() -> None:
    app = _app()
    app.state.service = SimpleNamespace(is_ready=False, role="decode")
    status, body = _get(app, "/ready")
    assert status == 503
    assert "KV receiver" in body["reason"]


@pytest.mark.parametrize("service", [SimpleNamespace(is_ready=True), SimpleNamespace()])
def test_ready_while_serving(service: Any) -> None:
    """A service without `is_ready` (a prefill instance) is ready once it exists."""
    app = _app()
    app.state.service = service
    assert _get(app, "/ready") == (200, {"ready": True, "instance": "d0", "reason": None})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_signal_makes_the_instance_draining(sig: signal.Signals) -> None:
    app = _app()
    app.state.service = SimpleNamespace(is_ready=True)
    server = DrainingServer(uvicorn.Config(app), app)
    server.handle_exit(sig, None)
    assert server.should_exit  # uvicorn's own handling still happens
    assert not_ready_reason(app) == "draining"
    status, body = _get(app, "/ready")
    assert (status, body["reason"]) == (503, "draining")
    assert _get(app, "/health") == (200, {"status": "ok", "instance": "d0", "role": "decode"})
