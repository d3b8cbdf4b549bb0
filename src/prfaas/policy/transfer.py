"""The cost of one KV transfer over the inter-cluster path: bandwidth, round trips, jitter, loss.

One model, called by the simulator (each flow's rate cap and delivery delay), the planner (the
effective bandwidth of Eq. 3) and the routing policy (the offload-delay rule's round trips), so
the three agree. Pure: no clock, sockets or global randomness (jitter takes the caller's RNG).

    transfer_time_s = num_bytes / goodput + unhidden_latency_s

- *Goodput*: the share of the wire the transfer gets, times `payload_efficiency` (the fraction of
  the wire's bytes that are KV payload: frame, TCP, IP and Ethernet headers take the rest), capped
  under loss by the Mathis bound of each of the transfer's `num_connections` TCP connections,
  MSS / (RTT x sqrt(2p/3)) bytes/s (Reno-style congestion avoidance at loss rate p; CUBIC and BBR
  do better, so this is the pessimistic end).
- *Unhidden latency*: one RTT always (the last byte's trip and the acknowledgment that ends the
  transfer); on a NEW connection one more RTT (the TCP handshake); on a NEW or IDLE connection
  the slow-start ramp: the congestion window starts at `initial_window_segments` x MSS and
  doubles every RTT until it covers the bandwidth-delay product, and the ramp costs the RTTs it
  takes minus the time those bytes would have taken at full rate. Jitter, drawn per transfer,
  adds to the RTT of the acknowledgment and the handshake.
- *Cold rule* (`wire_state`): a destination never sent to is NEW; one whose connections have
  been idle longer than `cold_after_idle_s` (the larger of 200 ms, Linux's minimum RTO, and one
  RTT) is IDLE, since Linux restarts slow start after an idle RTO (`tcp_slow_start_after_idle`,
  on by default); otherwise WARM.

Defaults (RTT 0, no jitter, no loss, efficiency 1) make every term vanish: a transfer costs its
bytes over its share, as the max-min fair link has always modelled.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

JITTER_DISTRIBUTIONS = ("normal", "pareto", "uniform")
MAX_RTT_S = 60.0  # bound of an RTT or a jitter scale: far above any real path
MIN_RTO_S = 0.2  # Linux's minimum retransmission timeout: idle longer and slow start restarts
DEFAULT_MSS_BYTES = 1448  # 1500-byte MTU less IPv4, TCP and timestamp option headers
MIN_MSS_BYTES, MAX_MSS_BYTES = 88, 65483  # Linux's smallest MSS; a 65,535-byte IPv4 packet's
TCP_IP_HEADER_BYTES = 52  # IPv4 (20), TCP (20) and its timestamp option (12): MTU - MSS
DEFAULT_INITIAL_WINDOW_SEGMENTS = 10  # Linux's initial congestion window (RFC 6928)
DEFAULT_NUM_CONNECTIONS = 2  # the transport's default connections per destination
PARETO_SHAPE = 3.0  # tail index of the "pareto" jitter (Lomax); its mean is the jitter scale


class WireState(StrEnum):
    """How warm a destination's connections are when a transfer starts (see `wire_state`)."""

    NEW = "new"  # never used: handshake and slow start
    IDLE = "idle"  # idle past the restart timeout: slow start again
    WARM = "warm"  # in use or recently used: full window


