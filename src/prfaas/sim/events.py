"""Simulator events and their total order: one frozen dataclass per event, keyed
(time, priority, seq).

Knows nothing about instances or policy. Same-time ties are broken by the named `Priority` table
(lower runs first), then by `seq`, the order in which events were pushed, so a run is deterministic.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    """Order of events that fall on the same instant (lower first), and why.

    Bandwidth changes apply before anything that reads the link; completions free resources before
    new work is admitted; arrivals are routed last, so they see the freshest queue and link state.
    """

    BANDWIDTH_CHANGE = (
        0  # the link's capacity changes first: every rate after it uses the new value
    )
    TRANSFER_DEADLINE = 1  # KV landing exactly at its deadline is too late, as live's timeout
    LINK_DRAIN = 2  # transfers that finish now free the link and deliver KV to decode
    DECODE_WAKE = 3  # decode steps that end now release slots before KV arrivals are admitted
    PREFILL_STEP_DONE = 4  # prefill steps end, hand KV over and start the next step
    CONTROLLER_TICK = 5  # the long-timescale controller reads the settled state, then arrivals
    ARRIVAL = 6  # new requests are routed against the state left by everything above


@dataclass(frozen=True, slots=True)
class Arrival:
    """Request number `index` of the workload enters the router."""

    index: int  # position of the request in the workload (0-based)
    priority = Priority.ARRIVAL


@dataclass(frozen=True, slots=True)
class PrefillStepDone:
    """A prefill instance finishes its current step (one or more chunks)."""

    instance_id: str  # the prefill instance that ran the step
    priority = Priority.PREFILL_STEP_DONE


@dataclass(frozen=True, slots=True)
class LinkDrain:
    """The next transfer on the shared link drains, as predicted at link version `version`."""

    version: int  # link version when scheduled; stale if the link changed since
    link: str = ""  # the link (`LinkSite.name`): "" for a run's one link, else a provider's
    priority = Priority.LINK_DRAIN


@dataclass(frozen=True, slots=True)
class TransferLanded:
    """A drained transfer's round trips have passed (`prfaas.sim.link.PathLatency`): its KV (or
    moved prefix) is usable now. Ordered like the drain it follows."""

    req_index: int  # the request the transfer belongs to
    is_prefix_move: bool  # True: a cached prefix moved before prefill; False: the request's KV
    priority = Priority.LINK_DRAIN


@dataclass(frozen=True, slots=True)
class TransferDeadline:
    """Request `req_index`'s decode instance stops waiting for its KV (`SimConfig.
    transfer_deadline_s` after the decode job was dispatched): unless it landed, the failure
    policy applies (`prfaas.sim.deadline`)."""

    req_index: int  # the request whose KV is waited for
    priority = Priority.TRANSFER_DEADLINE


@dataclass(frozen=True, slots=True)
class BandwidthChange:
    """The shared link's capacity becomes `bytes_per_s` (step `step_index` of the series)."""

    step_index: int  # position in the bandwidth series; the handler schedules the next step
    bytes_per_s: float  # new link capacity, bytes per second
    link: str = ""  # the link (`LinkSite.name`): "" for a run's one link, else a provider's
    priority = Priority.BANDWIDTH_CHANGE


@dataclass(frozen=True, slots=True)
class DecodeWake:
    """A decode instance reaches a step boundary where its batch changes, as of `version`."""

    instance_id: str  # the decode instance
    version: int  # instance version when scheduled; stale if the batch plan changed since
    priority = Priority.DECODE_WAKE


@dataclass(frozen=True, slots=True)
class ControllerTick:
    """The long-timescale controller's periodic tick (`prfaas.policy.controller`)."""

    tick_index: int  # 1 for the first tick, at one period
    priority = Priority.CONTROLLER_TICK


@dataclass(frozen=True, slots=True)
class ControllerWake:
    """An extra controller decision between ticks: a link capacity change it held has lasted
    long enough to act on (`AdaptiveController.wake_at_s`). Stale when the wake moved since."""

    priority = Priority.CONTROLLER_TICK


Event = (
    Arrival
    | PrefillStepDone
    | LinkDrain
    | TransferLanded
    | BandwidthChange
    | DecodeWake
    | ControllerTick
    | ControllerWake
    | TransferDeadline
)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """An event due at `at` (seconds of simulated time)."""

    at: float  # simulated time, seconds
    event: Event


class EventQueue:
    """Min-heap of events ordered by (time, priority, seq)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0
        self.num_pushed = 0

    def push(self, at: float, event: Event) -> None:
        heapq.heappush(self._heap, (at, int(event.priority), self._seq, event))
        self._seq += 1
        self.num_pushed += 1

    def pop(self) -> Scheduled:
        at, _, _, event = heapq.heappop(self._heap)
        return Scheduled(at, event)

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
