"""Receive-buffer pool budget and reuse; TCP_INFO parsing and LinkStats aggregation."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import replace

import pytest

from prfaas.transport.linkstats import (
    MIN_RETRANSMIT_SAMPLE_BYTES,
    MIN_RETRANSMIT_SAMPLE_SEGMENTS,
    LinkStats,
    LinkWindow,
    parse_tcp_info,
    read_send_queue_bytes,
    read_tcp_stats,
    summarize_link,
)
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


def test_the_backlog_counts_what_the_kernel_still_holds() -> None:
    """Bytes written to a socket whose peer does not read stay in its send queue: they are part
    of the backlog (a link view without them saw a congested link as nearly empty), and leave it
    once the peer has read them."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.setblocking(False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while written < 256 << 20:  # until both kernels' buffers are full
            written += client.send(b"x" * 65536)
    try:
        held = read_send_queue_bytes(client)
        stats = read_tcp_stats(client)
        assert stats is not None and stats.send_queue_bytes > 0
        view = summarize_link("h:1", [stats], 1e9, 1, 0, queued_bytes=5)
        assert 64 << 10 <= held <= written
        assert view.to_link_view(1e9).backlog_bytes == 5 + stats.send_queue_bytes
        received = 0
        deadline = time.monotonic() + 60
        while received < written and time.monotonic() < deadline:
            received += len(peer.recv(1 << 20))
        assert received == written
        while read_send_queue_bytes(client) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_send_queue_bytes(client) == 0
    finally:
        for s in (client, peer, server):
            s.close()


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


def _snapshot(bytes_sent: int, bytes_retransmitted: int) -> LinkStats:
    return LinkStats("h:1", 1, 0.004, 0.001, 5e8, 4e8, 0, 1, 0, 0, bytes_sent, bytes_retransmitted)


def test_a_window_measures_egress_and_loss_between_two_snapshots() -> None:
    before, after = _snapshot(1_000_000, 100), _snapshot(3_000_000, 20_100)
    window = LinkWindow.between(before, after, elapsed_s=2.0)
    assert window == LinkWindow(1e6, num_bytes_sent=2_000_000, num_bytes_lost=20_000)
    assert window is not None and window.retransmit_rate == 0.01
    view = after.to_link_view(capacity_bytes_per_s=4e6, window=window)
    assert view.utilization == 0.25 and view.retransmit_rate == 0.01
    # the lifetime view of the same snapshot reads the kernel's delivery rate instead
    assert after.to_link_view(capacity_bytes_per_s=4e6).utilization == 1.0


def test_a_window_without_traffic_reads_idle_and_a_small_one_reads_no_loss() -> None:
    busy = _snapshot(10_000_000, 5_000_000)  # half of its lifetime bytes were resent
    idle = LinkWindow.between(busy, busy, elapsed_s=1.0)
    assert idle == LinkWindow(0.0, 0.0)
    small = _snapshot(10_000_000 + MIN_RETRANSMIT_SAMPLE_BYTES - 1, 5_000_500)
    assert LinkWindow.between(busy, small, elapsed_s=1.0).retransmit_rate == 0.0  # type: ignore[union-attr]


def test_a_replaced_connection_never_gives_a_negative_window() -> None:
    window = LinkWindow.between(_snapshot(9_000_000, 900), _snapshot(1000, 0), elapsed_s=1.0)
    assert window is not None and window.egress_bytes_per_s == 0.0 and window.retransmit_rate == 0
    assert LinkWindow.between(_snapshot(1, 0), _snapshot(2, 0), elapsed_s=0.0) is None


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


def test_duplicate_sacked_retransmissions_are_not_losses() -> None:
    """3 segments of 1448 bytes reported back as duplicates (tcpi_dsack_dups, MSS at offset 16)
    out of 10,000 retransmitted bytes: 5,656 lost of 100,000 sent; a buffer from a kernel
    before 5.2 (no dsack field) counts every retransmission."""
    raw = bytearray(232)
    struct.pack_into("<I", raw, 16, 1448)  # snd_mss
    struct.pack_into("<Q", raw, 200, 100_000)  # bytes sent
    struct.pack_into("<Q", raw, 208, 10_000)  # bytes retransmitted
    struct.pack_into("<I", raw, 216, 3)  # dsack_dups
    tcp = parse_tcp_info(bytes(raw))
    assert tcp is not None and tcp.bytes_retransmitted_spurious == 3 * 1448
    stats = summarize_link("h:1", [tcp, tcp], 4e8, num_transfers=1, num_failures=0)
    assert stats.bytes_lost == 2 * (10_000 - 3 * 1448)
    assert stats.to_link_view(1e9).retransmit_rate == pytest.approx(0.05656)
    old_kernel = parse_tcp_info(bytes(raw[:216]))
    assert old_kernel is not None and old_kernel.bytes_retransmitted_spurious == 0


def test_a_window_of_spurious_retransmissions_reads_as_no_loss() -> None:
    """Between two snapshots 20,000 bytes were resent and the peer had every one of them."""
    before = replace(_snapshot(1_000_000, 100), bytes_retransmitted_spurious=100)
    after = replace(_snapshot(3_000_000, 20_100), bytes_retransmitted_spurious=20_100)
    window = LinkWindow.between(before, after, elapsed_s=2.0)
    assert window == LinkWindow(1e6, num_bytes_sent=2_000_000, num_bytes_lost=0)


MSS = 12_448  # the testbed WAN's segment (a 12,500-byte MTU)


def test_a_share_needs_enough_segments_of_the_connections_mss() -> None:
    """One lost segment of 199 reads as no loss (it would be 0.5%, and 199 segments of 12 KB
    pass the byte minimum); three of 200 read as 1.5%; the MSS comes from TCP_INFO."""
    few = LinkWindow(1e6, (MIN_RETRANSMIT_SAMPLE_SEGMENTS - 1) * MSS, MSS, mss_bytes=MSS)
    assert few.num_bytes_sent > MIN_RETRANSMIT_SAMPLE_BYTES and few.retransmit_rate == 0.0
    enough = LinkWindow(1e6, MIN_RETRANSMIT_SAMPLE_SEGMENTS * MSS, 3 * MSS, mss_bytes=MSS)
    assert enough.retransmit_rate == pytest.approx(3 / MIN_RETRANSMIT_SAMPLE_SEGMENTS)
    raw = bytearray(232)
    struct.pack_into("<I", raw, 16, MSS)
    tcp = parse_tcp_info(bytes(raw))
    assert tcp is not None and tcp.mss_bytes == MSS
    stats = summarize_link("h:1", [tcp, replace(tcp, mss_bytes=1448)], 0.0, 0, 0)
    assert stats.mss_bytes == MSS


def test_pooled_windows_judge_loss_on_the_whole_link_not_its_worst_part() -> None:
    """Sixteen sender-receiver pairs of 300 segments each; one pair lost 4 (1.3% of its own
    sample, above a 1% rule), the link lost 4 of 4,800 (0.08%)."""
    quiet = LinkWindow(1e6, 300 * MSS, 0, mss_bytes=MSS)
    lossy = LinkWindow(1e6, 300 * MSS, 4 * MSS, mss_bytes=MSS)
    assert lossy.retransmit_rate > 0.01
    link = LinkWindow.pooled([lossy] + [quiet] * 15)
    assert link.egress_bytes_per_s == 16e6 and link.num_bytes_sent == 4800 * MSS
    assert link.retransmit_rate == pytest.approx(4 / 4800)
    assert LinkWindow.pooled([]) == LinkWindow(0.0)
