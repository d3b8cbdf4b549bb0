"""Arrival processes: mean rate, burstiness (cv) and validation."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from prfaas.errors import UserError
from prfaas.workload import gamma_arrivals, poisson_arrivals


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise([0.0, *times])]


def test_poisson_rate_and_cv() -> None:
    times = list(itertools.islice(poisson_arrivals(4.0, random.Random(1)), 50_000))
    gaps = _gaps(times)
    assert all(b > a for a, b in itertools.pairwise(times))
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.02)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    gaps = _gaps(list(itertools.islice(gamma_arrivals(2.0, cv, random.Random(2)), 100_000)))
    assert statistics.fmean(gaps) == pytest.approx(0.5, rel=0.03)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.05)


def test_same_seed_same_arrivals() -> None:
    a = list(itertools.islice(gamma_arrivals(1.0, 2.0, random.Random(5)), 100))
    b = list(itertools.islice(gamma_arrivals(1.0, 2.0, random.Random(5)), 100))
    assert a == b


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rate(rate: float) -> None:
    with pytest.raises(UserError):
        next(poisson_arrivals(rate, random.Random(0)))


def test_bad_cv() -> None:
    with pytest.raises(UserError):
        next(gamma_arrivals(1.0, 0.0, random.Random(0)))
