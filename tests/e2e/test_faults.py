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

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_helpers import (
    DECODE,
    MAX_TOKENS,
    STEADY_ALLOCATOR_ENV,
    assert_back_to_baseline,
    assert_ready_everywhere,
    baseline,
    counter,
    long_prompt,
    record,
    send_in_background,
    serves,
    stall,
    stats,
    wait_running,
    warm_up,
)
from services_harness import (
    LONG_PROMPT,
    SHORT_PROMPT,
    Reference,
    System,
    start_system,
    wait_for,
)

from prfaas.launch.local import router_is_ready

pytestmark = [pytest.mark.slow, pytest.mark.faults]
DEADLINE_S = 8.0  # the transfer deadline: a stalled transfer gives up after this long


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("qwen3_next")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory, ref: Reference) -> Iterator[System]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in STEADY_ALLOCATOR_ENV.items():
            env.setenv(name, value)  # the services started (and restarted) here inherit it
        tmp = tmp_path_factory.mktemp("faults")
        system = start_system(tmp, "qwen3_next", deadline_s=DEADLINE_S)
        try:
            assert_ready_everywhere(system)
            warm_up(system, ref, long_prompt(6000) + " warm")
            yield system
        finally:
            system.launcher.stop()


def test_stalled_prfaas_transfer_past_its_deadline_recomputes(qwen: System, ref: Reference) -> None:
    """The PrfaaS prefill instance freezes mid-request (a link stalled longer than the transfer
    deadline looks the same to the decode side): the decode instance gives up at the deadline
    and prefills the prompt itself; whatever had arrived of the transfer is freed."""
    prompt = long_prompt(6000)
    before = baseline(qwen)
    fallbacks = counter(qwen, DECODE, "prfaas:fallback_prefills_total")
    thread, out = send_in_background(qwen, prompt)
    wait_running(qwen, "prfaas-prefill-0")
    resume = stall(qwen, "prfaas-prefill-0")
    try:
        thread.join(DEADLINE_S + 120)
        assert not thread.is_alive(), "the request outlived its deadline"
    finally:
        resume()
    assert out.get("route") == "prfaas", out
    assert out["text"] == ref.text(prompt, MAX_TOKENS)
    assert out["elapsed_s"] >= DEADLINE_S  # it waited for the deadline, then recomputed
    assert counter(qwen, DECODE, "prfaas:fallback_prefills_total") == fallbacks + 1
    rss = assert_back_to_baseline(qwen, before)
    serves(qwen, ref)
    record(
        "PrfaaS transfer stalled past the deadline",
        outcome="recomputed, same output",
        request_s=round(out["elapsed_s"], 2),
        deadline_s=DEADLINE_S,
        rss_change_mib=rss,
    )


def test_pd_prefill_that_never_answers_costs_no_request(qwen: System, ref: Reference) -> None:
    """A local prefill instance accepts the job and then answers nothing: the request is
    recomputed by its decode instance after the transfer deadline."""
    before = baseline(qwen)
    resume = stall(qwen, "pd-prefill-0")
    try:
        thread, out = send_in_background(qwen, SHORT_PROMPT + " stalled")
        thread.join(DEADLINE_S + 120)
        assert not thread.is_alive(), "the request outlived its deadline"
    finally:
        resume()
    assert out.get("route") == "pd_prefill", out
    assert out["text"] == ref.text(SHORT_PROMPT + " stalled", MAX_TOKENS)
    rss = assert_back_to_baseline(qwen, before)
    serves(qwen, ref)
    record(
        "PD prefill accepts and never answers",
        outcome="recomputed, same output",
        request_s=round(out["elapsed_s"], 2),
        deadline_s=DEADLINE_S,
        rss_change_mib=rss,
    )


def test_decode_instance_killed_with_a_request_in_flight(qwen: System, ref: Reference) -> None:
    """The request that was decoding there gets a clear error at once, not a hang; the router
    marks the instance down, refuses new requests with 503 while no decode instance is left,
    and serves again once it is restarted (and ready: `/ready` 200)."""
    before = baseline(qwen)
    thread, out = send_in_background(qwen, long_prompt(6000))
    wait_running(qwen, "prfaas-prefill-0")
    qwen.launcher.kill(DECODE)
    thread.join(120)
    assert not thread.is_alive(), "the request hung"
    assert out.get("status") == 503, out
    assert "decode instance" in str(out["error"]), out
    wait_for(lambda: not router_is_ready(qwen.url), 60, "the router to see the loss")
    _, out2 = send_in_background(qwen, SHORT_PROMPT)
    wait_for(lambda: "status" in out2 or "text" in out2, 60, "a refusal")
    assert out2.get("status") == 503, out2
    # the PrfaaS instance gives its transfer up (deadline) before the new process listens: a
    # transfer still under way would complete into the new process, which keeps it unclaimed
    # for two minutes (decode.py's unclaimed TTL) before freeing it
    wait_for(lambda: _idle_prefill(qwen), DEADLINE_S + 60, "the PrfaaS instance to give up")
    restarted_at = time.monotonic()
    qwen.launcher.restart(DECODE)
    wait_for(lambda: router_is_ready(qwen.url), 420, "the restarted decode instance")
    serves(qwen, ref)
    rss = assert_back_to_baseline(qwen, before, restarted=(DECODE,))
    record(
        "decode instance killed mid-request",
        outcome="503 with the reason",
        request_s=round(out["elapsed_s"], 2),
        restart_to_serving_s=round(time.monotonic() - restarted_at, 2),
        rss_change_mib=rss,
    )


def _idle_prefill(system: System) -> bool:
    s = stats(system, "prfaas-prefill-0")
    return bool(s["num_requests_running"] + s["num_requests_waiting"] == 0)


def test_router_restarted_while_instances_run(qwen: System, ref: Reference, tmp_path: Path) -> None:
    """The instances keep running; a restarted router finds them again and serves."""
    before = baseline(qwen)
    restarted_at = time.monotonic()
    qwen.launcher.restart("router")
    wait_for(lambda: router_is_ready(qwen.url), 300, "the restarted router")
    serves(qwen, ref)
    restart_to_serving_s = round(time.monotonic() - restarted_at, 2)
    serves(qwen, ref, LONG_PROMPT)
    rss = assert_back_to_baseline(qwen, before, restarted=("router",))
    record(
        "router restarted",
        outcome="instances kept; same outputs",
        restart_to_serving_s=restart_to_serving_s,
        rss_change_mib=rss,
    )
