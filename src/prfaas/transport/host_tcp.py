"""A host's TCP settings against the link the transport must fill (`prfaas doctor`).

One TCP connection carries at most its window per round trip, and the kernel caps the window by
the socket buffers: with autotuning, by `net.ipv4.tcp_rmem`'s maximum on the receiver and
`tcp_wmem`'s on the sender, of which about half is window (the rest is the kernel's
bookkeeping of the queued packets). So a link of B bytes/s at RTT r needs, per connection of N,
a window of B r / N: this module reads the settings (`read_host_tcp`, the only I/O here) and
checks them against that need (`check_host_tcp`, pure), each finding with the `sysctl` line that
fixes it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC_SYS = Path("/proc/sys")
WINDOW_FRACTION = 0.5  # of a socket buffer, what the window may use (tcp_adv_win_scale = 1)
LOSSY_RTT_S = 0.010  # from this RTT on, or with any loss, a model-based control (BBR) pays off


@dataclass(frozen=True, slots=True)
class HostTcp:
    """The kernel's TCP settings that bound one connection's rate (bytes; None: unreadable)."""

    rmem_max_bytes: int | None  # net.core.rmem_max: the most SO_RCVBUF may ask
    wmem_max_bytes: int | None  # net.core.wmem_max
    tcp_rmem_bytes: tuple[int, int, int] | None  # net.ipv4.tcp_rmem: min, default, maximum
    tcp_wmem_bytes: tuple[int, int, int] | None  # net.ipv4.tcp_wmem; the maximum caps autotuning
    congestion_control: str | None  # net.ipv4.tcp_congestion_control
    available_congestion_controls: tuple[str, ...]
    slow_start_after_idle: bool | None  # net.ipv4.tcp_slow_start_after_idle
    window_scaling: bool | None  # net.ipv4.tcp_window_scaling


@dataclass(frozen=True, slots=True)
class LinkNeed:
    """What the transport must fill: the link's rate and RTT, its connections, its settings."""

    gbps: float
    rtt_s: float
    num_connections: int
    socket_buffer_bytes: int = 0  # the transport's SO_SNDBUF/SO_RCVBUF; 0: autotuning
    congestion_control: str | None = None  # what the senders ask for; None: the kernel's
    loss: float = 0.0  # fraction of packets lost

    @property
    def bdp_bytes(self) -> float:
        """The bandwidth-delay product: the bytes in flight that keep the link full."""
        return self.gbps * 1e9 / 8 * self.rtt_s

    @property
    def per_connection_window_bytes(self) -> float:
        return self.bdp_bytes / self.num_connections


@dataclass(frozen=True, slots=True)
class Finding:
    """One check: what the host has, what the link needs, and the line that fixes it."""

    check: str
    ok: bool
    now: str
    needed: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_host_tcp(root: Path = PROC_SYS) -> HostTcp:
    """This host's settings from /proc/sys (a field it cannot read is None)."""

    def text(name: str) -> str | None:
        try:
            return (root / name).read_text().strip()
        except OSError:
            return None

    def number(name: str, field: int = 0) -> int | None:
        value = text(name)
        try:
            return None if value is None else int(value.split()[field])
        except (ValueError, IndexError):
            return None

    def triple(name: str) -> tuple[int, int, int] | None:
        low, default, high = (number(name, i) for i in range(3))
        if low is None or default is None or high is None:
            return None
        return low, default, high

    def flag(name: str) -> bool | None:
        value = number(name)
        return None if value is None else value != 0

    available = text("net/ipv4/tcp_available_congestion_control")
    return HostTcp(
        rmem_max_bytes=number("net/core/rmem_max"),
        wmem_max_bytes=number("net/core/wmem_max"),
        tcp_rmem_bytes=triple("net/ipv4/tcp_rmem"),
        tcp_wmem_bytes=triple("net/ipv4/tcp_wmem"),
        congestion_control=text("net/ipv4/tcp_congestion_control"),
        available_congestion_controls=tuple((available or "").split()),
        slow_start_after_idle=flag("net/ipv4/tcp_slow_start_after_idle"),
        window_scaling=flag("net/ipv4/tcp_window_scaling"),
    )


def check_host_tcp(host: HostTcp, need: LinkNeed) -> list[Finding]:
    """Every check of `host` against `need`, in the order a reader fixes them."""
    return [
        _window_scaling(host),
        *_buffers(host, need),
        _ceiling(host, need),
        _slow_start_after_idle(host),
        _congestion_control(host, need),
    ]


def buffer_bytes_for(window_bytes: float) -> int:
    """The socket buffer, a power of two of at least 4 MiB, whose window holds `window_bytes`."""
    wanted = max(window_bytes / WINDOW_FRACTION, 4 << 20)
    return 1 << math.ceil(math.log2(wanted))


def autotuning_window_bytes(host: HostTcp) -> float | None:
    """The largest window autotuning gives one connection (None: a setting is unreadable)."""
    if host.tcp_rmem_bytes is None or host.tcp_wmem_bytes is None:
        return None
    return min(host.tcp_rmem_bytes[2], host.tcp_wmem_bytes[2]) * WINDOW_FRACTION


def fixed_window_bytes(host: HostTcp, buffer_bytes: float = math.inf) -> float | None:
    """The largest window fixed buffers of `buffer_bytes` give one connection: SO_SNDBUF and
    SO_RCVBUF are clamped to *mem_max and doubled, half of that is window (None: unreadable)."""
    if host.rmem_max_bytes is None or host.wmem_max_bytes is None:
        return None
    return min(buffer_bytes, host.rmem_max_bytes, host.wmem_max_bytes) * 2 * WINDOW_FRACTION


