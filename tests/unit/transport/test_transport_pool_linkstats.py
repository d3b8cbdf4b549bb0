"""Receive-buffer pool budget and reuse; TCP_INFO parsing and LinkStats aggregation."""

from __future__ import annotations

import socket
import struct

import pytest

from prfaas.transport.linkstats import parse_tcp_info, read_tcp_stats, summarize_link
from prfaas.transport.pool import BufferPool, PoolExhaustedError

PAGE = 4096


def test_pool_reuses_a_released_buffer_of_a_close_size() -> None:
    pool = BufferPool(10 * PAGE)
    a = pool.acquire(3 * PAGE)
    pool.release(a)
    b = pool.acquire(3 * PAGE - 100)
    assert b.mm is a.mm and len(b.view) == 3 * PAGE - 100
    assert pool.num_allocations == 1


def test_pool_refuses_beyond_its_budget_and_frees_idle_buffers_to_make_room() -> None:
    pool = BufferPool(4 * PAGE)
    a = pool.acquire(3 * PAGE)
    with pytest.raises(PoolExhaustedError):
        pool.acquire(2 * PAGE)
    pool.release(a)
    big = pool.acquire(4 * PAGE)  # the idle 3-page buffer is unmapped to make room
    assert pool.in_use_bytes == 4 * PAGE and pool.idle_bytes == 0
    pool.release(big, drop_pages=True)
    assert pool.in_use_bytes == 0


def test_parse_tcp_info_fields() -> None:
    raw = bytearray(232)
    struct.pack_into("<I", raw, 68, 1500)  # rtt us
    struct.pack_into("<I", raw, 100, 7)  # total retrans
    struct.pack_into("<I", raw, 148, 900)  # min rtt us
    struct.pack_into("<Q", raw, 160, 125_000_000)  # delivery rate bytes/s
    struct.pack_into("<Q", raw, 200, 4096)  # bytes sent
    stats = parse_tcp_info(bytes(raw))
    assert stats is not None
    assert stats.rtt_s == 0.0015 and stats.min_rtt_s == 0.0009
    assert stats.total_retransmits == 7 and stats.bytes_sent == 4096
    assert stats.delivery_rate_bytes_per_s == 125e6
    assert parse_tcp_info(b"\x00" * 10) is None


def test_read_tcp_stats_on_a_live_loopback_connection() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.sendall(b"x" * 100_000)
    peer.recv(100_000)
    stats = read_tcp_stats(client)
    for s in (client, peer, server):
        s.close()
    assert stats is not None and stats.rtt_s > 0 and stats.bytes_acked > 0


def test_link_view_sums_and_worst_cases() -> None:
    raw = bytearray(232)
    struct.pack_into("<I", raw, 68, 2000)
    struct.pack_into("<I", raw, 100, 3)
    a = parse_tcp_info(bytes(raw))
    struct.pack_into("<I", raw, 68, 5000)
    b = parse_tcp_info(bytes(raw))
    assert a is not None and b is not None
    view = summarize_link("h:1", [a, b], 1e9, num_transfers=4, num_failures=1)
    assert view.rtt_s == 0.005 and view.total_retransmits == 6 and view.num_connections == 2


def test_link_stats_become_the_policy_link_view() -> None:
    raw = bytearray(232)
    struct.pack_into("<I", raw, 68, 4000)  # rtt 4 ms
    struct.pack_into("<Q", raw, 160, 500_000_000)  # delivery rate 0.5 GB/s
    struct.pack_into("<Q", raw, 200, 1000)  # bytes sent
    struct.pack_into("<Q", raw, 208, 10)  # bytes retransmitted
    tcp = parse_tcp_info(bytes(raw))
    assert tcp is not None
    stats = summarize_link("h:1", [tcp], 4e8, num_transfers=1, num_failures=0, queued_bytes=7)
    view = stats.to_link_view(capacity_bytes_per_s=1e9)
    assert view.bandwidth_bytes_per_s == 1e9 and view.backlog_bytes == 7
    assert view.utilization == 0.4  # the lower of kernel delivery rate and measured goodput
    assert view.rtt_s == 0.004 and view.retransmit_rate == 0.01
    assert stats.to_link_view(capacity_bytes_per_s=1e8).utilization == 1.0


def test_idle_buffers_never_exceed_the_peak_in_use_bytes() -> None:
    """Varying sizes one at a time: idle memory stays within what was ever in use at once."""
    pool = BufferPool(1000 * PAGE)
    for num_pages in (10, 14, 19, 25, 33, 44, 9, 58, 12, 77):  # no size reuses another's buffer
        buf = pool.acquire(num_pages * PAGE)
        pool.release(buf)
        assert pool.idle_bytes <= pool.peak_in_use_bytes
    assert pool.peak_in_use_bytes == 77 * PAGE
    assert pool.idle_bytes <= 77 * PAGE
    # without the cap every size would still be idle: 301 pages
    assert pool.idle_bytes < 301 * PAGE


def test_a_reused_buffer_still_counts_toward_the_peak() -> None:
    pool = BufferPool(100 * PAGE)
    a = pool.acquire(10 * PAGE)
    pool.release(a)
    b, c = pool.acquire(10 * PAGE), pool.acquire(10 * PAGE)  # b reuses a's buffer
    assert pool.num_allocations == 2 and pool.peak_in_use_bytes == 20 * PAGE
    pool.release(b)
    pool.release(c)
    assert pool.idle_bytes == 20 * PAGE
