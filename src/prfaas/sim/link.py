"""The shared inter-cluster link: max-min fair sharing (processor sharing) with per-flow rate caps.

Owns flows, their rates and the link's bandwidth over time; knows nothing about requests or
instances. A flow is the KV of one offloaded request. While its prefill runs, a flow may send only
what the prefill has produced (a rate cap) and holds back the last layer's share, which is released
when the prefill ends; a flow that catches up with the prefill parks until then; a flow given up
(past its transfer deadline) leaves with what it has not sent. Rates are
recomputed whenever the set of sending flows, a cap or the bandwidth changes; the version counter
lets the simulator drop drain events predicted before the change.

The path's latency, jitter, loss and payload efficiency (`prfaas.policy.transfer`) enter in two
places: the capacity the handlers set is the wire's times the payload efficiency, and every flow
is capped at its connections' Mathis bound under loss (`flow_cap_bytes_per_s`); `PathLatency`
adds what bandwidth cannot hide, the round trips of each transfer (acknowledgment, and on a cold
destination handshake and slow start), with jitter drawn from the run's own seeded RNG.

`LinkSite` bundles one link's flows, path latency, path and bandwidth series: a run has one, or
one per prefill provider when there are several (`prfaas.sim.config.ProviderSpec`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from prfaas.policy.transfer import (
    LinkPath,
    draw_jitter_s,
    flow_cap_bytes_per_s,
    unhidden_latency_s,
    wire_state,
)
from prfaas.types import GBPS

DRAIN_EPS_BYTES = 1.0  # a flow with at most this many bytes left to send counts as drained


def gbps_to_bytes_per_s(gbps: float) -> float:
    return gbps * GBPS / 8.0


@dataclass(frozen=True, slots=True)
class BandwidthStep:
    """From `at` on (seconds of simulated time) the link carries `gbps`."""

    at: float  # simulated time, seconds
    gbps: float  # link capacity, Gbps (1e9 bits per second)


def constant_bandwidth(gbps: float) -> list[BandwidthStep]:
    return [BandwidthStep(0.0, gbps)]


def bandwidth_drop(gbps: float, drop_at: float, dropped_gbps: float) -> list[BandwidthStep]:
    """`gbps` until `drop_at` seconds, then `dropped_gbps` for the rest of the run."""
    return [BandwidthStep(0.0, gbps), BandwidthStep(drop_at, dropped_gbps)]


def fluctuating_bandwidth(
    gbps: float, *, period_s: float, low_fraction: float, duration_s: float, rng: random.Random
) -> list[BandwidthStep]:
    """Every `period_s` a new capacity, uniform in [low_fraction, 1] x gbps."""
    num_steps = max(1, math.ceil(duration_s / period_s))
    return [
        BandwidthStep(i * period_s, gbps * rng.uniform(low_fraction, 1.0)) for i in range(num_steps)
    ]


@dataclass(slots=True)
class Flow:
    """One transfer's state on the link."""

    sendable_bytes: float  # bytes produced and not yet sent
    held_bytes: float  # the last layer's share, sendable once the prefill ends
    cap_bytes_per_s: float  # production rate while the prefill runs; inf once released
    is_released: bool  # the prefill has ended: everything left is sendable
    rate_bytes_per_s: float = 0.0  # current max-min fair rate


def max_min_rates(capacity: float, caps: list[float]) -> list[float]:
    """Max-min fair rates (water-filling) of flows with the given caps sharing `capacity`."""
    rates = [0.0] * len(caps)
    left = capacity
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    for pos, i in enumerate(order):
        fair = left / (len(caps) - pos)
        rates[i] = min(caps[i], fair)
        left -= rates[i]
    return rates


