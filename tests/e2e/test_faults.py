"""Fault injection against the live system (`pytest -m faults`; also part of `make test`): real
router and instance processes of the tiny Qwen3-Next on 127.0.0.1, real TCP, failure policy
`recompute`, a short transfer deadline.

Each scenario sends a request, breaks something while it runs, and checks that the request
completes with the single-process engine's greedy output or fails with a clear error within its
deadline, that the decode instance holds no request and no receive-pool bytes afterwards, that
no process leaks file descriptors, that the right counters move, and that the system serves the
next request. (A PrfaaS prefill instance killed mid-prefill is in `test_services.py`, marked
`faults` too.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from services_harness import (
    LONG_PROMPT,
    SHORT_PROMPT,
    Reference,
    System,
    get_json,
    get_text,
    metric_value,
    start_system,
    wait_for,
)

from prfaas.nodes.launcher import router_is_ready

pytestmark = [pytest.mark.slow, pytest.mark.faults]
MAX_TOKENS = 12
DEADLINE_S = 8.0  # the transfer deadline: a stalled transfer gives up after this long
FD_SLACK = 8  # keep-alive connections may come and go
REPORT_ENV = "PRFAAS_FAULTS_REPORT"  # a JSON-lines file: each scenario's outcome and timings


def _record(scenario: str, **outcome: Any) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, **outcome}) + "\n")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = start_system(tmp_path_factory.mktemp("faults"), "qwen3_next", deadline_s=DEADLINE_S)
    try:
        yield system
    finally:
        system.launcher.stop()


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("qwen3_next")


def _long(n: int) -> str:
    return (LONG_PROMPT * (n // len(LONG_PROMPT) + 1))[:n]


def _send_in_background(system: System, prompt: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    client = system.openai()

    def send() -> None:
        started = time.monotonic()
        try:
            raw = client.completions.with_raw_response.create(
                model=system.model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
            )
            out["text"], out["route"] = raw.parse().choices[0].text, raw.headers["x-prfaas-route"]
        except openai.APIStatusError as exc:
            out["status"], out["error"] = exc.status_code, exc.message
        except openai.APIConnectionError as exc:
            out["status"], out["error"] = 0, repr(exc)
        out["elapsed_s"] = time.monotonic() - started

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, out


def _stats(system: System, name: str) -> dict[str, Any]:
    url = f"{system.instance_url(name)}/internal/stats"
    stats: dict[str, Any] = get_json(url, headers=system.internal_headers())
    return stats


def _wait_running(system: System, name: str) -> None:
    wait_for(
        lambda: _stats(system, name)["num_requests_running"] >= 1,
        120,
        f"{name} to start the request",
        period_s=0.01,
    )


def _fds(system: System) -> dict[str, int]:
    out = {}
    for name, proc in system.launcher.procs.items():
        if proc.poll() is None:
            out[name] = len(os.listdir(f"/proc/{proc.pid}/fd"))
    return out


def _assert_back_to_baseline(system: System, fds_before: dict[str, int]) -> None:
    """No request or receive-pool byte left at the decode instance; no FD leak anywhere."""

    def idle() -> bool:
        stats = _stats(system, "pd-decode-0")
        busy = stats["num_requests_running"] + stats["num_requests_waiting"]
        return busy == 0 and stats["kv_pool_in_use_bytes"] == 0

    wait_for(idle, 60, "the decode instance to hold nothing")
    after = _fds(system)
    for name, before in fds_before.items():
        if name in after:
            assert after[name] <= before + FD_SLACK, (name, before, after[name])


def _serves(system: System, ref: Reference) -> None:
    text = system.openai().completions.create(
        model=system.model, prompt=SHORT_PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    assert text.choices[0].text == ref.text(SHORT_PROMPT, MAX_TOKENS)


def _counter(system: System, instance: str, name: str, **labels: str) -> float:
    return metric_value(get_text(f"{system.instance_url(instance)}/metrics"), name, **labels)


def _stall(system: System, name: str) -> Callable[[], None]:
    """SIGSTOP `name` (it keeps its sockets, answers nothing); the returned call resumes it."""
    pid = system.launcher.procs[name].pid
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def test_stalled_prfaas_transfer_past_its_deadline_recomputes(qwen: System, ref: Reference) -> None:
    """The PrfaaS prefill instance freezes mid-request (a link stalled longer than the transfer
    deadline looks the same to the decode side): the decode instance gives up at the deadline
    and prefills the prompt itself; whatever had arrived of the transfer is freed."""
    prompt = _long(6000)
    fds = _fds(qwen)
    fallbacks = _counter(qwen, "pd-decode-0", "prfaas:fallback_prefills_total")
    thread, out = _send_in_background(qwen, prompt)
    _wait_running(qwen, "prfaas-prefill-0")
    resume = _stall(qwen, "prfaas-prefill-0")
    try:
        thread.join(DEADLINE_S + 120)
        assert not thread.is_alive(), "the request outlived its deadline"
    finally:
        resume()
    assert out.get("route") == "prfaas", out
    assert out["text"] == ref.text(prompt, MAX_TOKENS)
    assert out["elapsed_s"] >= DEADLINE_S  # it waited for the deadline, then recomputed
    assert _counter(qwen, "pd-decode-0", "prfaas:fallback_prefills_total") == fallbacks + 1
    _assert_back_to_baseline(qwen, fds)
    _serves(qwen, ref)
    _record(
        "PrfaaS transfer stalled past the deadline",
        outcome="recomputed, same output",
        request_s=round(out["elapsed_s"], 2),
        deadline_s=DEADLINE_S,
    )


def test_pd_prefill_that_never_answers_costs_no_request(qwen: System, ref: Reference) -> None:
    """A local prefill instance accepts the job and then answers nothing: the request is
    recomputed by its decode instance after the transfer deadline."""
    fds = _fds(qwen)
    resume = _stall(qwen, "pd-prefill-0")
    try:
        thread, out = _send_in_background(qwen, SHORT_PROMPT + " stalled")
        thread.join(DEADLINE_S + 120)
        assert not thread.is_alive(), "the request outlived its deadline"
    finally:
        resume()
    assert out.get("route") == "pd_prefill", out
    assert out["text"] == ref.text(SHORT_PROMPT + " stalled", MAX_TOKENS)
    _assert_back_to_baseline(qwen, fds)
    _serves(qwen, ref)
    _record(
        "PD prefill accepts and never answers",
        outcome="recomputed, same output",
        request_s=round(out["elapsed_s"], 2),
        deadline_s=DEADLINE_S,
    )


def test_decode_instance_killed_with_a_request_in_flight(qwen: System, ref: Reference) -> None:
    """The request that was decoding there gets a clear error at once, not a hang; the router
    marks the instance down, refuses new requests with 503 while no decode instance is left,
    and serves again once it is restarted."""
    thread, out = _send_in_background(qwen, _long(6000))
    _wait_running(qwen, "prfaas-prefill-0")
    qwen.launcher.kill("pd-decode-0")
    thread.join(120)
    assert not thread.is_alive(), "the request hung"
    assert out.get("status") == 503, out
    assert "decode instance" in str(out["error"]), out
    wait_for(lambda: not router_is_ready(qwen.url), 60, "the router to see the loss")
    _, out2 = _send_in_background(qwen, SHORT_PROMPT)
    wait_for(lambda: "status" in out2 or "text" in out2, 60, "a refusal")
    assert out2.get("status") == 503, out2
    restarted_at = time.monotonic()
    qwen.launcher.restart("pd-decode-0")
    wait_for(lambda: router_is_ready(qwen.url), 420, "the restarted decode instance")
    _serves(qwen, ref)
    _record(
        "decode instance killed mid-request",
        outcome="503 with the reason",
        request_s=round(out["elapsed_s"], 2),
        restart_to_serving_s=round(time.monotonic() - restarted_at, 2),
    )


def test_router_restarted_while_instances_run(qwen: System, ref: Reference, tmp_path: Path) -> None:
    """The instances keep running; a restarted router finds them again and serves."""
    before = _fds(qwen)
    restarted_at = time.monotonic()
    qwen.launcher.restart("router")
    wait_for(lambda: router_is_ready(qwen.url), 300, "the restarted router")
    _serves(qwen, ref)
    _record(
        "router restarted",
        outcome="instances kept; same outputs",
        restart_to_serving_s=round(time.monotonic() - restarted_at, 2),
    )
    text = qwen.openai().completions.create(
        model=qwen.model, prompt=LONG_PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    assert text.choices[0].text == ref.text(LONG_PROMPT, MAX_TOKENS)
    _assert_back_to_baseline(qwen, {k: v for k, v in before.items() if k != "router"})
