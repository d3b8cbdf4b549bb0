"""The long-timescale controller, live: real router and instance processes (emulated engines),
driven ticks, a threshold update and a role change carried out end to end.

The router's decisions are checked against the pure `AdaptiveController` fed the same inputs
offline (the one `prfaas sim` runs), the converted instance serves in its new role, and the
counters move. A negative control: a run without `[controller]` keeps its threshold and roles.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from controller_harness import INITIAL_THRESHOLD, MAX_TOKENS, TOKEN, Live, start_live
from services_harness import get_text, metric_value, wait_for

from prfaas.policy.controller import AdaptiveController, Measurements, decision_dict
from prfaas.topology import Topology
from prfaas.topology.derived import planner_inputs

pytestmark = pytest.mark.slow


def _lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(12000, max(200, int(rng.lognormvariate(8.0, 0.8)))) for _ in range(n)]


def _expected(topology: Topology, script: list[tuple[str, float, Any]]) -> list[dict[str, Any]]:
    """The pure controller fed the script offline: what the router must decide."""
    inputs, _ = planner_inputs(topology)
    controller = AdaptiveController(
        topology.controller.config,
        inputs.stage_costs(inputs.prfaas, inputs.pd),
        1,
        INITIAL_THRESHOLD,
    )
    link_bytes_per_s, roles, decisions = inputs.link_bytes_per_s, [1, 2], []
    for kind, at_s, value in script:
        if kind == "request":
            controller.observe(at_s, value)
        elif kind == "link":
            link_bytes_per_s = value * 1e9 / 8
        else:
            measured = Measurements(
                link_bytes_per_s, inputs.t_decode_step_s, MAX_TOKENS, roles[0], roles[1]
            )
            for d in controller.tick(at_s, measured):
                decisions.append(decision_dict(d))
                if d.kind == "role_change":
                    step = d.num_instances if d.to_role == "pd_prefill" else -d.num_instances
                    roles = [roles[0] + step, roles[1] - step]
    return decisions


def _summary(decisions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (d["kind"], d["at_s"], round(d.get("new_threshold_tokens", 0.0), 3), d.get("to_role"))
        for d in decisions
    ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    system = start_live(tmp_path_factory.mktemp("controller"), with_controller=True)
    yield system
    system.launcher.stop()


def test_router_carries_out_the_controllers_decisions(live: Live) -> None:
    script: list[tuple[str, float, Any]] = []
    for k, n in enumerate(_lengths(16, seed=0)):
        script.append(("request", 0.5 * k, n))
    script.append(("tick", 10.0, None))
    for k, n in enumerate(_lengths(12, seed=1)):
        script.append(("request", 10.5 + 0.5 * k, n))
    script.append(("link", 17.0, 1.0))
    script.append(("tick", 20.0, None))

    decisions: list[dict[str, Any]] = []
    routes: list[str] = []
    for kind, at_s, value in script:
        if kind == "request":
            live.post("/internal/control/clock", {"at_s": at_s}, internal=True)
            reply = live.complete(value, seed=int(at_s * 10))
            assert reply["usage"]["completion_tokens"] == MAX_TOKENS
            routes.append(reply["prfaas"]["route"])
        elif kind == "link":
            live.post("/internal/control/link", {"gbps": value}, internal=True)
        else:
            answer = live.post("/internal/control/tick", {"at_s": at_s}, internal=True)
            decisions += answer["decisions"]
            wait_for(lambda: live.control()["num_converting"] == 0, 120, "conversions to end")

    expected = _expected(live.topology, script)
    assert _summary(decisions) == _summary(expected)
    kinds = [d["kind"] for d in decisions]
    assert "role_change" in kinds and "threshold" in kinds, decisions
    # before the first tick t = 100000: nothing offloaded; after it, the long prompts are
    assert routes[:16] == ["pd_prefill"] * 16
    assert "prfaas" in routes[16:]

    status = live.control()
    assert status["threshold_tokens"] == pytest.approx(expected[-1]["new_threshold_tokens"])
    changes = [d for d in decisions if d["kind"] == "role_change"]
    to_prefill = sum(d["num_instances"] for d in changes if d["to_role"] == "pd_prefill")
    to_decode = sum(d["num_instances"] for d in changes if d["to_role"] == "pd_decode")
    assert (status["num_pd_p"], status["num_pd_d"]) == (
        1 + to_prefill - to_decode,
        2 - to_prefill + to_decode,
    )
    converted = [c["instance"] for c in status["conversions"]]
    assert all("done_at_s" in c for c in status["conversions"])
    for conversion in status["conversions"]:
        role = live.instance_stats(conversion["instance"])["role"]
        assert role == conversion["to_role"]

    metrics = get_text(live.url + "/metrics")
    assert metric_value(metrics, "prfaas:threshold_updates_total") == kinds.count("threshold")
    assert metric_value(metrics, "prfaas:role_changes_total", to_role="prefill") == to_prefill
    assert metric_value(metrics, "prfaas:threshold_tokens") == pytest.approx(
        status["threshold_tokens"]
    )
    assert converted, "a role change was decided but no instance was converted"


def test_converted_instance_serves_in_its_new_role(live: Live) -> None:
    """Concurrent short prompts spread over both PD prefill instances, the converted one too;
    it moves KV to the remaining decode instance as a prefill instance does."""
    status = live.control()
    converted = [c["instance"] for c in status["conversions"] if c["to_role"] == "prefill"]
    assert converted, status
    name = converted[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda k: live.complete(300, seed=1000 + k), range(8)))
    used = {r["prfaas"]["prefill_instance"] for r in replies}
    assert name in used, used
    http = live.topology.instance(name).http
    text = get_text(f"http://{http}/metrics")
    assert metric_value(text, "prfaas:kv_transfer_bytes_total") > 0
    decoders = {r["prfaas"]["decode_instance"] for r in replies}
    assert name not in decoders


def test_role_change_api_refuses_bad_input(live: Live) -> None:
    http = live.topology.instance("pd-p0").http
    request = urllib.request.Request(
        f"http://{http}/internal/role",
        json.dumps({"role": "router"}).encode(),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as info:
        live.post("/internal/control/tick", {"at_s": 1.0}, internal=True)  # time went backwards
    assert info.value.code == 409
    with pytest.raises(urllib.error.HTTPError) as info:
        live.post("/internal/control/link", {"gbps": "nan"}, internal=True)
    assert info.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as info:
        live.post("/internal/control/tick", {"at_s": 100.0})  # no token
    assert info.value.code == 401


def test_without_controller_threshold_and_roles_stay(tmp_path: Path) -> None:
    """Negative control: the same traffic without `[controller]` changes nothing."""
    system = start_live(tmp_path, with_controller=False)
    try:
        for k, n in enumerate(_lengths(12, seed=0)):
            assert system.complete(n, seed=k)["prfaas"]["route"] == "pd_prefill"
        with pytest.raises(urllib.error.HTTPError) as info:
            system.post("/internal/control/tick", {"at_s": 10.0}, internal=True)
        assert info.value.code == 404
        metrics = get_text(system.url + "/metrics")
        assert metric_value(metrics, "prfaas:threshold_tokens") == INITIAL_THRESHOLD
        assert metric_value(metrics, "prfaas:role_changes_total") == 0
        assert system.instance_stats("pd-d0")["role"] == "decode"
    finally:
        system.launcher.stop()
