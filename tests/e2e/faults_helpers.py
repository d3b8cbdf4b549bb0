"""What the live fault scenarios share (`test_faults.py`, `test_faults_link.py`): sending a
request in the background, reading an instance's stats and counters, the JSON-lines report,
and the check that a system is back to its baseline after a fault: no request or receive-pool
byte left at the decode instance, no file-descriptor leak, every process's RSS within its
slack, and every instance's `/ready` answering 200.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import openai
from services_harness import (
    LONG_PROMPT,
    SHORT_PROMPT,
    Reference,
    System,
    get_json,
    get_text,
    metric_value,
    wait_for,
)

MAX_TOKENS = 12
FD_SLACK = 8  # keep-alive connections may come and go
# RSS after a scenario may exceed its level before by this much (whichever is larger). With
# STEADY_ALLOCATOR_ENV, after the warm-up, a torch process moved by at most +21 MiB from one
# long prefill to the next (no trend); docs/reliability.md, "Faults", has the numbers.
RSS_SLACK_FRACTION = 0.10
RSS_SLACK_BYTES = 64 << 20
# glibc's dynamic mmap threshold lets the heap keep a long prefill's freed working set (about
# 100-150 MiB on the tiny model at 6000 tokens), so without this a process's RSS moved by up
# to +113 MiB between identical recomputes, which would hide any leak smaller than that. A
# fixed 128 KiB threshold returns large blocks to the kernel on free.
STEADY_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
REPORT_ENV = "PRFAAS_FAULTS_REPORT"  # a JSON-lines file: each scenario's outcome and timings
DECODE = "pd-decode-0"


def record(scenario: str, **outcome: Any) -> None:
    """Append one scenario's outcome to the report named by $PRFAAS_FAULTS_REPORT, if set."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, **outcome}) + "\n")


