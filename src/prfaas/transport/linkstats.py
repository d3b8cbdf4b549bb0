"""Congestion signals per destination: kernel TCP_INFO, `LinkStats` snapshots, Prometheus metrics.

`LinkStats` is what the transport measures; `LinkStats.to_link_view(capacity)` turns it into the
policy's `LinkView`, which the scheduler reads. `LinkWindow.between(before, after, elapsed_s)`
measures egress and lost bytes between two snapshots, and `LinkWindow.pooled` sums one link's
windows over its senders and destinations, so a reader that polls (the router) sees an idle link
as idle and judges loss on the link's whole sample: one lost segment of a small transfer, or of
one connection's share, does not read as congestion (a share needs
`MIN_RETRANSMIT_SAMPLE_SEGMENTS` segments); without a window the view uses the lifetime
counters. The retransmitted share counts losses only: a retransmission the peer reports as a
duplicate (DSACK: the segment had arrived, delayed or reordered past the sender's loss
detection, as a jittery path does) is spurious and is left out, so reordering does not read as
congestion. Prometheus scrapes `TransportMetrics`, which takes a registry so tests and several
senders in one process do not clash.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Iterable
from dataclasses import dataclass, replace

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from prfaas.policy import LinkView

# Offsets into Linux `struct tcp_info` (include/uapi/linux/tcp.h); stable since kernel 4.x.
_TCP_INFO_BYTES = 232
_OFF_RTT_US, _OFF_TOTAL_RETRANS = 68, 100
_OFF_MIN_RTT_US, _OFF_DELIVERY_RATE = 148, 160
_OFF_BYTES_ACKED, _OFF_BYTES_SENT, _OFF_BYTES_RETRANS = 120, 200, 208
_OFF_SND_MSS, _OFF_DSACK_DUPS = 16, 216  # tcpi_dsack_dups: kernel 5.2 and later
MIN_RETRANSMIT_SAMPLE_BYTES = 64 << 10  # a window that sent less says nothing about loss
# nor does one of fewer segments than this: with the route policy's 1% rule, one lost segment of a
# sample this size reads as 0.5%, so it takes two losses in a row of 200 to call the link congested
MIN_RETRANSMIT_SAMPLE_SEGMENTS = 200


@dataclass(frozen=True, slots=True)
class TcpStats:
    """One socket's kernel counters (TCP_INFO)."""

    rtt_s: float  # smoothed RTT
    min_rtt_s: float  # minimum RTT seen
    delivery_rate_bytes_per_s: float  # kernel's most recent delivery-rate sample
    total_retransmits: int  # segments retransmitted over the connection's life
    bytes_acked: int
    bytes_sent: int  # 0 on kernels before 4.19
    bytes_retransmitted: int  # 0 on kernels before 4.19
    send_queue_bytes: int = 0  # written and not yet acknowledged by the peer (SIOCOUTQ)
    mss_bytes: int = 0  # the sender's segment size (tcpi_snd_mss)
    # retransmissions the peer reported as duplicates (DSACK): the segment had arrived, late or
    # reordered, so the resend was spurious, not a loss; segments x MSS (0 before kernel 5.2)
    bytes_retransmitted_spurious: int = 0


