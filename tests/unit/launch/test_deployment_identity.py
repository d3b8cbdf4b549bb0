"""`prfaas up` counts only its own router as ready: another deployment already answering `/ready`
on the router's port neither passes the readiness check nor lets `up` print that it is up; `up`
refuses the taken port in one line before it starts anything."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prfaas.errors import UserError
from prfaas.launch.local import (
    EmbeddedOptions,
    check_router_port,
    embedded_topology,
    router_is_ready,
)
from prfaas.topology import load_topology

OTHER_ID = "0123456789abcdef"


class _OtherRouter(BaseHTTPRequestHandler):
    """The router of another deployment: ready, with its own id."""

    def do_GET(self) -> None:
        body = json.dumps({"ready": True, "instances": {}, "deployment": OTHER_ID}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def other_router() -> Iterator[int]:
    """The port of a ready router of another deployment on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherRouter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_ready_counts_only_the_router_with_our_id(other_router: int) -> None:
    url = f"http://127.0.0.1:{other_router}"
    assert router_is_ready(url)
    assert router_is_ready(url, OTHER_ID)
    assert not router_is_ready(url, "fedcba9876543210")


def test_a_taken_router_port_is_refused_naming_it(other_router: int, tmp_path: Path) -> None:
    options = EmbeddedOptions(router_port=other_router, engine="emulated")
    topology = load_topology(embedded_topology(tmp_path, options))
    with pytest.raises(UserError, match=f"port {other_router} .*address already in use"):
        check_router_port(topology)


def test_up_on_a_taken_port_fails_in_one_line_without_saying_up(other_router: int) -> None:
    """Before anything starts: exit 2, one line naming the port, no "PrfaaS is up"."""
    up = ["up", "--engine", "emulated", "--port", str(other_router)]
    cmd = [sys.executable, "-m", "prfaas", *up]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert "is up" not in done.stdout, done.stdout
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {other_router} (127.0.0.1:{other_router})" in lines[0]
    assert "address already in use" in lines[0]