def window_ceiling_bytes(host: HostTcp, need: LinkNeed) -> float | None:
    """The largest window one connection can reach here (None: a setting is unreadable)."""
    if need.socket_buffer_bytes > 0:
        return fixed_window_bytes(host, need.socket_buffer_bytes)
    return autotuning_window_bytes(host)


def ceiling_gbps(host: HostTcp, need: LinkNeed) -> float | None:
    """The rate the transport's connections can reach at the link's RTT (None: unbounded by
    the window, at RTT 0, or unknown)."""
    window = window_ceiling_bytes(host, need)
    if window is None or need.rtt_s <= 0:
        return None
    return need.num_connections * window * 8 / need.rtt_s / 1e9


def _mib(num_bytes: float | None) -> str:
    return "unreadable" if num_bytes is None else f"{num_bytes / (1 << 20):.1f} MiB"


def _window_scaling(host: HostTcp) -> Finding:
    return _switch("net.ipv4.tcp_window_scaling", host.window_scaling, True, "windows above 64 KiB")


def _slow_start_after_idle(host: HostTcp) -> Finding:
    return _switch(
        "net.ipv4.tcp_slow_start_after_idle",
        host.slow_start_after_idle,
        False,
        "an idle connection keeps its window for the next transfer",
    )


def _switch(key: str, value: bool | None, wanted: bool, why: str) -> Finding:
    """A 0/1 setting that should be `wanted` (an unreadable one is not flagged)."""
    ok = value is None or value == wanted
    now = "unreadable" if value is None else str(int(value))
    return Finding(
        key, ok, now, f"{int(wanted)} ({why})", None if ok else f"sysctl -w {key}={int(wanted)}"
    )


def _buffers(host: HostTcp, need: LinkNeed) -> list[Finding]:
    wanted = buffer_bytes_for(need.per_connection_window_bytes)
    needed = f">= {_mib(wanted)} ({_mib(need.per_connection_window_bytes)} window a connection)"
    if need.socket_buffer_bytes > 0:  # fixed buffers: net.core.*mem_max clamps them
        wanted = max(wanted, need.socket_buffer_bytes)
        needed = f">= {_mib(wanted)} (the transport's socket_buffer_bytes)"
        return [
            _core_finding("net.core.rmem_max", host.rmem_max_bytes, wanted, needed),
            _core_finding("net.core.wmem_max", host.wmem_max_bytes, wanted, needed),
        ]
    return [
        _autotuning_finding("net.ipv4.tcp_rmem", host.tcp_rmem_bytes, wanted, needed),
        _autotuning_finding("net.ipv4.tcp_wmem", host.tcp_wmem_bytes, wanted, needed),
    ]


def _core_finding(key: str, value: int | None, wanted: int, needed: str) -> Finding:
    ok = value is not None and value >= wanted
    return Finding(key, ok, _mib(value), needed, None if ok else f"sysctl -w {key}={wanted}")


def _autotuning_finding(
    key: str, value: tuple[int, int, int] | None, wanted: int, needed: str
) -> Finding:
    """Autotuning's maximum (the third field); the fix keeps the first two."""
    if value is None:
        return Finding(key, False, "unreadable", needed, f"sysctl -w {key}='4096 131072 {wanted}'")
    ok = value[2] >= wanted
    fix = f"sysctl -w {key}='{value[0]} {value[1]} {wanted}'"
    return Finding(key, ok, f"{_mib(value[2])} (maximum)", needed, None if ok else fix)


def _ceiling(host: HostTcp, need: LinkNeed) -> Finding:
    ceiling = ceiling_gbps(host, need)
    ok = ceiling is None or ceiling >= need.gbps
    shown = "no window bound at RTT 0" if need.rtt_s <= 0 else (
        "unknown" if ceiling is None else f"{ceiling:.2f} Gbit/s"
    )  # fmt: skip
    return Finding(
        f"rate {need.num_connections} connection(s) reach at RTT {need.rtt_s * 1e3:g} ms",
        ok,
        shown,
        f">= {need.gbps:g} Gbit/s (the link)",
        None if ok else "raise the buffers above, or [transport] num_connections",
    )


def _congestion_control(host: HostTcp, need: LinkNeed) -> Finding:
    chosen = need.congestion_control or host.congestion_control
    if need.congestion_control is not None and chosen not in host.available_congestion_controls:
        return Finding(
            "TCP congestion control",
            False,
            f"{chosen} (asked by [transport] congestion_control; not loaded)",
            "an algorithm in net.ipv4.tcp_available_congestion_control",
            f"modprobe tcp_{chosen}",
        )
    wants_bbr = need.loss > 0 or need.rtt_s >= LOSSY_RTT_S
    ok = not wants_bbr or chosen == "bbr"
    available = " ".join(host.available_congestion_controls) or "unreadable"
    fix = "modprobe tcp_bbr; " if "bbr" not in host.available_congestion_controls else ""
    return Finding(
        "TCP congestion control",
        ok,
        f"{chosen} (available: {available})",
        "bbr (loss or a long RTT)" if wants_bbr else "any",
        None if ok else f'{fix}[transport] congestion_control = "bbr"',
    )
