"""Router / simulator parity: one scripted workload (arrival times, prompts that share prefixes,
a link drop) through the live router and instances (emulated engines, prefix caches, driven
controller) and through the simulator built from the same topology gives the same routing
decisions, threshold updates and role changes.

Arrivals are spaced so that every request finds idle queues and an idle link in both (checked on
both sides: the comparison would otherwise depend on timing, not on policy), so what routes a
request is its length, the prefixes cached in each cluster, t and the link's capacity.
"""

from __future__ import annotations

import heapq
import random
from pathlib import Path
from typing import Any

import pytest
from controller_harness import MAX_TOKENS, TOKEN, Live, start_live
from services_harness import get_json, wait_for

from prfaas.prefix_cache.hashing import block_hashes
from prfaas.sim.config import SimRequest
from prfaas.sim.link import BandwidthStep
from prfaas.sim.simulator import Simulator
from prfaas.topology.sim_config import sim_config_of

pytestmark = pytest.mark.slow
BLOCK_TOKENS = 64
PERIOD_S = 60.0
SPACING_S = 5.0
LINK_DROP = (100.0, 1.0)  # at 100 s the link falls from 10 to 1 Gbps
LINK_HOLD_S = 15.0  # the controller acts on it at 115 s, between two ticks


def _script(seed: int = 0) -> tuple[list[tuple[float, list[int]]], list[float]]:
    """(arrival time, prompt) of every request, and the tick times. Conversations grow by
    appending to their prompt (never a multiple of the block size: the exact-length rule for
    fixed-size states then matches the simulator's block count)."""
    rng = random.Random(seed)

    def grow(prompt: list[int], lo: int, hi: int) -> list[int]:
        prompt = prompt + [rng.randrange(10, 250) for _ in range(rng.randrange(lo, hi))]
        if len(prompt) % BLOCK_TOKENS == 0:
            prompt.append(rng.randrange(10, 250))
        return prompt

    short = [grow([], 300, 3000) for _ in range(5)]  # conversations that stay local
    long = [grow([], 5000, 8000) for _ in range(3)]  # their first turn arrives before t drops
    late = [grow([], 5000, 8000) for _ in range(3)]  # first turn after t dropped: offloaded
    order: list[tuple[str, int]] = [("short", i) for i in range(5)] + [
        ("long", i) for i in range(3)
    ]
    order += [("short", 0), ("short", 1), ("long", 0)]  # before the first tick at 60 s
    order += [("late", 0), ("late", 1), ("short", 2), ("late", 0), ("late", 2), ("long", 1)]
    order += [("late", 1), ("short", 3), ("late", 0), ("late", 2), ("short", 4), ("long", 2)]
    order += [("late", 1), ("short", 0)]
    turns = {"short": short, "long": long, "late": late}
    requests, seen = [], set()
    for k, (group, i) in enumerate(order):
        convo = turns[group]
        if (group, i) in seen:
            convo[i] = grow(convo[i], 30, 300)
        seen.add((group, i))
        requests.append((SPACING_S * (k + 1), list(convo[i])))
    ticks = [PERIOD_S * n for n in range(1, int(requests[-1][0] // PERIOD_S) + 1)]
    return requests, ticks


def _run_live(live: Live, requests: list[tuple[float, list[int]]], ticks: list[float]) -> Any:
    events: list[tuple[float, int, int, str, Any]] = [
        (at, 1, k, "request", prompt) for k, (at, prompt) in enumerate(requests)
    ]
    events += [(at, 0, -1, "tick", None) for at in ticks]
    events.append((LINK_DROP[0], 0, -1, "link", LINK_DROP[1]))
    heapq.heapify(events)
    routes, decisions = [], []
    while events:
        at_s, _, _, kind, value = heapq.heappop(events)
        if kind == "link":  # the simulator's controller decides at a bandwidth step: so here
            live.post("/internal/control/link", {"gbps": value}, internal=True)
            answer = live.post("/internal/control/tick", {"at_s": at_s}, internal=True)
            decisions += answer["decisions"]
            # and once the drop held `link_hold_s`, as the simulator's wake
            assert answer["wake_at_s"] == at_s + LINK_HOLD_S
            heapq.heappush(events, (answer["wake_at_s"], 0, -1, "tick", None))
        elif kind == "tick":
            decisions += live.post("/internal/control/tick", {"at_s": at_s}, internal=True)[
                "decisions"
            ]
            wait_for(lambda: live.control()["num_converting"] == 0, 120, "conversions to end")
        else:
            _quiesce(live)
            live.post("/internal/control/clock", {"at_s": at_s}, internal=True)
            reply = live.complete_ids(value)
            assert reply["usage"]["completion_tokens"] == MAX_TOKENS
            routes.append(reply["prfaas"])
    return routes, decisions


def _quiesce(live: Live) -> None:
    """Wait until the router sees an idle link and has read every instance's cache events."""

    def idle() -> bool:
        status = live.control()
        return not status["link_utilization"] and all(
            _last_seq(live, name, cursor["epoch"]) == cursor["seq"]
            for name, cursor in status["prefix_index"].items()
        )

    wait_for(idle, 60, "an idle link and an up-to-date global KV index", period_s=0.1)


def _last_seq(live: Live, name: str, epoch: str) -> int:
    http = live.topology.instance(name).http
    body = get_json(
        f"http://{http}/internal/kv_events?after=0&epoch={epoch}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    return int(body["last_seq"])


def _run_sim(live: Live, requests: list[tuple[float, list[int]]]) -> Simulator:
    bandwidth = [BandwidthStep(0.0, live.topology.link.gbps), BandwidthStep(*LINK_DROP)]
    config = sim_config_of(live.topology, bandwidth)
    sim_requests = [
        SimRequest(at, len(prompt), MAX_TOKENS, tuple(block_hashes(prompt, BLOCK_TOKENS)))
        for at, prompt in requests
    ]
    sim = Simulator(config, sim_requests)
    sim.run()
    return sim


def _decision_key(d: dict[str, Any]) -> tuple[Any, ...]:
    return (
        str(d["kind"]),
        d["at_s"],
        round(float(d.get("new_threshold_tokens", 0.0)), 3),
        None if d.get("to_role") is None else str(d["to_role"]),
        d.get("num_instances"),
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    system = start_live(
        tmp_path_factory.mktemp("parity"),
        with_controller=True,
        period_s=PERIOD_S,
        prefix_block_tokens=BLOCK_TOKENS,
        link_hold_s=LINK_HOLD_S,
    )
    yield system
    system.launcher.stop()


def test_router_and_simulator_decide_alike(live: Live, tmp_path: Path) -> None:
    requests, ticks = _script()
    routes, decisions = _run_live(live, requests, ticks)
    sim = _run_sim(live, requests)

    records = sorted(sim.decision_log, key=lambda r: r.req_index)
    assert len(records) == len(routes) == len(requests)
    for record in records:  # the simulator's side of "idle": empty queues, idle link
        assert record.link.utilization == 0.0 and record.link.backlog_bytes == 0.0
        queues = [*record.pd.prefill_instances, *record.prfaas.prefill_instances]
        assert all(q.num_queued_tokens == 0 for q in queues)
    sim_routes = [
        (str(r.decision.target), r.decision.reason.split(":")[0], r.decision.num_incremental_tokens)
        for r in records
    ]
    live_routes = [
        (r["route"], r["reason"].split(":")[0], r["num_incremental_tokens"]) for r in routes
    ]
    assert live_routes == sim_routes

    last_tick = ticks[-1]
    sim_decisions = [d for d in sim.control.summary()["decisions"] if d["at_s"] <= last_tick]
    assert [_decision_key(d) for d in decisions] == [_decision_key(d) for d in sim_decisions]

    # the script exercises every kind of decision, or the comparison proves little
    targets = {route for route, _, _ in live_routes}
    assert targets == {"prfaas", "pd_prefill"}, live_routes
    assert any(n < len(p) for (_, _, n), (_, p) in zip(live_routes, requests, strict=True))
    kinds = [str(d["kind"]) for d in decisions]
    assert kinds.count("threshold") >= 2 and "role_change" in kinds, kinds
    # the drop was acted on once it held, at the wake both sides scheduled
    assert LINK_DROP[0] + LINK_HOLD_S in [d["at_s"] for d in decisions], decisions


def test_a_different_link_drop_changes_the_simulators_decisions(live: Live) -> None:
    """Negative control: the comparison can fail. Without the link drop the simulator's
    decisions differ from the live run's above (which had it)."""
    requests, ticks = _script()
    config = sim_config_of(live.topology)  # the link stays at 10 Gbps
    sim_requests = [
        SimRequest(at, len(p), MAX_TOKENS, tuple(block_hashes(p, BLOCK_TOKENS)))
        for at, p in requests
    ]
    steady = Simulator(config, sim_requests)
    steady.run()
    dropped = _run_sim(live, requests)
    last = ticks[-1]
    keys = [
        [_decision_key(d) for d in s.control.summary()["decisions"] if d["at_s"] <= last]
        for s in (steady, dropped)
    ]
    assert keys[0] != keys[1]
