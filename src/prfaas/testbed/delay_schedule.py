"""The delay line's rules, as pure code: its settings and when each packet leaves.

`DelaySettings` is what `prfaas testbed up` / `link` set (one-way delay, jitter and its
distribution, loss, whether packets may be reordered), checked on construction and carried as a
plain dict in the state file and over the delay line's control socket. `DirectionSchedule` is
one direction of the WAN: for a packet arriving at `now_s` it draws, from a seeded
`random.Random` it is given, whether the packet is lost and otherwise when it leaves:

- the hold is `delay_ms` plus a jitter sample, never below zero. `uniform` jitter draws from
  [-jitter_ms, +jitter_ms] (bounded, like netem's default); `normal` jitter has standard
  deviation jitter_ms;
- without `reorder` a packet never leaves before the one ahead of it in the same direction (its
  release is at least the previous release: jitter then delays, it does not overtake); with it,
  each packet keeps its own draw;
- a packet is lost with probability `loss_pct` / 100, in each direction independently, so a
  round trip (a ping and its echo) is lost with 1 - (1 - loss)^2.

`PacketQueue` is the line itself, both directions (a packet's direction is its IPv4
destination): a heap of (release time, arrival number, packet), released in time order, with
per-direction counters and a bound on the bytes held. The process that reads packets into it
and writes them out when due is `prfaas.testbed.delayline`.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

JITTER_DISTRIBUTIONS = ("uniform", "normal")
MAX_DELAY_MS = 10_000.0  # one way; far beyond any inter-datacenter link


class DelaySettingsError(ValueError):
    """A delay line setting out of range; the message names the setting and the value."""


@dataclass(frozen=True)
class DelaySettings:
    """One direction's (and, applied to both, the WAN's) delay, jitter, loss and reordering."""

    delay_ms: float = 0.0  # one way: the round trip is twice this
    jitter_ms: float = 0.0
    jitter_distribution: str = "uniform"  # uniform | normal
    loss_pct: float = 0.0  # in [0, 100), per packet and direction
    reorder: bool = False  # may a packet leave before the one ahead of it?

    def __post_init__(self) -> None:
        _check_range("delay", self.delay_ms, 0.0, MAX_DELAY_MS, "ms")
        _check_range("jitter", self.jitter_ms, 0.0, MAX_DELAY_MS, "ms")
        if self.jitter_distribution not in JITTER_DISTRIBUTIONS:
            raise DelaySettingsError(
                f"jitter distribution must be one of {', '.join(JITTER_DISTRIBUTIONS)}, "
                f"got {self.jitter_distribution!r}"
            )
        if not (math.isfinite(self.loss_pct) and 0.0 <= self.loss_pct < 100.0):
            raise DelaySettingsError(f"loss must be in [0, 100) %, got {self.loss_pct!r}")
        if not isinstance(self.reorder, bool):
            raise DelaySettingsError(f"reorder must be true or false, got {self.reorder!r}")

    @property
    def holds_packets(self) -> bool:
        """Whether these settings change anything: a delay, jitter or loss (reordering alone
        has nothing to reorder without jitter)."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss_pct > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> DelaySettings:
        """Settings from a dict of known keys (missing ones take their defaults); raises
        DelaySettingsError on an unknown key, a wrong type or a value out of range."""
        if not isinstance(data, dict):
            raise DelaySettingsError(f"delay settings must be an object, got {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise DelaySettingsError(f"unknown delay settings: {', '.join(sorted(unknown))}")
        for key in ("delay_ms", "jitter_ms", "loss_pct"):
            value = data.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DelaySettingsError(f"{key} must be a number, got {value!r}")
        return cls(**{key: data[key] for key in data})

    def replaced(self, **changes: Any) -> DelaySettings:
        """These settings with the given ones changed (None: keep); checked again."""
        kept = {key: value for key, value in changes.items() if value is not None}
        return DelaySettings.from_dict(self.to_dict() | kept)


def _check_range(what: str, value: float, low: float, high: float, unit: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise DelaySettingsError(f"{what} must be in [{low:g}, {high:g}] {unit}, got {value!r}")


def hold_ms(settings: DelaySettings, rng: random.Random) -> float:
    """One packet's hold: delay plus a jitter sample of the settings' distribution, >= 0."""
    if settings.jitter_ms == 0:
        return settings.delay_ms
    if settings.jitter_distribution == "normal":
        sample = rng.gauss(0.0, settings.jitter_ms)
    else:
        sample = rng.uniform(-settings.jitter_ms, settings.jitter_ms)
    return max(0.0, settings.delay_ms + sample)


class DirectionSchedule:
    """When the packets of one direction leave: `release_s(now_s, settings)` for each packet in
    arrival order, None for a lost one. Keeps the last release so that, without reordering, no
    packet leaves before the one ahead of it."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._last_release_s = -math.inf

    def release_s(self, now_s: float, settings: DelaySettings) -> float | None:
        """The time the packet arriving at `now_s` leaves, or None when it is lost."""
        if settings.loss_pct > 0 and self._rng.random() * 100.0 < settings.loss_pct:
            return None
        release = now_s + hold_ms(settings, self._rng) / 1000.0
        if not settings.reorder:
            release = max(release, self._last_release_s)
        self._last_release_s = max(release, self._last_release_s)
        return release


@dataclass
class DirectionCounters:
    """What one direction of the delay line did since it started."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_lost: int = 0  # drawn as lost (loss_pct)
    packets_overflow: int = 0  # dropped because the line held too many bytes
    packets_out: int = 0


class PacketQueue:
    """The packets in flight on the delay line, both directions, ordered by release time.

    `accept(packet, now_s)` schedules a packet by its direction (its IPv4 destination) or drops
    it (loss, or more than `max_held_bytes` already held); `pop_due(now_s)` returns the packets
    whose time has come, in release order (ties in arrival order). Settings changed with
    `settings = ...` apply to packets arriving from then on."""

    def __init__(self, settings: DelaySettings, seed: int, max_held_bytes: int) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self._max_held_bytes = max_held_bytes
        self._schedules: dict[bytes, DirectionSchedule] = {}
        self.counters: dict[bytes, DirectionCounters] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self.held_bytes = 0

    def accept(self, packet: bytes, now_s: float) -> bool:
        """Schedule `packet` (arrived at `now_s`); False when it was dropped."""
        direction = packet_direction(packet)
        if direction not in self._schedules:
            self._schedules[direction] = DirectionSchedule(self._rng)
            self.counters[direction] = DirectionCounters()
        counters = self.counters[direction]
        counters.packets_in += 1
        counters.bytes_in += len(packet)
        if self.held_bytes + len(packet) > self._max_held_bytes:
            counters.packets_overflow += 1
            return False
        release_s = self._schedules[direction].release_s(now_s, self.settings)
        if release_s is None:
            counters.packets_lost += 1
            return False
        heapq.heappush(self._heap, (release_s, self._seq, packet))
        self._seq += 1
        self.held_bytes += len(packet)
        return True

    def next_release_s(self) -> float | None:
        """When the next packet is due (None: nothing held)."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_s: float) -> list[bytes]:
        """The packets due at `now_s`, in release order, taken off the line."""
        due: list[bytes] = []
        while self._heap and self._heap[0][0] <= now_s:
            packet = heapq.heappop(self._heap)[2]
            self.held_bytes -= len(packet)
            self.counters[packet_direction(packet)].packets_out += 1
            due.append(packet)
        return due

    def num_held(self) -> int:
        return len(self._heap)


def packet_direction(packet: bytes) -> bytes:
    """The direction of an IP packet: its IPv4 destination address (b"" for anything else)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[16:20])
    return b""
