"""The router app on a test client, shared by the router's unit tests: `prfaas up`'s embedded
topology with emulated engines and one API key (`ROUTER_API_KEY`); no instance runs, so every
instance reads as not ready."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from prfaas.launch.local import EmbeddedOptions, embedded_topology
from prfaas.router.app import build_router_app
from prfaas.topology import Topology, load_topology
from topologies import ROUTER_API_KEY


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    options = EmbeddedOptions(router_port=8000, engine="emulated", api_keys=(ROUTER_API_KEY,))
    return load_topology(embedded_topology(tmp_path_factory.mktemp("router"), options))


@pytest.fixture(scope="module")
def client(topology: Topology) -> Iterator[TestClient]:
    with TestClient(build_router_app(topology)) as test_client:
        yield test_client
