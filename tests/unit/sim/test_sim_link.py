"""Max-min fair sharing on the shared link, hand-computed cases, and bandwidth changes."""

from __future__ import annotations

import math
import random

import pytest

from prfaas.sim.link import (
    SharedLink,
    bandwidth_drop,
    fluctuating_bandwidth,
    max_min_rates,
)


@pytest.mark.parametrize(
    ("capacity", "caps", "expected"),
    [
        (10.0, [math.inf, math.inf], [5.0, 5.0]),
        (10.0, [2.0, math.inf], [2.0, 8.0]),
        (10.0, [1.0, 3.0, math.inf], [1.0, 3.0, 6.0]),
        (10.0, [4.0, 4.0, 4.0], [10 / 3, 10 / 3, 10 / 3]),
        (10.0, [1.0, 2.0], [1.0, 2.0]),
        (0.0, [1.0, math.inf], [0.0, 0.0]),
    ],
)
def test_max_min_rates(capacity: float, caps: list[float], expected: list[float]) -> None:
    assert max_min_rates(capacity, caps) == pytest.approx(expected)


def _released(link: SharedLink, now: float, flow_id: int, num_bytes: float) -> None:
    link.add(now, flow_id, num_bytes, 0.0, math.inf)
    link.release(now, flow_id)


def test_two_flows_share_then_the_survivor_takes_all() -> None:
    link = SharedLink(10.0)
    _released(link, 0.0, 1, 100.0)
    _released(link, 0.0, 2, 300.0)
    assert link.next_drain_at() == pytest.approx(20.0)  # 100 bytes at 5 B/s
    assert link.pop_drained(20.0) == [1]
    assert link.next_drain_at() == pytest.approx(40.0)  # 200 bytes left at 10 B/s
    assert link.pop_drained(40.0) == [2]
    assert link.total_sent_bytes == pytest.approx(400.0)


def test_bandwidth_drop_slows_the_transfer_in_flight() -> None:
    link = SharedLink(10.0)
    _released(link, 0.0, 1, 100.0)
    link.set_capacity(5.0, 1.0)  # 50 bytes sent, 50 left at 1 B/s
    assert link.next_drain_at() == pytest.approx(55.0)
    assert link.mean_rate_bytes_per_s(10.0, 10.0) == pytest.approx((5 * 10 + 5 * 1) / 10)


def test_capped_flow_parks_until_its_prefill_ends() -> None:
    """A flow capped at the production rate sends 90 bytes by t=9, parks, and ships the last
    layer's 10 bytes after release at t=10 at the full 100 B/s."""
    link = SharedLink(100.0)
    link.add(0.0, 7, 100.0, 10.0, 10.0)
    assert link.next_drain_at() == pytest.approx(9.0)
    assert link.pop_drained(9.0) == []  # parked, not finished
    assert link.next_drain_at() is None
    assert link.release(10.0, 7) is False
    assert link.next_drain_at() == pytest.approx(10.1)
    assert link.pop_drained(10.1) == [7]


def test_bandwidth_series_builders() -> None:
    steps = bandwidth_drop(100.0, 1800.0, 10.0)
    assert [(s.at, s.gbps) for s in steps] == [(0.0, 100.0), (1800.0, 10.0)]
    wobble = fluctuating_bandwidth(
        100.0, period_s=10.0, low_fraction=0.5, duration_s=95.0, rng=random.Random(1)
    )
    assert len(wobble) == 10
    assert all(50.0 <= s.gbps <= 100.0 for s in wobble)
    again = fluctuating_bandwidth(
        100.0, period_s=10.0, low_fraction=0.5, duration_s=95.0, rng=random.Random(1)
    )
    assert wobble == again


def test_backlog_counts_unsent_and_held_bytes() -> None:
    link = SharedLink(100.0)
    link.add(0.0, 1, total_bytes=1000.0, held_bytes=100.0, cap=math.inf)
    assert link.backlog_bytes(0.0) == pytest.approx(1000.0)
    assert link.backlog_bytes(5.0) == pytest.approx(500.0)  # 500 B sent at 100 B/s
    assert link.backlog_bytes(9.0) == pytest.approx(100.0)  # only the held layer is left
    link.release(9.0, 1)
    assert link.backlog_bytes(10.0) == pytest.approx(0.0)


def test_a_drain_below_the_clock_resolution_still_advances() -> None:
    """Far into a run (1e9 s, where one float step is about 1.2e-7 s) 3 bytes at 1e9 B/s drain in
    3e-9 s, less than the clock can add: the next drain time is still strictly later, and
    popping there finishes the flow instead of rescheduling the same instant forever."""
    link = SharedLink(1e9)
    _released(link, 1e9, 1, 3.0)
    drain_at = link.next_drain_at()
    assert drain_at is not None and drain_at > 1e9
    assert link.pop_drained(drain_at) == [1]
    assert link.next_drain_at() is None
