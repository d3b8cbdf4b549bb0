"""The router's `/internal/control*` routes on a stand-in service: `link` is served with or
without a `[controller]` (the monitor's capacity changes), the others need one, all need the token.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prfaas.router.control_routes import add_control_routes
from prfaas.service.auth import TOKEN_ENV

TOPOLOGY_BYTES_PER_S = 1e9 / 8  # the topology's 1 Gbps


class _Controller:
    """Records the monitor's capacity each time the route tells it the capacity changed."""

    def __init__(self, monitor: SimpleNamespace) -> None:
        self.monitor = monitor
        self.capacities: list[float] = []

    def link_capacity_changed(self) -> None:
        self.capacities.append(self.monitor.link_capacity_bytes_per_s)


def _client(token: str | None, with_controller: bool) -> tuple[TestClient, SimpleNamespace]:
    monitor = SimpleNamespace(link_capacity_bytes_per_s=TOPOLOGY_BYTES_PER_S)
    service = SimpleNamespace(
        topology=SimpleNamespace(transport=SimpleNamespace(token=token), providers=()),
        monitor=monitor,
        control=_Controller(monitor) if with_controller else None,
    )
    app = FastAPI()
    add_control_routes(app)
    app.state.service = service
    return TestClient(app), service


@pytest.fixture(autouse=True)
def _no_token_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def test_a_router_without_controller_takes_a_new_link_capacity() -> None:
    client, service = _client("secret", with_controller=False)
    reply = client.post("/internal/control/link", json={"gbps": 0.25})
    assert reply.status_code == 200, reply.text
    assert service.monitor.link_capacity_bytes_per_s == pytest.approx(0.25e9 / 8)
    assert reply.json() == {"link_bytes_per_s": pytest.approx(0.25e9 / 8)}


def test_a_router_with_controller_sets_the_capacity_through_it() -> None:
    client, service = _client("secret", with_controller=True)
    assert client.post("/internal/control/link", json={"gbps": 8}).status_code == 200
    assert service.control.capacities == [pytest.approx(1e9)]
    assert service.monitor.link_capacity_bytes_per_s == pytest.approx(1e9)


@pytest.mark.parametrize("body", [{"gbps": "nan"}, {"gbps": 0}, {"rate": 1}, [1]])
def test_a_bad_link_body_is_refused_and_changes_nothing(body: Any) -> None:
    client, service = _client("secret", with_controller=False)
    assert client.post("/internal/control/link", json=body).status_code == 400
    assert service.monitor.link_capacity_bytes_per_s == TOPOLOGY_BYTES_PER_S


def test_without_a_deployment_token_link_is_refused() -> None:
    client, service = _client(None, with_controller=False)
    assert client.post("/internal/control/link", json={"gbps": 1}).status_code == 403
    assert service.monitor.link_capacity_bytes_per_s == TOPOLOGY_BYTES_PER_S


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/internal/control"),
        ("post", "/internal/control/clock"),
        ("post", "/internal/control/tick"),
    ],
)
def test_the_other_endpoints_need_a_controller(method: str, path: str) -> None:
    client, _ = _client("secret", with_controller=False)
    reply = client.request(method.upper(), path, json={"at_s": 1.0})
    assert reply.status_code == 404 and "[controller]" in reply.text
