"""`PrefillRate`: what a prefill instance reports as the seconds its queued tokens will take."""

from __future__ import annotations

import pytest

from prfaas.engine.emulated import make_emulated_engine
from prfaas.errors import UserError
from prfaas.instance.engines import PrefillRate

MODEL = "gpt-oss-120b"


def _engine(time_scale: float, slept: list[float]) -> object:
    return make_emulated_engine(MODEL, "h200", 8, sleep=slept.append, time_scale=time_scale)


@pytest.mark.parametrize("time_scale", [1.0, 0.1, 0.0])
def test_an_emulated_instance_expects_what_its_engine_sleeps(time_scale: float) -> None:
    """The expected seconds follow the engine's time scale, so queue delays and the link's
    backlog (on a link scaled the same way) are compared in the same units."""
    slept: list[float] = []
    engine = _engine(time_scale, slept)
    unscaled = PrefillRate(_engine(1.0, [])).expected_s(4096)
    assert unscaled > 0
    assert PrefillRate(engine).expected_s(4096) == pytest.approx(unscaled * time_scale)


class _MeasuredEngine:
    """An engine that does not know its prefill time in advance (a torch engine)."""

    def predicted_prefill_s(self, num_tokens: int) -> None:
        return None


def test_a_real_engine_learns_its_rate_from_measured_prefills() -> None:
    rate = PrefillRate(_MeasuredEngine())  # type: ignore[arg-type]
    before = rate.expected_s(1000)
    for _ in range(20):
        rate.observe(1000, 0.1)  # 10k tokens/s measured
    assert rate.expected_s(1000) < before and rate.expected_s(1000) == pytest.approx(0.1, rel=0.05)


def test_a_negative_time_scale_is_refused() -> None:
    with pytest.raises(UserError, match="time_scale"):
        _engine(-1.0, [])


def test_the_reported_queue_is_the_prefill_left_not_every_job_whole() -> None:
    """At t = 10 s with 1 s per 1000 tokens: a queued 2000-token job counts 2 s, the one that
    started at 9.25 s counts the 0.25 s it has left, one past its forward (sending its tail)
    nothing, and a job over its expected time nothing rather than a negative rest."""
    from prfaas.instance.prefill import _Job, remaining_prefill_s

    def job(num_tokens: int, started_at: float | None = None, done: float | None = None) -> _Job:
        entry = _Job(None, 0.0, num_tokens, started_at)  # type: ignore[arg-type]
        entry.forward_done_at = done
        return entry

    def expected_s(num_tokens: int) -> float:
        return num_tokens / 1000

    jobs = [job(2000), job(1000, started_at=9.25), job(4000, started_at=9.5, done=9.9)]
    assert remaining_prefill_s(jobs, 10.0, expected_s) == pytest.approx(2.25)
    assert remaining_prefill_s([job(1000, started_at=8.0)], 10.0, expected_s) == 0.0
