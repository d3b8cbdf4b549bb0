"""Several prefill providers through the live services: a router, providers "cheap" (1 $/GPU-h,
slower H100 preset) and "fast" (3 $/GPU-h, faster B200 preset), and one PD cluster, all as
processes with emulated engines on loopback.

Long requests overlap: each is sent once the router's polls show the previous one queued at its
provider. The first goes to cheap, whose predicted TTFT meets the target while it is idle; the
next sees cheap's queue push its TTFT past the target and goes to fast. Every decision's reason
names the costs it compared, the route log line, the `prfaas` field and the route counter name
the provider, and every answer is complete. With a target no provider can miss, every long
request goes to cheap (the negative control).

Times (wall, `time_scale` 0.1): a 1000-token prefill takes 3 s on cheap and 1.5 s on fast; the
target is 4.5 s, so cheap alone meets it and cheap behind one queued request (6 s) does not.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from services_harness import System, get_json, get_text, launch, metric_value

from polling import wait_until
from topologies import TopologySpec, two_providers

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 300.0
WAIT_S = 60.0  # for the router's polls to show a request queued (a pass waits ~0.3 s)
TIME_SCALE = 0.1
NUM_LONG = 1000  # tokens of each long prompt
NUM_REQUESTS = 3
MAX_TOKENS = 4
TTFT_TARGET_S = 4.5  # wall seconds: cheap alone 3 s meets it, cheap behind one request does not
LATENCIES = (  # model seconds per token: x 1000 tokens x time_scale = cheap 3 s, fast 1.5 s
    ("b200", "quadratic:0,0.015,0"),  # fast
    ("h100", "quadratic:0,0.03,0"),  # cheap
    ("h20", "quadratic:0,0.12,0"),  # PD
)


def _start(tmp: Path, ttft_target_s: float) -> System:
    spec = TopologySpec(
        two_providers(),
        engine="emulated",
        time_scale=TIME_SCALE,
        payload_scale=1e-3,
        prefill_latency=LATENCIES,
        threshold=64,
        ttft_target_s=ttft_target_s,
        token="providers-test-token",
    )
    return launch(spec.write(tmp), tmp / "logs", READY_TIMEOUT_S)


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = _start(tmp_path_factory.mktemp("providers-tight"), TTFT_TARGET_S)
    try:
        yield system
    finally:
        system.launcher.stop()


@pytest.fixture(scope="module")
def loose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = _start(tmp_path_factory.mktemp("providers-loose"), 86400.0)
    try:
        yield system
    finally:
        system.launcher.stop()


def _complete(system: System, k: int) -> dict[str, Any]:
    """A long completion (prompt token ids of its own); the response's JSON."""
    prompt = [11 + (k * 7 + i) % 200 for i in range(NUM_LONG)]
    body = {"model": system.model, "prompt": prompt, "max_tokens": MAX_TOKENS}
    reply = httpx.post(f"{system.url}/v1/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def _dashboard(system: System) -> dict[str, Any]:
    state: dict[str, Any] = get_json(f"{system.url}/dashboard/state")
    return state


def _polled_queue(state: dict[str, Any], instance: str) -> int:
    """The prompt tokens queued at `instance` as the router's last poll of it reported."""
    rows = [i for c in state["clusters"] for i in c["instances"] if i["name"] == instance]
    return int(rows[0]["num_queued_tokens"])


def _is_queued_where_routed(system: System, num_routed: int) -> bool:
    """The router has routed `num_routed` requests, and its last poll of the newest one's
    prefill instance shows that request queued there."""
    state = _dashboard(system)
    if len(state["routes"]) < num_routed:
        return False
    newest = state["routes"][0]["prefill_instance"]
    return newest is not None and _polled_queue(state, newest) > 0


def _send_overlapping(system: System) -> list[dict[str, Any]]:
    """`NUM_REQUESTS` long completions, each sent once the router has seen the previous one
    queued at its prefill instance; their answers, in sending order."""
    futures: list[Future[dict[str, Any]]] = []
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        for k in range(NUM_REQUESTS):
            futures.append(pool.submit(_complete, system, k))
            wait_until(
                functools.partial(_is_queued_where_routed, system, k + 1),
                WAIT_S,
                f"request {k} routed and queued as the router's polls see it",
                period_s=0.02,
            )
        return [f.result() for f in futures]


def _assert_complete(answer: dict[str, Any]) -> None:
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == MAX_TOKENS
    assert answer["prfaas"]["kv_bytes"] > 0


def _logged_providers(system: System) -> dict[str, str | None]:
    lines = [x for x in system.log("router").splitlines() if '"event": "route"' in x]
    fields = [json.loads(x.split(": ", 1)[1]) for x in lines]
    return {f["req_id"]: f["provider"] for f in fields}


def test_a_queued_cheap_provider_gives_way_to_the_fast_one(tight: System) -> None:
    answers = _send_overlapping(tight)
    infos = [a["prfaas"] for a in answers]
    providers = [i["provider"] for i in infos]
    assert providers[0] == "cheap", infos
    assert set(providers) == {"cheap", "fast"}, infos
    for answer, info in zip(answers, infos, strict=True):
        _assert_complete(answer)
        assert info["route"] == "prfaas"
        assert info["prefill_instance"] == f"{info['provider']}-p0"
        assert info["reason"].startswith(f"cheapest: provider {info['provider']} $"), info
        assert " vs " in info["reason"] and info["reason"].count("$") == 2, info
    first_fast = infos[providers.index("fast")]
    assert "vs cheap $" in first_fast["reason"] and "> 4.5 s" not in first_fast["reason"]
    # the reason is in the model's seconds (wall / time_scale): target 45 s
    assert "(ttft" in first_fast["reason"] and "> 45 s)" in first_fast["reason"], first_fast
    logged = _logged_providers(tight)
    assert [logged[a["id"]] for a in answers] == providers
    metrics = get_text(f"{tight.url}/metrics")
    name = "prfaas:route_decisions_total"
    for provider in ("cheap", "fast"):
        count = metric_value(metrics, name, route="prfaas", reason="cheapest", provider=provider)
        assert count == providers.count(provider)


def test_a_target_no_provider_misses_sends_everything_to_the_cheap_one(loose: System) -> None:
    answers = _send_overlapping(loose)
    infos = [a["prfaas"] for a in answers]
    assert [i["provider"] for i in infos] == ["cheap"] * NUM_REQUESTS, infos
    for answer, info in zip(answers, infos, strict=True):
        _assert_complete(answer)
        assert (
            info["reason"].startswith("cheapest: provider cheap $")
            and " vs fast $" in info["reason"]
        )
