"""`prfaas status`'s report, against small stdlib HTTP servers standing in for the router and the
instances: health joins the router's view and the instance's own answer, the token is sent,
queues and link views come from `/internal/stats`, and the CLI's exit status says all ready."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main
from prfaas.launch.local import free_port
from prfaas.launch.ray_placement import Member
from prfaas.launch.status import collect_status
from prfaas.messages import InstanceStats
from topologies import Node, TopologySpec, decode, pd, prfaas

TOKEN = "status-test-token"
KV_DEST = "127.0.0.1:19999"


class Fake:
    """One HTTP server answering fixed JSON per path; counts the bearer tokens it saw."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        self.routes = routes
        self.tokens: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.tokens.append(self.headers.get("Authorization", ""))
                if (
                    self.path.startswith("/internal/")
                    and self.headers.get("Authorization") != f"Bearer {TOKEN}"
                ):
                    status, body = 401, {"error": "token"}
                else:
                    status, body = fake.routes.get(self.path, (404, {"error": "none"}))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _stats(name: str, role: str, links: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return InstanceStats(name, role, 2, 1, 300, 0.5, links=links).to_dict()


LINK = {
    "dest": KV_DEST,
    "num_connections": 2,
    "rtt_s": 0.004,
    "min_rtt_s": 0.001,
    "delivery_rate_bytes_per_s": 5e8,
    "goodput_bytes_per_s": 2.5e8,
    "total_retransmits": 0,
    "num_transfers": 3,
    "num_failures": 1,
    "queued_bytes": 1 << 20,
    "bytes_sent": 1000,
    "bytes_retransmitted": 10,
}


@pytest.fixture
def fakes() -> Iterator[dict[str, Fake]]:
    servers = {
        "r0": Fake({"/internal/stats": (200, _stats("r0", "prefill", (LINK,)))}),
        "d0": Fake({"/internal/stats": (200, _stats("d0", "decode"))}),
    }
    ready = {"ready": False, "instances": {"r0": True, "d0": False, "p0": False}}
    servers["router"] = Fake({"/ready": (503, ready)})
    yield servers
    for server in servers.values():
        server.close()


def _members(fakes: dict[str, Fake], dead_port: int) -> list[Member]:
    return [
        Member("r0", "remote", "prefill", fakes["r0"].address, None, "10.0.0.1 (aaaa)"),
        Member("p0", "local", "prefill", f"127.0.0.1:{dead_port}", None, "10.0.0.2 (bbbb)"),
        Member("d0", "local", "decode", fakes["d0"].address, KV_DEST, "10.0.0.2 (bbbb)"),
    ]


def test_report_joins_router_view_and_instance_stats(fakes: dict[str, Fake]) -> None:
    members = _members(fakes, free_port())
    url = f"http://{fakes['router'].address}"
    report = collect_status(url, members, TOKEN, 1e9, ["remote"], timeout_s=2.0)
    assert report["router"]["state"] == "not ready" and report["all_ready"] is False
    by_name = {i["name"]: i for i in report["instances"]}
    assert by_name["r0"]["health"] == "ready"
    assert by_name["p0"]["health"] == "unreachable" and by_name["p0"]["queue"] is None
    assert by_name["d0"]["health"] == "answers, router: down"
    assert by_name["r0"]["queue"]["num_requests_waiting"] == 2
    assert by_name["r0"]["queue"]["num_queued_tokens"] == 300
    assert by_name["r0"]["node"] == "10.0.0.1 (aaaa)"
    (link,) = by_name["r0"]["links"]
    assert link["dest"] == KV_DEST and link["backlog_bytes"] == float(1 << 20)
    assert link["utilization"] == pytest.approx(0.25)  # min(delivery, goodput) / capacity
    assert link["retransmit_rate"] == pytest.approx(0.01)
    assert report["offload_link"]["backlog_bytes"] == float(1 << 20)
    assert fakes["r0"].tokens == [f"Bearer {TOKEN}"]


def test_a_wrong_token_is_reported_not_hidden(fakes: dict[str, Fake]) -> None:
    members = _members(fakes, free_port())
    url = f"http://{fakes['router'].address}"
    report = collect_status(url, members, "wrong", 1e9, ["remote"], timeout_s=2.0)
    assert {i["health"] for i in report["instances"]} == {"refused the token", "unreachable"}
    assert report["offload_link"] is None


def test_status_command_exit_status_and_json(
    fakes: dict[str, Fake], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All ready: exit 0; the table names every instance. Then one goes away: exit 1."""
    fakes["router"].routes["/ready"] = (200, {"ready": True, "instances": {"r0": True, "d0": True}})
    spec = TopologySpec(
        clusters=(
            prfaas(Node("r0", http=fakes["r0"].address), name="remote"),
            pd(decode("d0", http=fakes["d0"].address, kv=KV_DEST), name="local"),
        ),
        router_http=fakes["router"].address,
        token=TOKEN,
    )
    topology = spec.write(tmp_path, "t.toml")
    assert main(["status", "--config", str(topology)]) == 0
    out = capsys.readouterr().out
    assert "router http://" in out and "ready" in out and "r0" in out and "d0" in out
    assert "PrfaaS -> PD link" in out
    fakes["d0"].close()
    assert main(["status", "--config", str(topology), "--json", "--timeout", "1"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [i["health"] for i in report["instances"]] == ["ready", "unreachable"]


def test_status_takes_at_most_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    """Without either, the running local `prfaas up` (tests/unit/launch/test_local_record.py)."""
    assert main(["status", "--config", "t.toml", "--deployment", "d.json"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
