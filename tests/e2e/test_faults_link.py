"""Link faults against the live system (`pytest -m faults`): the tiny Qwen3-Next on torch
engines, router and instances as processes on 127.0.0.1, failure policy `recompute`, transfer
deadline 8 s, and a fault-injecting proxy (`fault_proxy.FaultProxy`) between the KV senders and
the decode instance's receiver: the decode instance binds `kv_listen`, everybody sends to the
proxy at `kv`. Its receive pool is small (`[transport] receive_pool_bytes`) so that a test can
fill it.

Each scenario breaks the link while a PrfaaS transfer runs and checks that the request completes
with the single-process engine's greedy output (or, where the fault outlasts the deadline, is
recomputed at the decode instance), that the fault really happened (the proxy's counts, the
transport's counters, the time taken), and that afterwards the decode instance holds no request
and no receive-pool bytes, FDs and RSS are back to their baseline, every instance is ready, and
the next request is served.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
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
    stats,
    warm_up,
)
from services_harness import Reference, System, start_system, wait_for

from prfaas.launch.local import free_port
from prfaas.messages import LayerEntry, TensorEntry
from prfaas.transport.frames import FrameType, encode_control

pytestmark = [pytest.mark.slow, pytest.mark.faults]
DEADLINE_S = 8.0
PREFILL = "prfaas-prefill-0"
PROMPT_CHARS = 6000  # byte tokenizer: 6000 tokens, about 6 MiB of KV and state in fp32
POOL_BYTES = 32 << 20  # the decode instance's receive pool: a few such requests at once
SLOW_FRACTION = 0.01  # "slowed to 1%" of the topology's link (10 Gbit/s)
HOLD_S = 2.0  # how long the full pool holds a started transfer back before room frees up


@dataclass
class Link:
    system: System
    proxy: FaultProxy
    full_speed: dict[str, Any]  # the warm-up request at full speed: elapsed_s, kv_bytes, ...


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("qwen3_next")


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory, ref: Reference) -> Iterator[Link]:
    listen = f"127.0.0.1:{free_port()}"
    host, port = listen.rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy, pytest.MonkeyPatch.context() as env:
        for name, value in STEADY_ALLOCATOR_ENV.items():
            env.setenv(name, value)  # the services started here inherit it
        system = start_system(
            tmp_path_factory.mktemp("faults_link"),
            "qwen3_next",
            deadline_s=DEADLINE_S,
            decode_kv=proxy.address,
            decode_kv_listen=listen,
            receive_pool_bytes=POOL_BYTES,
        )
        try:
            assert system.topology.instance(DECODE).kv == proxy.address
            warm_up(system, ref, long_prompt(PROMPT_CHARS) + " warm")
            full_speed = _offload(system, ref, long_prompt(PROMPT_CHARS))
            assert proxy.num_upstream_bytes >= full_speed["prfaas"]["kv_bytes"]
            yield Link(system, proxy, full_speed)
        finally:
            system.launcher.stop()


def _offload(system: System, ref: Reference, prompt: str) -> dict[str, Any]:
    """Send `prompt` (offloaded), wait for it, check the output; the outcome dict."""
    thread, out = send_in_background(system, prompt)
    thread.join(DEADLINE_S + 120)
    assert not thread.is_alive(), "the request outlived its deadline"
    assert out.get("route") == "prfaas", out
    assert out["text"] == ref.text(prompt, MAX_TOKENS)
    return out


def _prefill_counter(link: Link, name: str) -> float:
    return counter(link.system, PREFILL, name, dest=link.proxy.address)


def _fallbacks(link: Link) -> float:
    return counter(link.system, DECODE, "prfaas:fallback_prefills_total")


def _timings(out: dict[str, Any]) -> dict[str, Any]:
    info = out.get("prfaas", {})
    return {
        "request_s": round(out["elapsed_s"], 2),
        "prefill_s": info.get("prefill_s"),
        "kv_transfer_tail_s": info.get("kv_transfer_tail_s"),
        "kv_bytes": info.get("kv_bytes"),
    }


def test_connections_reset_mid_transfer_resume(link: Link, ref: Reference) -> None:
    """Every KV connection is reset once a third of the state has crossed: the sender reopens
    its connections through the proxy, the receiver NACKs what was lost with them, and the
    request completes from the same transfer (no recompute)."""
    system, proxy = link.system, link.proxy
    before = baseline(system)
    lost, fallbacks = _prefill_counter(link, "prfaas:kv_connections_lost_total"), _fallbacks(link)
    resets, conns = proxy.num_reset_connections, proxy.num_connections
    proxy.reset_all(after_bytes=link.full_speed["prfaas"]["kv_bytes"] // 3)
    try:
        out = _offload(system, ref, long_prompt(PROMPT_CHARS) + " reset")
    finally:
        proxy.pass_through()
    assert proxy.num_reset_connections > resets, "the proxy reset nothing"
    assert proxy.num_connections > conns, "the sender did not reconnect"
    assert _prefill_counter(link, "prfaas:kv_connections_lost_total") > lost
    assert _fallbacks(link) == fallbacks, "recomputed instead of resumed"
    assert out["elapsed_s"] < DEADLINE_S
    rss = assert_back_to_baseline(system, before)
    serves(system, ref)
    record(
        "KV connections reset mid-transfer",
        outcome="resumed, same output",
        connections_reset=proxy.num_reset_connections - resets,
        rss_change_mib=rss,
        **_timings(out),
    )


def test_corrupted_payload_bytes_are_nacked_and_resent(link: Link, ref: Reference) -> None:
    """Bytes flipped inside three payload frames on the wire: the receiver's CRC-32C rejects
    those frames, NACKs their ranges at END, the sender resends them, and the request completes
    with the same output."""
    system, proxy = link.system, link.proxy
    before = baseline(system)
    resent, fallbacks = _prefill_counter(link, "prfaas:kv_resent_bytes_total"), _fallbacks(link)
    corrupted = proxy.num_corrupted_frames
    proxy.corrupt_payloads(num_frames=3, num_bytes=4)
    try:
        out = _offload(system, ref, long_prompt(PROMPT_CHARS) + " corrupt")
    finally:
        proxy.pass_through()
    assert proxy.num_corrupted_frames - corrupted == 3
    resent_bytes = _prefill_counter(link, "prfaas:kv_resent_bytes_total") - resent
    assert resent_bytes > 0, "nothing was resent"
    assert "payload CRC mismatch" in system.log(DECODE)
    assert _fallbacks(link) == fallbacks, "recomputed instead of resent"
    rss = assert_back_to_baseline(system, before)
    serves(system, ref)
    record(
        "corrupted payload bytes on the wire",
        outcome="NACKed and resent, same output",
        corrupted_frames=3,
        resent_bytes=int(resent_bytes),
        rss_change_mib=rss,
        **_timings(out),
    )


def test_link_slowed_to_one_percent_mid_transfer(link: Link, ref: Reference) -> None:
    """Once a tenth of the state has crossed, the link drops to 1% of its nominal rate: the
    rest crawls, and the request still completes with the same output within the deadline."""
    system, proxy = link.system, link.proxy
    before = baseline(system)
    rate = system.topology.link.bytes_per_s * SLOW_FRACTION
    kv_bytes = link.full_speed["prfaas"]["kv_bytes"]
    throttled = proxy.num_throttled_bytes
    proxy.throttle(rate, after_bytes=kv_bytes // 10)
    try:
        out = _offload(system, ref, long_prompt(PROMPT_CHARS) + " slow")
    finally:
        proxy.pass_through()
    slow_bytes = proxy.num_throttled_bytes - throttled
    assert slow_bytes >= kv_bytes // 2, "most of the transfer should have crawled"
    assert out["elapsed_s"] >= slow_bytes / rate  # the pace held
    full_tail_s = link.full_speed["prfaas"]["kv_transfer_tail_s"]
    assert out["prfaas"]["kv_transfer_tail_s"] > full_tail_s
    rss = assert_back_to_baseline(system, before)
    serves(system, ref)
    record(
        "link slowed to 1% mid-transfer",
        outcome="completed slowly, same output",
        rate_bytes_per_s=rate,
        throttled_bytes=slow_bytes,
        full_speed_request_s=round(link.full_speed["elapsed_s"], 2),
        full_speed_tail_s=full_tail_s,
        rss_change_mib=rss,
        **_timings(out),
    )


class PoolFiller:
    """A second KV sender that takes most of the decode instance's receive pool: BEGIN and one
    LAYER declaring `num_bytes` of state, then nothing until `release()` cancels the transfer."""

    def __init__(self, system: System, num_bytes: int) -> None:
        address = system.topology.instance(DECODE).kv_bind_address
        assert address is not None
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        token = system.topology.transport.token or ""
        hello = {"session": uuid.uuid4().hex, "conn_index": 0, "token": token}
        self.sock.sendall(encode_control(FrameType.HELLO, 0, hello))
        assert self.sock.recv(4096), "the receiver refused the filler"
        begin = {"transfer_id": f"filler-{uuid.uuid4().hex}", "req_id": "", "deadline_s": 300}
        tensor = TensorEntry("L0/filler", 0, "uint8", (num_bytes,), 0, num_bytes)
        layer = LayerEntry(0, "full_attention", "filler", {}, (tensor,))
        self.sock.sendall(
            encode_control(FrameType.BEGIN, 1, begin)
            + encode_control(FrameType.LAYER, 1, layer.to_dict())
        )

    def release(self) -> None:
        self.sock.sendall(encode_control(FrameType.CANCEL, 1, {}))
        self.sock.close()


def _fill_pool(system: System) -> PoolFiller:
    """Take all but 2 MiB of the pool; wait until the receiver holds it."""
    num_bytes = POOL_BYTES - (2 << 20)
    filler = PoolFiller(system, num_bytes)
    wait_for(
        lambda: stats(system, DECODE)["kv_pool_in_use_bytes"] >= num_bytes,
        30,
        "the filler to take the pool",
    )
    return filler


def test_full_receive_pool_holds_the_sender_back(link: Link, ref: Reference) -> None:
    """The receive pool is full when a transfer starts: its first large layer waits (the
    receiver stops reading, TCP stops the sender); once room frees up the transfer goes on and
    the request completes with the same output, no recompute."""
    system, proxy = link.system, link.proxy
    before = baseline(system)
    fallbacks = _fallbacks(link)
    filler = _fill_pool(system)
    try:
        prompt = long_prompt(PROMPT_CHARS) + " held"
        sent_before = proxy.num_upstream_bytes
        thread, out = send_in_background(system, prompt)
        wait_for(lambda: stats(system, DECODE)["num_requests_waiting"] >= 1, 60, "the job")
        started = lambda: proxy.num_upstream_bytes > sent_before  # noqa: E731
        wait_for(started, 120, "the transfer to start into the full pool")
        time.sleep(HOLD_S)  # the scenario: room frees up HOLD_S after the transfer started
        assert "text" not in out and "status" not in out, ("not held back", out)
    finally:
        filler.release()
    thread.join(DEADLINE_S + 120)
    assert not thread.is_alive(), "the request outlived its deadline"
    assert out.get("route") == "prfaas", out
    assert out["text"] == ref.text(prompt, MAX_TOKENS)
    assert out["elapsed_s"] >= HOLD_S
    assert _fallbacks(link) == fallbacks, "recomputed instead of held back"
    rss = assert_back_to_baseline(system, before)
    serves(system, ref)
    record(
        "full receive pool, room frees up",
        outcome="held back, then completed, same output",
        held_s=HOLD_S,
        rss_change_mib=rss,
        **_timings(out),
    )


def test_full_receive_pool_past_the_deadline_recomputes(link: Link, ref: Reference) -> None:
    """The receive pool stays full past the transfer deadline: the receiver refuses the
    transfer (out of buffer memory) or the decode instance stops waiting, and recomputes the
    prompt; the sender counts a failed transfer."""
    system = link.system
    before = baseline(system)
    fallbacks = _fallbacks(link)
    failures = _prefill_counter(link, "prfaas:kv_transfer_failures_total")
    filler = _fill_pool(system)
    try:
        prompt = long_prompt(PROMPT_CHARS) + " refused"
        thread, out = send_in_background(system, prompt)
        thread.join(DEADLINE_S + 120)
        assert not thread.is_alive(), "the request outlived its deadline"
    finally:
        filler.release()
    assert out.get("route") == "prfaas", out
    assert out["text"] == ref.text(prompt, MAX_TOKENS)
    assert out["elapsed_s"] >= DEADLINE_S
    assert _fallbacks(link) == fallbacks + 1
    wait_for(
        lambda: _prefill_counter(link, "prfaas:kv_transfer_failures_total") > failures,
        30,
        "the sender to count the failed transfer",
    )
    rss = assert_back_to_baseline(system, before)
    serves(system, ref)
    record(
        "full receive pool past the deadline",
        outcome="recomputed, same output",
        deadline_s=DEADLINE_S,
        rss_change_mib=rss,
        **_timings(out),
    )


def test_every_instance_ready_and_alive(link: Link, tmp_path: Path) -> None:
    """`/ready` is 200 on every instance of a serving system; `/health` says ok."""
    assert_ready_everywhere(link.system)