class SharedLink:
    """Flows sharing one link of time-varying capacity, advanced lazily in simulated time."""

    def __init__(self, bytes_per_s: float, flow_cap_bytes_per_s: float = math.inf) -> None:
        self.bytes_per_s = bytes_per_s
        self.flow_cap_bytes_per_s = flow_cap_bytes_per_s  # every flow's most (loss), bytes/s
        self.flows: dict[int, Flow] = {}
        self.version = 0
        self.updated_at = 0.0
        self.total_sent_bytes = 0.0
        self.rate_segments: list[tuple[float, float]] = [(0.0, 0.0)]  # (from time s, bytes/s)

    def add(
        self, now: float, flow_id: int, total_bytes: float, held_bytes: float, cap: float
    ) -> None:
        self._advance(now)
        self.flows[flow_id] = Flow(total_bytes - held_bytes, held_bytes, cap, False)
        self._reshare(now)

    def release(self, now: float, flow_id: int) -> bool:
        """The flow's prefill ended. Returns True if the flow has nothing left to send."""
        self._advance(now)
        flow = self.flows[flow_id]
        flow.sendable_bytes += flow.held_bytes
        flow.held_bytes = 0.0
        flow.cap_bytes_per_s = math.inf
        flow.is_released = True
        if flow.sendable_bytes <= DRAIN_EPS_BYTES:
            del self.flows[flow_id]
            self._reshare(now)
            return True
        self._reshare(now)
        return False

    def remove(self, now: float, flow_id: int) -> float:
        """The sender gave the flow up: what it has not sent never crosses. Returns those bytes."""
        self._advance(now)
        flow = self.flows.pop(flow_id)
        self._reshare(now)
        return flow.sendable_bytes + flow.held_bytes

    def set_capacity(self, now: float, bytes_per_s: float) -> None:
        self._advance(now)
        self.bytes_per_s = bytes_per_s
        self._reshare(now)

    def next_drain_at(self) -> float | None:
        """When the first sending flow drains at current rates; None if none is draining."""
        times = [
            f.sendable_bytes / f.rate_bytes_per_s
            for f in self.flows.values()
            if f.sendable_bytes > 0.0 and f.rate_bytes_per_s > 0.0
        ]
        if not times:
            return None
        # Far into a run a drain shorter than the clock's resolution would round to now and never
        # advance the flows: the next representable time always does (and drains them).
        return max(self.updated_at + min(times), math.nextafter(self.updated_at, math.inf))

    def pop_drained(self, now: float) -> list[int]:
        """Finish released flows that drained, park unreleased ones; returns finished flow ids."""
        self._advance(now)
        finished = []
        for flow_id, flow in list(self.flows.items()):
            if flow.sendable_bytes > DRAIN_EPS_BYTES:
                continue
            flow.sendable_bytes = 0.0
            if flow.is_released:
                del self.flows[flow_id]
                finished.append(flow_id)
        self._reshare(now)
        return finished

    def backlog_bytes(self, now: float) -> float:
        """KV accepted and not yet delivered: unsent bytes of every flow, held layers included."""
        self._advance(now)
        return sum(f.sendable_bytes + f.held_bytes for f in self.flows.values())

    def mean_rate_bytes_per_s(self, now: float, window_s: float) -> float:
        """Total sending rate averaged over [now - window_s, now] (what a rate meter reports)."""
        lo = now - window_s
        total, end = 0.0, now
        for start, rate in reversed(self.rate_segments):
            total += rate * (end - max(start, lo))
            if start <= lo:
                break
            end = start
        return total / window_s

    def _advance(self, now: float) -> None:
        dt = now - self.updated_at
        if dt > 0.0:
            for flow in self.flows.values():
                sent = min(flow.sendable_bytes, flow.rate_bytes_per_s * dt)
                flow.sendable_bytes -= sent
                self.total_sent_bytes += sent
        self.updated_at = now

    def _reshare(self, now: float) -> None:
        sending = [f for f in self.flows.values() if f.sendable_bytes > 0.0]
        for flow in self.flows.values():
            flow.rate_bytes_per_s = 0.0
        caps = [min(f.cap_bytes_per_s, self.flow_cap_bytes_per_s) for f in sending]
        rates = max_min_rates(self.bytes_per_s, caps)
        for flow, rate in zip(sending, rates, strict=True):
            flow.rate_bytes_per_s = rate
        self.version += 1
        total = sum(rates)
        if self.rate_segments[-1][0] == now:
            self.rate_segments[-1] = (now, total)
        elif self.rate_segments[-1][1] != total:
            self.rate_segments.append((now, total))


class PathLatency:
    """Each transfer's unhidden latency, from the state of its destination's connections.

    A destination (a decode instance, or the cluster a prefix moves to) is NEW until its first
    transfer, then WARM while a transfer to it is in flight or one ended less than
    `prfaas.policy.transfer.cold_after_idle_s` ago, IDLE after that. Jitter is drawn per transfer
    from `rng` (seeded by the run), and only when the path has jitter.
    """

    def __init__(self, path: LinkPath, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.last_used_s: dict[str, float] = {}  # destination -> last transfer start or end, s
        self.num_in_flight: dict[str, int] = {}  # destination -> transfers in flight

    def start(self, now: float, dest: str, num_bytes: float, rate_bytes_per_s: float) -> float:
        """A transfer of `num_bytes` to `dest` starts at about `rate_bytes_per_s`: its unhidden
        latency, seconds (0 on an ideal path)."""
        busy = self.num_in_flight.get(dest, 0) > 0
        state = wire_state(self.last_used_s.get(dest), now, busy, self.path)
        self.num_in_flight[dest] = self.num_in_flight.get(dest, 0) + 1
        self.last_used_s[dest] = now
        jitter_s = draw_jitter_s(self.path, self.rng)
        return unhidden_latency_s(num_bytes, rate_bytes_per_s, self.path, state, jitter_s)

    def finish(self, now: float, dest: str) -> None:
        """A transfer to `dest` delivered its last byte at `now`."""
        self.num_in_flight[dest] -= 1
        self.last_used_s[dest] = now


class LinkSite:
    """One inter-cluster link as the simulator drives it: its flows (`SharedLink`, max-min fair),
    its transfers' round trips (`PathLatency`), its path and its wire bandwidth over time.

    `name` is "" for the one link of a one-provider run, else the provider's name. Capacities
    given to the flows are payload: the wire's times the path's payload efficiency."""

    def __init__(
        self,
        name: str,
        bandwidth: tuple[BandwidthStep, ...],
        path: LinkPath,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.bandwidth = bandwidth
        self.path = path
        self.wire_bytes_per_s = gbps_to_bytes_per_s(bandwidth[0].gbps)
        self.link = SharedLink(
            self.payload_bytes_per_s(bandwidth[0].gbps), flow_cap_bytes_per_s(path)
        )
        self.latency = PathLatency(path, rng)

    def payload_bytes_per_s(self, gbps: float) -> float:
        """The payload capacity of a wire of `gbps`: times the payload efficiency."""
        return gbps_to_bytes_per_s(gbps) * self.path.payload_efficiency

    def set_wire_bytes_per_s(self, now: float, wire_bytes_per_s: float) -> None:
        """The wire's capacity becomes `wire_bytes_per_s` at `now`."""
        self.wire_bytes_per_s = wire_bytes_per_s
        self.link.set_capacity(now, wire_bytes_per_s * self.path.payload_efficiency)