@dataclass(frozen=True, slots=True)
class LinkPath:
    """The path's latency, jitter, loss and framing overhead (bandwidth is the link's own)."""

    rtt_s: float = 0.0  # base round-trip time, seconds
    jitter_s: float = 0.0  # scale of the extra RTT drawn per transfer, seconds
    # "normal": |N(0, jitter)|; "pareto": Lomax, mean jitter; "uniform": U(0, jitter)
    jitter_distribution: str = "normal"
    loss_rate: float = 0.0  # packet loss probability, [0, 1)
    payload_efficiency: float = 1.0  # KV payload bytes per wire byte, (0, 1]
    num_connections: int = DEFAULT_NUM_CONNECTIONS  # TCP connections one transfer stripes over
    mss_bytes: int = DEFAULT_MSS_BYTES  # TCP maximum segment size
    initial_window_segments: int = DEFAULT_INITIAL_WINDOW_SEGMENTS  # initial cwnd, segments

    def __post_init__(self) -> None:
        for name in ("rtt_s", "jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= MAX_RTT_S):
                raise ValueError(f"{name} must be in [0, {MAX_RTT_S:g}] s, got {value}")
        if self.jitter_distribution not in JITTER_DISTRIBUTIONS:
            known = ", ".join(JITTER_DISTRIBUTIONS)
            raise ValueError(
                f"jitter distribution must be one of {known}, got {self.jitter_distribution!r}"
            )
        if not 0 <= self.loss_rate < 1:
            raise ValueError(f"loss_rate must be in [0, 1), got {self.loss_rate}")
        if not 0 < self.payload_efficiency <= 1:
            raise ValueError(f"payload_efficiency must be in (0, 1], got {self.payload_efficiency}")
        for name in ("num_connections", "mss_bytes", "initial_window_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def describe(self) -> str:
        """One line of the parameters, as reports print them."""
        return (
            f"RTT {self.rtt_s * 1e3:g} ms, jitter {self.jitter_s * 1e3:g} ms "
            f"({self.jitter_distribution}), loss {self.loss_rate * 100:g}%, payload efficiency "
            f"{self.payload_efficiency:g}, {self.num_connections} connections per transfer"
        )


USER_UNIT_FIELDS = ("rtt_ms", "jitter_ms", "jitter_distribution", "loss_pct", "payload_efficiency")


def link_path_of(
    source: object,
    num_connections: int = DEFAULT_NUM_CONNECTIONS,
    mss_bytes: int = DEFAULT_MSS_BYTES,
) -> LinkPath:
    """The path of anything with the `USER_UNIT_FIELDS` (the planner's settings, a topology's
    `[link]`): milliseconds and percent, as flags and files give them."""
    rtt_ms, jitter_ms, distribution, loss_pct, efficiency = (
        getattr(source, name) for name in USER_UNIT_FIELDS
    )
    return LinkPath(
        rtt_s=rtt_ms / 1e3,
        jitter_s=jitter_ms / 1e3,
        jitter_distribution=distribution,
        loss_rate=loss_pct / 100,
        payload_efficiency=efficiency,
        num_connections=num_connections,
        mss_bytes=mss_bytes,
    )


def mathis_bytes_per_s(path: LinkPath) -> float:
    """The Mathis bound of one TCP connection, MSS / (RTT x sqrt(2p/3)); inf without loss or
    without an RTT (nothing to bound)."""
    if path.loss_rate == 0 or path.rtt_s == 0:
        return math.inf
    return path.mss_bytes / (path.rtt_s * math.sqrt(2 * path.loss_rate / 3))


def flow_cap_bytes_per_s(path: LinkPath) -> float:
    """The most payload one transfer delivers under loss: its connections' Mathis bounds."""
    return path.num_connections * mathis_bytes_per_s(path)


def goodput_bytes_per_s(share_bytes_per_s: float, path: LinkPath) -> float:
    """Payload rate of one transfer given its share of the wire: efficiency, then the loss cap."""
    return min(share_bytes_per_s * path.payload_efficiency, flow_cap_bytes_per_s(path))


def payload_bandwidth_bytes_per_s(wire_bytes_per_s: float, path: LinkPath) -> float:
    """The payload a wire of `wire_bytes_per_s` carries: times the payload efficiency."""
    return wire_bytes_per_s * path.payload_efficiency


def capped_bandwidth_bytes_per_s(
    payload_bytes_per_s: float, flow_cap_bytes_per_s: float, num_flows: int
) -> float:
    """Payload bandwidth of a link carrying `num_flows` transfers at once, each capped at
    `flow_cap_bytes_per_s` (loss): the planner's effective B_out."""
    if num_flows <= 0 or math.isinf(flow_cap_bytes_per_s):
        return payload_bytes_per_s
    return min(payload_bytes_per_s, num_flows * flow_cap_bytes_per_s)


def effective_bandwidth_bytes_per_s(
    wire_bytes_per_s: float, path: LinkPath, num_flows: int = 1
) -> float:
    """Payload bandwidth of a wire carrying `num_flows` transfers at once over `path`."""
    payload = payload_bandwidth_bytes_per_s(wire_bytes_per_s, path)
    return capped_bandwidth_bytes_per_s(payload, flow_cap_bytes_per_s(path), num_flows)


def slow_start_penalty_s(num_bytes: float, goodput_bytes_per_s: float, path: LinkPath) -> float:
    """Seconds the slow-start ramp adds to a transfer of `num_bytes` at `goodput_bytes_per_s`.

    Per connection (bytes and rate split evenly), the window starts at W0 = initial window x MSS
    and doubles each RTT; round j sends W0 x 2^j. The ramp lasts m = min(k, n - 1) rounds, where
    k rounds bring the window to the bandwidth-delay product and n rounds would send the whole
    transfer; the penalty is m x RTT less the time the W0 x (2^m - 1) bytes sent meanwhile take at
    full rate (the last round's trip is the acknowledgment, counted once elsewhere)."""
    if path.rtt_s == 0 or num_bytes <= 0 or not math.isfinite(goodput_bytes_per_s):
        return 0.0
    rate = goodput_bytes_per_s / path.num_connections
    per_connection_bytes = num_bytes / path.num_connections
    window_bytes = float(path.initial_window_segments * path.mss_bytes)
    bdp_bytes = rate * path.rtt_s
    if bdp_bytes <= window_bytes:
        return 0.0
    rounds_to_bdp = math.ceil(math.log2(bdp_bytes / window_bytes))
    rounds_to_send = math.ceil(math.log2(per_connection_bytes / window_bytes + 1))
    rounds = min(rounds_to_bdp, rounds_to_send - 1)
    if rounds <= 0:
        return 0.0
    return rounds * path.rtt_s - window_bytes * float(2**rounds - 1) / rate


def unhidden_latency_s(
    num_bytes: float,
    goodput_bytes_per_s: float,
    path: LinkPath,
    state: WireState = WireState.WARM,
    jitter_s: float = 0.0,
) -> float:
    """The round trips a transfer cannot hide behind its bytes: the acknowledgment, and on a cold
    connection the handshake and the slow-start ramp (see the module docstring)."""
    rtt_s = path.rtt_s + jitter_s
    latency_s = rtt_s
    if state is WireState.NEW:
        latency_s += rtt_s
    if state is not WireState.WARM:
        latency_s += slow_start_penalty_s(num_bytes, goodput_bytes_per_s, path)
    return latency_s


def transfer_time_s(
    num_bytes: float,
    share_bytes_per_s: float,
    path: LinkPath,
    state: WireState = WireState.WARM,
    jitter_s: float = 0.0,
) -> float:
    """Seconds for one transfer of `num_bytes` payload bytes with `share_bytes_per_s` of the wire:
    the bytes at the transfer's goodput plus its unhidden latency."""
    goodput = goodput_bytes_per_s(share_bytes_per_s, path)
    if goodput <= 0:
        return math.inf
    unhidden_s = unhidden_latency_s(num_bytes, goodput, path, state, jitter_s)
    return num_bytes / goodput + unhidden_s


def cold_after_idle_s(path: LinkPath) -> float:
    """Idle time after which a connection restarts slow start: max(200 ms, one RTT)."""
    return max(MIN_RTO_S, path.rtt_s)


def wire_state(last_used_s: float | None, now_s: float, is_busy: bool, path: LinkPath) -> WireState:
    """NEW when the destination was never sent to, IDLE after `cold_after_idle_s` without
    traffic, WARM while busy or recently used."""
    if last_used_s is None:
        return WireState.NEW
    if not is_busy and now_s - last_used_s > cold_after_idle_s(path):
        return WireState.IDLE
    return WireState.WARM


def draw_jitter_s(path: LinkPath, rng: random.Random) -> float:
    """One transfer's extra RTT, >= 0: half-normal of scale `jitter_s` ("normal"), Lomax of
    shape 3 with mean `jitter_s` ("pareto", a heavy tail), or uniform in [0, `jitter_s`]
    ("uniform", the testbed delay line's default). 0 without jitter (no draw)."""
    if path.jitter_s == 0:
        return 0.0
    if path.jitter_distribution == "uniform":
        return rng.uniform(0.0, path.jitter_s)
    if path.jitter_distribution == "pareto":
        scale_s = path.jitter_s * (PARETO_SHAPE - 1)
        return min(MAX_RTT_S, scale_s * (rng.paretovariate(PARETO_SHAPE) - 1))
    return abs(rng.gauss(0.0, path.jitter_s))
