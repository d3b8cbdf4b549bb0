"""The dashboard's state: the JSON `/dashboard/state` answers on a router app (no instances, so
every instance reads as starting), its key check, the link as measured or not, and the history's
ring buffers staying bounded however much is recorded."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from fastapi.testclient import TestClient

from polling import wait_until
from prfaas.messages import InstanceStats
from prfaas.policy.control_types import ControlInputs, ThresholdUpdate, decision_dict
from prfaas.router import dashboard_history as history
from prfaas.router.dashboard import link_state
from prfaas.router.dashboard_history import DashboardHistory, RouteRecord, percentiles
from prfaas.router.monitor import ClusterMonitor
from prfaas.topology import Topology
from topologies import ROUTER_API_KEY, Node, TopologySpec, decode, pd, prfaas

AUTH = {"Authorization": f"Bearer {ROUTER_API_KEY}"}
DEST = "127.0.0.1:18301"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _route(at_s: float, route: str = "prfaas", n: int = 0) -> RouteRecord:
    return RouteRecord(at_s, f"req-{n}", route, f"{route}-rule: n={n}", None, "d0", 100 + n, 100)


def test_the_page_is_served_without_a_key_and_carries_no_data(client: TestClient) -> None:
    reply = client.get("/dashboard")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert 'fetch("dashboard/state"' in reply.text
    assert "http://" not in reply.text.replace("http://www.w3.org/2000/svg", "")


def test_state_wants_the_api_key(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = client.get("/dashboard/state", headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/dashboard/state", headers=AUTH).status_code == 200


def test_state_lists_every_instance_by_cluster_and_the_decisions(
    client: TestClient, topology: Topology
) -> None:
    service: Any = client.app.state.service  # type: ignore[attr-defined]
    service.dashboard.record_route(_route(service.dashboard.clock(), n=7))
    state = client.get("/dashboard/state", headers=AUTH).json()
    for key in ("now_s", "deployment", "threshold_tokens", "clusters", "link", "samples"):
        assert key in state
    assert state["threshold_tokens"] == topology.policy.threshold_tokens
    names = [i["name"] for c in state["clusters"] for i in c["instances"]]
    assert names == [i.name for i in topology.instances]
    row = state["clusters"][0]["instances"][0]
    assert row["health"] in ("starting", "down") and row["role"] == "prefill"
    assert state["routes"][0]["reason"] == "prfaas-rule: n=7"
    assert state["link"]["measured"] is False and state["link"]["rtt_s"] is None
    # the poller samples after each round, even with no instance answering
    wait_until(
        lambda: bool(client.get("/dashboard/state", headers=AUTH).json()["samples"]),
        30.0,
        "a dashboard sample",
    )


def _link_stats() -> InstanceStats:
    link = {
        "dest": DEST,
        "num_connections": 2,
        "rtt_s": 0.004,
        "min_rtt_s": 0.001,
        "delivery_rate_bytes_per_s": 5e8,
        "goodput_bytes_per_s": 5e8,
        "total_retransmits": 3,
        "num_transfers": 3,
        "num_failures": 0,
        "bytes_sent": 1000,
        "bytes_retransmitted": 0,
    }
    return InstanceStats("r0", "prefill", 0, 0, 0, 0.0, links=(link,))


def test_the_link_reads_measured_once_a_prfaas_instance_reports_a_connection() -> None:
    clusters = (prfaas(Node("r0")), pd(Node("p0"), decode("d0", kv=DEST)))
    topology = TopologySpec(clusters, link_gbps=8, token="t", port_base=18000).topology()
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    before = link_state(monitor)
    assert before is not None and not before["measured"] and before["rtt_s"] is None
    monitor.states["r0"].stats = _link_stats()
    after = link_state(monitor)
    assert after is not None and after["measured"] and after["num_connections"] == 1
    assert after["rtt_s"] == pytest.approx(0.004)
    assert after["capacity_bytes_per_s"] == pytest.approx(1e9)


def test_every_buffer_stays_bounded() -> None:
    clock = FakeClock()
    h = DashboardHistory(clock)
    for n in range(history.NUM_LATENCIES + 100):
        clock.now_s += history.SAMPLE_PERIOD_S
        h.record_route(_route(clock.now_s, n=n))
        h.record_ttft(0.1)
        h.record_itl(0.01)
        h.record_control({"kind": "role_change_done", "instance": "x", "reason": "r"})
        h.maybe_sample(64.0, 0.5)
    snapshot = h.snapshot()
    assert len(snapshot["routes"]) == history.NUM_ROUTES
    assert snapshot["routes"][0]["req_id"] == f"req-{history.NUM_LATENCIES + 99}"  # newest first
    assert len(snapshot["events"]) == history.NUM_EVENTS
    assert len(snapshot["samples"]) == history.NUM_SAMPLES
    assert len(h.ttft_s) == len(h.itl_s) == history.NUM_LATENCIES
    assert len(h.offloaded) == history.NUM_RATIO_DECISIONS


def test_a_sample_per_period_with_the_recent_window_only() -> None:
    clock = FakeClock()
    h = DashboardHistory(clock)
    h.record_route(_route(clock.now_s, "pd_prefill"))
    for value in (0.5, 1.0, 2.0):
        h.record_ttft(value)
    clock.now_s += history.LATENCY_WINDOW_S + 1  # those fall out of the windows
    h.record_route(_route(clock.now_s, "prfaas"))
    h.record_route(_route(clock.now_s, "pd_prefill"))
    h.record_ttft(0.2)
    first = h.maybe_sample(64.0, None)
    assert first is not None
    assert first["offload_ratio"] == pytest.approx(0.5)
    assert first["ttft_s"] == {"p50": 0.2, "p90": 0.2, "p99": 0.2}
    assert first["itl_s"] is None
    clock.now_s += history.SAMPLE_PERIOD_S / 2
    assert h.maybe_sample(64.0, None) is None  # not yet a period since the last one
    clock.now_s += history.SAMPLE_PERIOD_S / 2
    assert h.maybe_sample(80.0, 0.1) is not None


def test_percentiles_by_nearest_rank() -> None:
    assert percentiles([float(v) for v in range(100, 0, -1)]) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
    }
    assert percentiles([]) is None


def test_a_threshold_decision_becomes_one_event_line() -> None:
    inputs = ControlInputs(**{f.name: 0 for f in fields(ControlInputs)})
    decision = ThresholdUpdate(12.0, 100000.0, 2345.0, "eq7: t for the new split", inputs)
    h = DashboardHistory(FakeClock())
    h.record_control(decision_dict(decision))
    (event,) = h.snapshot()["events"]
    assert event["kind"] == "threshold"
    assert event["detail"] == "t 100000 -> 2345 tokens"
    assert event["reason"] == "eq7: t for the new split"
