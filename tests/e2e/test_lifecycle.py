"""Graceful lifecycle, live (emulated engines): SIGTERM lets the requests in flight finish
before a service exits; the router stops routing to an instance that went away, and routes to it
again once it is restarted; the router itself drains its streams on SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from services_harness import API_KEY, System, get_json, launch, wait_for

from prfaas.launch.local import EmbeddedOptions, embedded_topology, free_port
from prfaas.topology import load_topology, write_topology

pytestmark = pytest.mark.slow
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("lifecycle")
    options = EmbeddedOptions(
        router_port=free_port(),
        threshold_tokens=1_000_000,  # every request prefills at the PD prefill instance
        engine="emulated",
        emulate="nemotron-3-nano",
        time_scale=8.0,  # decode steps slow enough that a request is still running at SIGTERM
        api_keys=(API_KEY,),
    )
    started = launch(embedded_topology(tmp, options), tmp / "logs")
    yield started
    started.launcher.stop()


def _stream(
    system: System,
    out: dict[str, Any],
    first_token: threading.Event,
    max_tokens: int = MAX_TOKENS,
) -> None:
    body = {
        "model": "qwen3_next",
        "prompt": [11] * 64,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(
        system.url + "/v1/completions", json.dumps(body).encode(), headers, method="POST"
    )
    chunks = []
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            for line in reply:
                if line.startswith(b"data: {"):
                    chunks.append(json.loads(line[6:]))
                    first_token.set()
    except Exception as exc:  # the assertion below says what happened
        out["error"] = repr(exc)
    out["chunks"] = chunks
    first_token.set()


def _start_stream(system: System) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    first_token = threading.Event()
    thread = threading.Thread(target=_stream, args=(system, out, first_token), daemon=True)
    thread.start()
    assert first_token.wait(120), "no first token"
    return thread, out


def _assert_whole(out: dict[str, Any], max_tokens: int = MAX_TOKENS) -> None:
    assert "error" not in out, out.get("error")
    finishes = [c["choices"][0]["finish_reason"] for c in out["chunks"] if c.get("choices")]
    assert finishes, out
    assert finishes[-1] == "length", finishes[-3:]
    usage = [c["usage"] for c in out["chunks"] if c.get("usage")]
    assert usage[-1]["completion_tokens"] == max_tokens, usage


def _complete(system: System) -> int:
    body = {"model": "qwen3_next", "prompt": [12] * 32, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(
        system.url + "/v1/completions", json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _instance_up(system: System, name: str) -> bool:
    states = get_json(system.url + "/ready", timeout_s=10).get("instances", {})
    return bool(states.get(name))


def _ready_json(system: System) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = get_json(system.url + "/ready")
        return reply
    except urllib.error.HTTPError as exc:
        body: dict[str, Any] = json.loads(exc.read())
        return body


def test_sigterm_on_a_decode_instance_finishes_its_stream_then_restart_resumes(
    system: System,
) -> None:
    proc = system.launcher.procs["pd-decode-0"]
    thread, out = _start_stream(system)
    proc.send_signal(signal.SIGTERM)
    thread.join(240)
    _assert_whole(out)  # the request in flight finished after the signal
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # then it exited (uvicorn re-raises)
    wait_for(
        lambda: not _ready_json(system)["instances"]["pd-decode-0"], 60, "the router to see it down"
    )
    assert _complete(system) == 503  # no decode instance: refused, not hung
    system.launcher.restart("pd-decode-0")
    wait_for(lambda: _ready_json(system).get("ready") is True, 300, "the instance to be back")
    assert _complete(system) == 200  # routed to it again


def test_sigterm_on_the_router_drains_its_streams(system: System) -> None:
    proc = system.launcher.procs["router"]
    thread, out = _start_stream(system)
    signalled_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no new connections while it drains
        urllib.request.urlopen(system.url + "/health", timeout=5)
    thread.join(240)
    _assert_whole(out)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled_at < system.topology.policy.drain_s + 30


def test_health_is_alive_and_ready_is_readiness(tmp_path: Path) -> None:
    """Negative control for the restart above: an instance that never started keeps the
    deployment not ready while the router itself is alive."""
    options = EmbeddedOptions(router_port=free_port(), engine="emulated", time_scale=0.0)
    path = embedded_topology(tmp_path, options)
    from prfaas.launch.local import Launcher
    from prfaas.topology import load_topology

    topology = load_topology(path)
    launcher = Launcher(path, topology, None)
    launcher._spawn("router", ["router"])  # the router alone: no instance answers
    try:
        url = launcher.router_url
        wait_for(lambda: _alive(url), 120, "the router to answer /health")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "/ready", timeout=10)
        assert info.value.code == 503
    finally:
        launcher.stop()


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_a_drain_shorter_than_the_stream_cuts_it(tmp_path: Path) -> None:
    """Negative control: with `drain_s = 1` the same SIGTERM ends the stream early, so the
    tests above show the drain at work, not a stream that happened to be short."""
    options = EmbeddedOptions(
        router_port=free_port(),
        threshold_tokens=1_000_000,
        engine="emulated",
        emulate="nemotron-3-nano",
        time_scale=8.0,
        api_keys=(API_KEY,),
    )
    path = embedded_topology(tmp_path, options)
    embedded = load_topology(path, allow_generated_token=True)
    short_drain = replace(embedded, policy=replace(embedded.policy, drain_s=1.0))
    write_topology(path, short_drain, token_file=path.parent / "transport.token")
    short = launch(path, tmp_path / "logs")
    try:
        out: dict[str, Any] = {}
        first_token = threading.Event()
        args = (short, out, first_token, 4 * MAX_TOKENS)
        thread = threading.Thread(target=_stream, args=args, daemon=True)
        thread.start()
        assert first_token.wait(120), "no first token"
        started_at = time.monotonic()
        short.launcher.procs["pd-decode-0"].send_signal(signal.SIGTERM)
        thread.join(240)
        assert time.monotonic() - started_at < 30
        with pytest.raises(AssertionError):
            _assert_whole(out, 4 * MAX_TOKENS)
    finally:
        short.launcher.stop()