def long_prompt(num_chars: int) -> str:
    """A prompt of `num_chars` characters (byte tokenizer: as many tokens)."""
    return (LONG_PROMPT * (num_chars // len(LONG_PROMPT) + 1))[:num_chars]


def send_in_background(
    system: System, prompt: str, max_tokens: int = MAX_TOKENS
) -> tuple[threading.Thread, dict[str, Any]]:
    """Send a greedy completion on a thread; `out` gets text and route, or status and error,
    and elapsed_s, plus the response's `prfaas` extension when it succeeded."""
    out: dict[str, Any] = {}
    client = system.openai()

    def send() -> None:
        started = time.monotonic()
        try:
            raw = client.completions.with_raw_response.create(
                model=system.model, prompt=prompt, max_tokens=max_tokens, temperature=0
            )
            parsed = raw.parse()
            out["text"], out["route"] = parsed.choices[0].text, raw.headers["x-prfaas-route"]
            out["prfaas"] = (parsed.model_extra or {}).get("prfaas", {})
        except openai.APIStatusError as exc:
            out["status"], out["error"] = exc.status_code, exc.message
        except openai.APIConnectionError as exc:
            out["status"], out["error"] = 0, repr(exc)
        out["elapsed_s"] = time.monotonic() - started

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, out


def stats(system: System, name: str) -> dict[str, Any]:
    url = f"{system.instance_url(name)}/internal/stats"
    body: dict[str, Any] = get_json(url, headers=system.internal_headers())
    return body


def wait_running(system: System, name: str) -> None:
    wait_for(
        lambda: stats(system, name)["num_requests_running"] >= 1,
        120,
        f"{name} to start the request",
        period_s=0.01,
    )


def counter(system: System, instance: str, name: str, **labels: str) -> float:
    return metric_value(get_text(f"{system.instance_url(instance)}/metrics"), name, **labels)


def stall(system: System, name: str) -> Callable[[], None]:
    """SIGSTOP `name` (it keeps its sockets, answers nothing); the returned call resumes it."""
    pid = system.launcher.procs[name].pid
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def serves(system: System, ref: Reference, prompt: str = SHORT_PROMPT) -> None:
    """The system answers `prompt` with the single-process engine's greedy output."""
    text = system.openai().completions.create(
        model=system.model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    assert text.choices[0].text == ref.text(prompt, MAX_TOKENS)


def prefill_at_decode(system: System, ref: Reference, prompt: str) -> None:
    """Have the decode instance prefill `prompt` itself (a colocated job, as a recompute does)
    and check its tokens: the warm-up of the path the recompute scenarios take."""
    from prfaas.messages import DecodeJob, GenerateRequest, SamplingParams

    ids = ref.loaded.tokenizer.encode(prompt)
    request = GenerateRequest(f"warm-{uuid.uuid4().hex}", tuple(ids), SamplingParams(MAX_TOKENS))
    job = DecodeJob(request, transfer_id=None, deadline_s=60.0, stream=False)
    headers = {**system.internal_headers(), "Content-Type": "application/json"}
    url = f"{system.instance_url(DECODE)}/internal/decode"
    body = json.dumps(job.to_dict()).encode()
    call = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(call, timeout=120) as reply:
        deltas = [json.loads(line) for line in reply.read().splitlines() if line.strip()]
    text = ref.loaded.tokenizer.decode([t for d in deltas for t in d["token_ids"]])
    assert text == ref.text(prompt, MAX_TOKENS), deltas[-1]


def warm_up(system: System, ref: Reference, prompt: str, num_rounds: int = 2) -> None:
    """Run every path a scenario takes before any baseline is taken, `num_rounds` times: a long
    prompt offloaded, a long prompt prefilled at the decode instance (as a recompute is), a
    short one prefilled locally. A process's first long prefills raise its RSS for good (the
    allocator keeps what they freed: +50 to +78 MiB, measured), which is no leak."""
    for i in range(num_rounds):
        serves(system, ref, f"{prompt} {i}")
        prefill_at_decode(system, ref, f"{prompt} at decode {i}")
    serves(system, ref)


# ---- baselines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """Open file descriptors and resident bytes of every live process, by service name."""

    fds: dict[str, int]
    rss_bytes: dict[str, int]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def baseline(system: System) -> Baseline:
    fds, rss = {}, {}
    for name, proc in system.launcher.procs.items():
        if proc.poll() is None:
            fds[name] = len(os.listdir(f"/proc/{proc.pid}/fd"))
            rss[name] = _rss_bytes(proc.pid)
    return Baseline(fds, rss)


def rss_slack_bytes(before_bytes: int) -> int:
    return max(int(before_bytes * RSS_SLACK_FRACTION), RSS_SLACK_BYTES)


def rss_change_mib(before: Baseline, after: Baseline) -> dict[str, float]:
    """Each process's RSS change in MiB (for the report)."""
    return {
        name: round((after.rss_bytes[name] - b) / (1 << 20), 1)
        for name, b in before.rss_bytes.items()
        if name in after.rss_bytes
    }


def assert_ready_everywhere(system: System) -> None:
    """Every instance's `/ready` answers 200 (and its `/health` "ok")."""
    for inst in system.topology.instances:
        body = get_json(f"{system.instance_url(inst.name)}/ready")
        assert body["ready"] is True, (inst.name, body)
        assert get_json(f"{system.instance_url(inst.name)}/health")["status"] == "ok"


def is_ready(system: System, name: str) -> bool:
    try:
        return bool(get_json(f"{system.instance_url(name)}/ready", timeout_s=2.0)["ready"])
    except (OSError, urllib.error.URLError, ValueError):
        return False


def assert_back_to_baseline(
    system: System, before: Baseline, restarted: Iterable[str] = ()
) -> dict[str, float]:
    """No request or receive-pool byte left at the decode instance; no FD leak (except in the
    `restarted` processes, whose descriptors are new) and RSS within its slack in every
    process (a restarted one against its predecessor's); every instance ready. Returns the RSS
    changes in MiB, for the report."""

    def idle() -> bool:
        s = stats(system, DECODE)
        busy = s["num_requests_running"] + s["num_requests_waiting"]
        return bool(busy == 0 and s["kv_pool_in_use_bytes"] == 0)

    wait_for(idle, 60, "the decode instance to hold nothing")
    after = baseline(system)
    skipped = set(restarted)
    for name, fds in before.fds.items():
        if name in after.fds and name not in skipped:
            assert after.fds[name] <= fds + FD_SLACK, ("fds", name, fds, after.fds[name])
    for name, rss in before.rss_bytes.items():
        if name in after.rss_bytes:
            limit = rss + rss_slack_bytes(rss)
            assert after.rss_bytes[name] <= limit, ("rss", name, rss, after.rss_bytes[name])
    assert_ready_everywhere(system)
    return rss_change_mib(before, after)
