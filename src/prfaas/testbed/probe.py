"""Probes of a testbed's WAN: ICMP echo round trips (a ping without the `ping` tool) and a raw
TCP goodput loop, each run from a thread inside a namespace (`netns.call_in_netns`).

`ping` sends `num_pings` echo requests `interval_s` apart from a raw socket (root) and returns
each one's round trip in seconds, or None for a request whose echo did not come back within
`timeout_s` of the last send. `serve_sink` and `send_for` are a raw TCP goodput loop: one
connection streams bytes for a given time, the receiver counts what arrived and when. Used by
the testbed tests and `scripts/bench_delayline.py`.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import struct
import threading
import time
from typing import Any

_ICMP_ECHO_REQUEST = 8
_ICMP_ECHO_REPLY = 0
_PAYLOAD = b"prfaas-delay-probe"
_CHUNK_BYTES = 1 << 20
_MARK_PERIOD_S = 0.1


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = icmp_checksum(header + _PAYLOAD)
    return struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + _PAYLOAD


def parse_echo_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to `ident` in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    offset = (packet[0] & 0x0F) * 4
    if len(packet) < offset + 8:
        return None
    kind, _, _, got_ident, seq = struct.unpack("!BBHHH", packet[offset : offset + 8])
    return seq if kind == _ICMP_ECHO_REPLY and got_ident == ident else None


def ping(dst_ip: str, num_pings: int, interval_s: float, timeout_s: float) -> list[float | None]:
    """Round trips of `num_pings` echo requests to `dst_ip` (None: lost), sent `interval_s`
    apart; replies are awaited until `timeout_s` after the last send."""
    ident = (os.getpid() ^ threading.get_ident()) & 0xFFFF
    sent_at: dict[int, float] = {}
    rtts: list[float | None] = [None] * num_pings
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        next_send = time.monotonic()
        give_up_at = float("inf")
        while time.monotonic() < give_up_at:
            now = time.monotonic()
            if len(sent_at) < num_pings and now >= next_send:
                seq = len(sent_at)
                sent_at[seq] = now
                sock.sendto(echo_request(ident, seq), (dst_ip, 0))
                next_send = now + interval_s
                if len(sent_at) == num_pings:
                    give_up_at = now + timeout_s
                continue
            wait_s = min(next_send, give_up_at) - now
            readable, _, _ = select.select([sock], [], [], max(0.0, wait_s))
            if readable:
                packet = sock.recv(65536)
                seq_got = parse_echo_reply(packet, ident)
                if seq_got is not None and seq_got in sent_at and rtts[seq_got] is None:
                    rtts[seq_got] = time.monotonic() - sent_at[seq_got]
            if len(sent_at) == num_pings and all(r is not None for r in rtts):
                break
    return rtts


def median_rtt_s(rtts: list[float | None]) -> float | None:
    """The median of the round trips that came back (None when none did)."""
    got = [r for r in rtts if r is not None]
    return statistics.median(got) if got else None


def loss_fraction(rtts: list[float | None]) -> float:
    return sum(r is None for r in rtts) / len(rtts) if rtts else 0.0


def serve_sink(ip: str, port: int) -> tuple[socket.socket, dict[str, Any]]:
    """A listening socket on (ip, port) and a result dict that a thread started here fills once
    the sender closes its one connection: `received_bytes`, `elapsed_s`, and `marks`, (seconds
    since the first byte, bytes received so far) about every `_MARK_PERIOD_S`."""
    listener = socket.create_server((ip, port))
    result: dict[str, Any] = {}

    def sink() -> None:
        conn, _ = listener.accept()
        with conn:
            started, num_bytes, marks = time.monotonic(), 0, [(0.0, 0)]
            while chunk := conn.recv(_CHUNK_BYTES):
                num_bytes += len(chunk)
                now_s = time.monotonic() - started
                if now_s - marks[-1][0] >= _MARK_PERIOD_S:
                    marks.append((now_s, num_bytes))
            elapsed_s = time.monotonic() - started
            result.update(received_bytes=num_bytes, elapsed_s=elapsed_s, marks=marks)

    threading.Thread(target=sink, name="probe-sink", daemon=True).start()
    return listener, result


def rate_after(marks: list[tuple[float, int]], skip_s: float) -> float | None:
    """Bytes per second between the first mark at or after `skip_s` and the last mark."""
    later = [mark for mark in marks if mark[0] >= skip_s]
    if len(later) < 2 or later[-1][0] <= later[0][0]:
        return None
    return (later[-1][1] - later[0][1]) / (later[-1][0] - later[0][0])


def send_for(ip: str, port: int, duration_s: float, congestion_control: str = "") -> int:
    """Stream bytes to (ip, port) for `duration_s` (with `congestion_control`, e.g. "cubic";
    empty: the namespace's default), then close; the bytes sent."""
    buffer = b"\0" * _CHUNK_BYTES
    num_bytes = 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        if congestion_control:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion_control.encode())
        conn.settimeout(30)
        conn.connect((ip, port))
        stop_at = time.monotonic() + duration_s
        while time.monotonic() < stop_at:
            conn.sendall(buffer)
            num_bytes += len(buffer)
    return num_bytes
