"""The delay line's pure rules (`prfaas.testbed.delay_schedule`): settings checks, hold times
from delay and jitter, the no-reorder rule, loss drawn from the line's own seeded RNG, and the
packet queue's directions, ordering and overflow."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from prfaas.testbed.delay_schedule import (
    DelaySettings,
    DelaySettingsError,
    DirectionSchedule,
    PacketQueue,
    hold_ms,
    packet_direction,
)


def _packet(dst: str, tag: int = 0) -> bytes:
    """A minimal IPv4 header to `dst` (only the version and destination matter here)."""
    header = bytearray(20)
    header[0] = 0x45
    header[16:20] = bytes(int(part) for part in dst.split("."))
    return bytes(header) + tag.to_bytes(4, "big")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"delay_ms": -1.0}, "delay must be in"),
        ({"delay_ms": math.nan}, "delay must be in"),
        ({"delay_ms": math.inf}, "delay must be in"),
        ({"jitter_ms": -0.1}, "jitter must be in"),
        ({"loss_pct": 100.0}, "loss must be in"),
        ({"loss_pct": -1.0}, "loss must be in"),
        ({"loss_pct": math.nan}, "loss must be in"),
        ({"jitter_distribution": "pareto"}, "jitter distribution"),
        ({"reorder": "yes"}, "reorder"),
    ],
)
def test_bad_settings_are_refused_with_their_reason(fields: dict[str, object], match: str) -> None:
    with pytest.raises(DelaySettingsError, match=match):
        DelaySettings(**fields)  # type: ignore[arg-type]


def test_settings_from_a_dict_refuse_unknown_keys_and_non_numbers() -> None:
    assert DelaySettings.from_dict({"delay_ms": 5}) == DelaySettings(delay_ms=5.0)
    with pytest.raises(DelaySettingsError, match="unknown delay settings: rate"):
        DelaySettings.from_dict({"rate": 1})
    with pytest.raises(DelaySettingsError, match="delay_ms must be a number"):
        DelaySettings.from_dict({"delay_ms": True})
    with pytest.raises(DelaySettingsError, match="must be an object"):
        DelaySettings.from_dict([1])


def test_replaced_keeps_what_is_not_given_and_checks_the_result() -> None:
    settings = DelaySettings(delay_ms=25.0, loss_pct=1.0)
    changed = settings.replaced(delay_ms=5.0, loss_pct=None)
    assert (changed.delay_ms, changed.loss_pct) == (5.0, 1.0)
    with pytest.raises(DelaySettingsError):
        settings.replaced(loss_pct=100.0)


def test_without_jitter_every_packet_is_held_exactly_the_delay() -> None:
    schedule = DirectionSchedule(random.Random(1))
    settings = DelaySettings(delay_ms=25.0)
    releases = [schedule.release_s(t, settings) for t in (0.0, 0.001, 0.5)]
    assert releases == pytest.approx([0.025, 0.026, 0.525], abs=1e-12)


def test_uniform_jitter_stays_within_delay_plus_minus_jitter() -> None:
    rng = random.Random(2)
    settings = DelaySettings(delay_ms=20.0, jitter_ms=5.0, jitter_distribution="uniform")
    holds = [hold_ms(settings, rng) for _ in range(5000)]
    assert 15.0 <= min(holds) < 15.5 and 24.5 < max(holds) <= 25.0
    assert statistics.mean(holds) == pytest.approx(20.0, abs=0.2)


def test_normal_jitter_has_the_jitter_as_standard_deviation_and_never_goes_negative() -> None:
    rng = random.Random(3)
    settings = DelaySettings(delay_ms=50.0, jitter_ms=4.0, jitter_distribution="normal")
    holds = [hold_ms(settings, rng) for _ in range(5000)]
    assert statistics.mean(holds) == pytest.approx(50.0, abs=0.3)
    assert statistics.stdev(holds) == pytest.approx(4.0, rel=0.1)
    wide = DelaySettings(delay_ms=1.0, jitter_ms=50.0, jitter_distribution="normal")
    assert min(hold_ms(wide, rng) for _ in range(1000)) == 0.0


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_without_reorder_no_packet_leaves_before_the_one_ahead_of_it(distribution: str) -> None:
    schedule = DirectionSchedule(random.Random(4))
    settings = DelaySettings(delay_ms=10.0, jitter_ms=8.0, jitter_distribution=distribution)
    releases = [schedule.release_s(i * 0.001, settings) for i in range(2000)]
    assert all(r is not None for r in releases)
    assert releases == sorted(releases)  # type: ignore[type-var]


def test_with_reorder_jitter_lets_packets_overtake() -> None:
    schedule = DirectionSchedule(random.Random(4))
    settings = DelaySettings(delay_ms=10.0, jitter_ms=8.0, reorder=True)
    releases = [schedule.release_s(i * 0.001, settings) for i in range(2000)]
    times = [r for r in releases if r is not None]
    overtaken = sum(1 for a, b in itertools.pairwise(times) if b < a)
    assert overtaken > 100


def test_loss_draws_from_the_lines_own_seeded_rng() -> None:
    settings = DelaySettings(loss_pct=30.0)
    global_state = random.getstate()
    one = DirectionSchedule(random.Random(5))
    two = DirectionSchedule(random.Random(5))
    lost_one = [one.release_s(0.0, settings) is None for _ in range(10_000)]
    lost_two = [two.release_s(0.0, settings) is None for _ in range(10_000)]
    assert random.getstate() == global_state  # the global RNG was not touched
    assert lost_one == lost_two  # same seed, same draws
    assert 0.28 < sum(lost_one) / len(lost_one) < 0.32


def test_the_queue_releases_each_direction_after_its_delay_in_order() -> None:
    queue = PacketQueue(DelaySettings(delay_ms=10.0), seed=0, max_held_bytes=1 << 20)
    a1, b1, a2 = _packet("10.0.0.1", 1), _packet("10.0.0.2", 1), _packet("10.0.0.1", 2)
    for packet, now_s in ((a1, 0.0), (b1, 0.001), (a2, 0.002)):
        assert queue.accept(packet, now_s)
    assert queue.pop_due(0.0099) == []
    assert queue.next_release_s() == pytest.approx(0.010)
    assert queue.pop_due(0.0111) == [a1, b1]
    assert queue.pop_due(1.0) == [a2] and queue.held_bytes == 0
    counters = queue.counters[packet_direction(a1)]
    assert (counters.packets_in, counters.packets_out, counters.packets_lost) == (2, 2, 0)


def test_the_no_reorder_rule_holds_per_direction_not_across_directions() -> None:
    """A packet of one direction is not held back behind the other direction's packets."""
    queue = PacketQueue(DelaySettings(delay_ms=10.0), seed=0, max_held_bytes=1 << 20)
    slow = _packet("10.0.0.1")
    queue.accept(slow, 0.0)
    queue.settings = DelaySettings(delay_ms=0.0)  # applies to packets arriving from now on
    fast = _packet("10.0.0.2")
    queue.accept(fast, 0.001)
    assert queue.pop_due(0.001) == [fast]
    later_same_direction = _packet("10.0.0.1", 9)
    queue.accept(later_same_direction, 0.002)
    assert queue.pop_due(0.005) == []  # waits for `slow`, which is ahead of it
    assert queue.pop_due(0.010) == [slow, later_same_direction]


def test_the_queue_drops_beyond_its_byte_limit_and_counts_it() -> None:
    packet = _packet("10.0.0.1")
    queue = PacketQueue(DelaySettings(delay_ms=10.0), seed=0, max_held_bytes=2 * len(packet))
    assert [queue.accept(packet, 0.0) for _ in range(3)] == [True, True, False]
    assert queue.counters[packet_direction(packet)].packets_overflow == 1


def test_packet_direction_is_the_ipv4_destination() -> None:
    assert packet_direction(_packet("10.201.1.2")) == bytes([10, 201, 1, 2])
    assert packet_direction(b"\x60" + bytes(40)) == b""  # IPv6
    assert packet_direction(b"\x45") == b""