def read_tcp_stats(sock: socket.socket) -> TcpStats | None:
    """TCP_INFO of a connected socket and its send queue, or None where the platform does not
    offer TCP_INFO."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except OSError:
        return None
    stats = parse_tcp_info(raw)
    if stats is None:
        return None
    return replace(stats, send_queue_bytes=read_send_queue_bytes(sock))


def read_send_queue_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for the socket: written by us, not yet acknowledged by the peer
    (unsent or in flight; Linux SIOCOUTQ). The kernel's send buffer holds megabytes per
    connection, seconds of a slow link, so a backlog that left them out would see a congested
    link as nearly empty. 0 where the ioctl is not offered."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return 0
    return max(0, int(struct.unpack("i", raw)[0]))


def parse_tcp_info(raw: bytes) -> TcpStats | None:
    if len(raw) < _OFF_DELIVERY_RATE + 8:
        return None

    def u32(off: int) -> int:
        return int(struct.unpack_from("<I", raw, off)[0])

    def u64(off: int) -> int:
        return int(struct.unpack_from("<Q", raw, off)[0]) if len(raw) >= off + 8 else 0

    def u32_if(off: int) -> int:
        return u32(off) if len(raw) >= off + 4 else 0

    return TcpStats(
        rtt_s=u32(_OFF_RTT_US) / 1e6,
        min_rtt_s=u32(_OFF_MIN_RTT_US) / 1e6,
        delivery_rate_bytes_per_s=float(u64(_OFF_DELIVERY_RATE)),
        total_retransmits=u32(_OFF_TOTAL_RETRANS),
        bytes_acked=u64(_OFF_BYTES_ACKED),
        bytes_sent=u64(_OFF_BYTES_SENT),
        bytes_retransmitted=u64(_OFF_BYTES_RETRANS),
        mss_bytes=u32(_OFF_SND_MSS),
        bytes_retransmitted_spurious=u32_if(_OFF_DSACK_DUPS) * u32(_OFF_SND_MSS),
    )


@dataclass(frozen=True, slots=True)
class LinkStats:
    """What the sender has measured about the link to one destination, at one moment."""

    dest: str  # "host:port"
    num_connections: int  # live TCP connections
    rtt_s: float  # worst smoothed RTT over the connections (0 if unknown)
    min_rtt_s: float  # best minimum RTT over the connections
    delivery_rate_bytes_per_s: float  # kernel delivery-rate samples summed over connections
    goodput_bytes_per_s: float  # verified KV bytes / transfer time, EWMA over finished transfers
    total_retransmits: int  # TCP segments retransmitted, summed over live connections
    num_transfers: int  # finished transfers (ok or not)
    num_failures: int  # transfers that did not end with an ACK
    queued_bytes: int = 0  # payload bytes accepted by the sender and not yet written
    bytes_sent: int = 0  # kernel bytes sent, summed over live connections
    bytes_retransmitted: int = 0  # kernel bytes retransmitted, summed over live connections
    send_queue_bytes: int = 0  # bytes written and not yet acknowledged, summed over connections
    bytes_retransmitted_spurious: int = 0  # of those, resent though they had arrived (DSACK)
    mss_bytes: int = 0  # the largest segment size over the connections (0: unknown)

    @property
    def bytes_lost(self) -> int:
        """Bytes retransmitted because they were lost: all retransmitted less the spurious."""
        return max(0, self.bytes_retransmitted - self.bytes_retransmitted_spurious)

    def to_link_view(
        self, capacity_bytes_per_s: float, window: LinkWindow | None = None
    ) -> LinkView:
        """The policy's view of this link, given its capacity (configured or provisioned): rate
        and loss of the `window` when given, else the kernel's latest delivery-rate sample and
        the lifetime retransmitted share."""
        if window is None:
            rate = min(self.delivery_rate_bytes_per_s, self.goodput_bytes_per_s or float("inf"))
            sent, lost = self.bytes_sent, self.bytes_lost
            retransmit_rate = lost / sent if sent else 0.0
        else:
            rate, retransmit_rate = window.egress_bytes_per_s, window.retransmit_rate
        utilization = min(1.0, rate / capacity_bytes_per_s) if capacity_bytes_per_s > 0 else 1.0
        return LinkView(
            bandwidth_bytes_per_s=capacity_bytes_per_s,
            utilization=utilization,
            backlog_bytes=float(self.queued_bytes + self.send_queue_bytes),
            rtt_s=self.rtt_s,
            retransmit_rate=min(1.0, retransmit_rate),
        )


@dataclass(frozen=True, slots=True)
class LinkWindow:
    """Egress and lost bytes (retransmitted, less spurious) between two `LinkStats` snapshots:
    one destination's (`between`) or a whole link's, every sender's destinations summed
    (`pooled`)."""

    egress_bytes_per_s: float
    num_bytes_sent: int = 0
    num_bytes_lost: int = 0
    mss_bytes: int = 0  # the largest segment size among its connections (0: unknown)

    @property
    def retransmit_rate(self) -> float:
        """The lost share of the bytes sent; 0 while the window sent too little to judge (fewer
        than `MIN_RETRANSMIT_SAMPLE_BYTES`, or than `MIN_RETRANSMIT_SAMPLE_SEGMENTS` segments)."""
        min_sample_bytes = max(
            MIN_RETRANSMIT_SAMPLE_BYTES, MIN_RETRANSMIT_SAMPLE_SEGMENTS * self.mss_bytes
        )
        if self.num_bytes_sent < min_sample_bytes:
            return 0.0
        return min(1.0, self.num_bytes_lost / self.num_bytes_sent)

    @classmethod
    def between(cls, before: LinkStats, after: LinkStats, elapsed_s: float) -> LinkWindow | None:
        """The window from `before` to `after`, `elapsed_s` apart (None when no time passed). A
        counter that went down (a connection was replaced) counts from zero, never negative."""
        if elapsed_s <= 0:
            return None
        num_sent = max(0, after.bytes_sent - before.bytes_sent)
        return cls(
            egress_bytes_per_s=num_sent / elapsed_s,
            num_bytes_sent=num_sent,
            num_bytes_lost=max(0, after.bytes_lost - before.bytes_lost),
            mss_bytes=after.mss_bytes,
        )

    @classmethod
    def pooled(cls, windows: Iterable[LinkWindow]) -> LinkWindow:
        """One link's window from its senders' per-destination windows: rates and bytes add up,
        so the retransmitted share is the link's own. Judged per destination, every one of a
        dozen small samples could read one lost segment as a percent or more."""
        windows = list(windows)
        return cls(
            egress_bytes_per_s=sum(w.egress_bytes_per_s for w in windows),
            num_bytes_sent=sum(w.num_bytes_sent for w in windows),
            num_bytes_lost=sum(w.num_bytes_lost for w in windows),
            mss_bytes=max((w.mss_bytes for w in windows), default=0),
        )


def summarize_link(
    dest: str,
    stats: list[TcpStats],
    goodput_bytes_per_s: float,
    num_transfers: int,
    num_failures: int,
    queued_bytes: int = 0,
) -> LinkStats:
    return LinkStats(
        dest=dest,
        num_connections=len(stats),
        rtt_s=max((s.rtt_s for s in stats), default=0.0),
        min_rtt_s=min((s.min_rtt_s for s in stats), default=0.0),
        delivery_rate_bytes_per_s=sum(s.delivery_rate_bytes_per_s for s in stats),
        goodput_bytes_per_s=goodput_bytes_per_s,
        total_retransmits=sum(s.total_retransmits for s in stats),
        num_transfers=num_transfers,
        num_failures=num_failures,
        queued_bytes=queued_bytes,
        send_queue_bytes=sum(s.send_queue_bytes for s in stats),
        bytes_sent=sum(s.bytes_sent for s in stats),
        bytes_retransmitted=sum(s.bytes_retransmitted for s in stats),
        bytes_retransmitted_spurious=sum(s.bytes_retransmitted_spurious for s in stats),
        mss_bytes=max((s.mss_bytes for s in stats), default=0),
    )


class TransportMetrics:
    """The transport's Prometheus series, labelled by destination."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.transfer_bytes = Counter(
            "prfaas:kv_transfer_bytes_total",
            "KV payload bytes delivered and acked",
            ["dest"],
            registry=reg,
        )
        self.transfer_seconds = Histogram(
            "prfaas:kv_transfer_seconds",
            "Time from begin to ACK of one KV transfer",
            ["dest"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=reg,
        )
        self.transfer_failures = Counter(
            "prfaas:kv_transfer_failures_total",
            "KV transfers that ended without an ACK",
            ["dest", "reason"],
            registry=reg,
        )
        self.resent_bytes = Counter(
            "prfaas:kv_resent_bytes_total",
            "KV payload bytes sent again because the receiver NACKed them (lost or corrupt)",
            ["dest"],
            registry=reg,
        )
        self.connections_lost = Counter(
            "prfaas:kv_connections_lost_total",
            "KV connections to the destination that broke while open (each is reopened)",
            ["dest"],
            registry=reg,
        )
        self.link_rtt = Gauge(
            "prfaas:link_rtt_seconds",
            "Smoothed TCP RTT to the destination (worst connection)",
            ["dest"],
            registry=reg,
        )
        self.link_delivery_rate = Gauge(
            "prfaas:link_delivery_rate_bytes_per_second",
            "TCP_INFO delivery-rate samples to the destination, summed over its connections",
            ["dest"],
            registry=reg,
        )
        self.link_retransmits = Counter(
            "prfaas:link_retransmits_total",
            "TCP segments retransmitted to the destination",
            ["dest"],
            registry=reg,
        )

    def observe_link(self, view: LinkStats, new_retransmits: int) -> None:
        self.link_rtt.labels(view.dest).set(view.rtt_s)
        self.link_delivery_rate.labels(view.dest).set(view.delivery_rate_bytes_per_s)
        if new_retransmits > 0:
            self.link_retransmits.labels(view.dest).inc(new_retransmits)
