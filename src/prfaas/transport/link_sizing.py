"""How many KV connections, with which socket buffers, fill a link of known rate and RTT on
this host (pure: the host's settings come in as a `HostTcp`).

One connection carries at most its window per round trip, and the host caps that window
(`prfaas.transport.host_tcp`): with autotuning at half of `min(tcp_rmem max, tcp_wmem max)`,
with fixed buffers at `min(net.core.rmem_max, wmem_max)`. The rule (`size_for_link`):

1. the window the link needs is its bandwidth-delay product times `WINDOW_HEADROOM`: after a
   loss a connection halves (cubic: x0.7) its window, and the others must carry what it gave up;
2. buffers stay autotuned (0) while the configured connections' autotuned windows hold that;
   otherwise, where fixed buffers reach further than autotuning, the smallest power-of-two
   buffer that holds a connection's share, within `net.core.rmem_max` / `wmem_max`;
3. connections = ceil(needed window / per-connection window), no fewer than the configured
   count and no more than `max_connections`;
4. when even that many cannot hold the bandwidth-delay product, `warning` names the sysctl
   that forbids it, as `prfaas doctor` prints the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.transport.host_tcp import (
    HostTcp,
    LinkNeed,
    autotuning_window_bytes,
    buffer_bytes_for,
    check_host_tcp,
    fixed_window_bytes,
)

WINDOW_HEADROOM = 2.0  # windows held open, as a multiple of the bandwidth-delay product
MAX_CONNECTIONS = 32  # per destination: each is a socket, a writer task and a receiver session


@dataclass(frozen=True, slots=True)
class LinkSizing:
    """The connections and buffers chosen for one link, and why."""

    num_connections: int
    socket_buffer_bytes: int  # 0: the kernel's autotuning
    bdp_bytes: float
    window_per_connection_bytes: float  # the host's ceiling for the chosen buffers
    warning: str | None = None  # set when the host forbids the window the link needs

    @property
    def window_bytes(self) -> float:
        return self.num_connections * self.window_per_connection_bytes


def size_for_link(
    gbps: float,
    rtt_s: float,
    host: HostTcp,
    min_connections: int,
    max_connections: int = MAX_CONNECTIONS,
) -> LinkSizing:
    """Connections and socket buffers that hold `WINDOW_HEADROOM` x the link's
    bandwidth-delay product open within `host`'s limits (see the module docstring)."""
    if min_connections < 1 or max_connections < min_connections:
        raise ValueError(f"need 1 <= min <= max connections, got {min_connections}, "
                         f"{max_connections}")  # fmt: skip
    bdp_bytes = max(0.0, gbps) * 1e9 / 8 * max(0.0, rtt_s)
    wanted_bytes = WINDOW_HEADROOM * bdp_bytes
    buffer_bytes, window_bytes = _buffers(host, wanted_bytes, min_connections)
    if window_bytes <= 0:  # the host's limits are unreadable: keep the configured count
        return LinkSizing(min_connections, 0, bdp_bytes, 0.0)
    needed = math.ceil(wanted_bytes / window_bytes) if wanted_bytes > 0 else 1
    count = min(max_connections, max(min_connections, needed))
    sizing = LinkSizing(count, buffer_bytes, bdp_bytes, window_bytes)
    if sizing.window_bytes >= bdp_bytes:
        return sizing
    return LinkSizing(count, buffer_bytes, bdp_bytes, window_bytes,
                      _warning(host, gbps, rtt_s, sizing))  # fmt: skip


def _buffers(host: HostTcp, wanted_bytes: float, min_connections: int) -> tuple[int, float]:
    """(socket buffer bytes, window per connection): autotuning's, unless the least connections
    cannot hold `wanted_bytes` with it and fixed buffers let a window grow further here."""
    auto = autotuning_window_bytes(host) or 0.0
    fixed_max = fixed_window_bytes(host) or 0.0
    if auto * min_connections >= wanted_bytes or fixed_max <= auto:
        return 0, auto
    buffer_bytes = min(buffer_bytes_for(wanted_bytes / min_connections), _pow2_floor(fixed_max))
    return buffer_bytes, min(buffer_bytes, fixed_max)


def _pow2_floor(num_bytes: float) -> int:
    return 1 << max(12, math.floor(math.log2(num_bytes)))


def _warning(host: HostTcp, gbps: float, rtt_s: float, sizing: LinkSizing) -> str:
    """One line: what the link needs, what the host allows, and `prfaas doctor`'s fix."""
    need = LinkNeed(gbps, rtt_s, sizing.num_connections, sizing.socket_buffer_bytes)
    fixes = [f.fix for f in check_host_tcp(host, need)[1:3] if not f.ok and f.fix]
    reach_gbps = sizing.window_bytes * 8 / rtt_s / 1e9
    return (
        f"the link's {gbps:g} Gbit/s x {rtt_s * 1e3:g} ms RTT needs "
        f"{sizing.bdp_bytes / (1 << 20):.1f} MiB in flight; {sizing.num_connections} "
        f"connection(s) may hold {sizing.window_bytes / (1 << 20):.1f} MiB on this host "
        f"(about {reach_gbps:.2f} Gbit/s): {'; '.join(fixes) or 'see prfaas doctor'}"
    )
