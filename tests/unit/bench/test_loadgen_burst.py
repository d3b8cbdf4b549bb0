"""`prfaas bench system`'s burst and run-time additions: the burst's extra arrivals in the
schedule, its bounds, and `run_schedule`'s timed actions and pluggable egress counter."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable

import pytest

from prfaas.bench.loadgen import Target, TimedAction, run_schedule
from prfaas.bench.schedule import MAX_REQUESTS, Burst, PlannedRequest, Workload, build_schedule
from prfaas.errors import UserError
from prfaas.workload import TruncatedLogNormal

BASE_LENGTHS = TruncatedLogNormal(4.0, 0.5, 16, 100)  # every base prompt is <= 100 tokens
BURST = Burst(at_s=5.0, duration_s=2.0, rate_per_s=50.0, num_tokens=500)
UNREACHABLE = Target("http://127.0.0.1:9", "m", request_timeout_s=5.0)  # never sent to


def _workload(burst: Burst | None, max_model_len: int | None = None) -> Workload:
    return Workload(lengths=BASE_LENGTHS, output_tokens=8, max_model_len=max_model_len, burst=burst)


def _schedule(
    burst: Burst | None, seed: int = 3, max_model_len: int | None = None
) -> list[PlannedRequest]:
    return build_schedule(_workload(burst, max_model_len), 4.0, 40, 600.0, seed)


def _burst_part(schedule: list[PlannedRequest], num_tokens: int) -> list[PlannedRequest]:
    return [p for p in schedule if len(p.prompt_token_ids) == num_tokens]


# ---- the schedule -----------------------------------------------------------------------------


def test_burst_adds_its_requests_within_its_window() -> None:
    base = _schedule(None)
    both = _schedule(BURST)
    extra = _burst_part(both, BURST.num_tokens)
    assert len(both) == len(base) + len(extra)
    assert [p for p in both if len(p.prompt_token_ids) != BURST.num_tokens] == base
    expected = BURST.rate_per_s * BURST.duration_s  # 100 requests on average
    assert 0.5 * expected <= len(extra) <= 1.5 * expected
    end_s = BURST.at_s + BURST.duration_s
    assert all(BURST.at_s <= p.at_s <= end_s for p in extra)
    assert all(p.max_tokens == 8 for p in extra)


def test_burst_schedule_is_sorted_and_seeded() -> None:
    a, b, c = _schedule(BURST, seed=3), _schedule(BURST, seed=3), _schedule(BURST, seed=4)
    assert [p.at_s for p in a] == sorted(p.at_s for p in a)
    assert a == b
    assert a != c


def test_burst_prompts_are_cut_to_the_context_like_the_others() -> None:
    max_model_len = 300  # prompt + 8 output tokens fit: 292 prompt tokens at most
    burst = Burst(1.0, 1.0, 20.0, 5000)
    schedule = _schedule(burst, max_model_len=max_model_len)
    cut = _burst_part(schedule, max_model_len - 8)
    assert cut and all(1.0 <= p.at_s <= 2.0 for p in cut)
    assert all(len(p.prompt_token_ids) + p.max_tokens <= max_model_len for p in schedule)


@pytest.mark.parametrize(
    ("burst_args", "message"),
    [
        ((-1.0, 1.0, 1.0, 100), "start >= 0"),
        ((math.nan, 1.0, 1.0, 100), "finite start"),
        ((0.0, 0.0, 1.0, 100), "duration"),
        ((0.0, 1.0, 0.0, 100), "rate"),
        ((0.0, 200.0, 1000.0, 100), f"more than {MAX_REQUESTS} requests"),
        ((0.0, 1.0, 1.0, 0), "at least one token"),
    ],
)
def test_bad_bursts_are_refused(burst_args: tuple[float, float, float, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        Burst(*burst_args)


# ---- timed actions and the egress counter -----------------------------------------------------


def _counter(start_bytes: int, step_bytes: int) -> tuple[list[int], Callable[[], int]]:
    """A byte counter that grows by `step_bytes` per read; returns (values read, reader)."""
    read: list[int] = []
    lock = threading.Lock()

    def read_bytes() -> int:
        with lock:
            read.append(start_bytes + step_bytes * len(read))
            return read[-1]

    return read, read_bytes


def test_timed_actions_are_logged_in_order_with_their_outcomes() -> None:
    first_done = threading.Event()

    def drop() -> str:
        first_done.set()
        return "dropped"

    def restore() -> str:
        first_done.wait(timeout=60.0)  # ends after `drop` however slow the machine
        raise RuntimeError("restore failed")

    actions = [TimedAction(0.05, "drop", drop), TimedAction(0.1, "restore", restore)]
    _, read_bytes = _counter(0, 1)
    outcome = asyncio.run(
        run_schedule(UNREACHABLE, [], read_egress_bytes=read_bytes, actions=actions)
    )
    assert outcome.results == []
    assert [a["name"] for a in outcome.actions] == ["drop", "restore"]
    first, second = outcome.actions
    assert first["at_s"] == 0.05 and first["outcome"] == "dropped" and "error" not in first
    assert second["at_s"] == 0.1 and "outcome" not in second
    assert second["error"] == "RuntimeError: restore failed"
    assert 0.05 <= first["done_s"] <= second["done_s"]
    assert second["done_s"] >= 0.1


def test_egress_samples_come_from_the_counter_function() -> None:
    read, read_bytes = _counter(1_000, 100)
    actions = [TimedAction(0.2, "wait", lambda: None)]  # keeps the run going for 0.2 s
    outcome = asyncio.run(
        run_schedule(
            UNREACHABLE,
            [],
            egress_urls=["http://127.0.0.1:9"],  # not scraped: the counter function wins
            sample_period_s=0.05,
            read_egress_bytes=read_bytes,
            actions=actions,
        )
    )
    samples = outcome.egress_samples
    assert len(samples) >= 2
    values = [b for _, b in samples]
    assert values[0] == 1_000
    assert set(values) <= set(read)
    assert values == sorted(values) and values[-1] > values[0]
    times = [t for t, _ in samples]
    assert times == sorted(times)
