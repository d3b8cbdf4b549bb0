"""Length distributions: closed forms against sampling and hand-computed values, validation."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from prfaas.errors import UserError
from prfaas.workload import EmpiricalLengths, TruncatedLogNormal

PAPER = TruncatedLogNormal(mu=9.90, sigma=1.00, min_tokens=128, max_tokens=131072)


def test_paper_distribution_matches_the_paper_numbers() -> None:
    """p(19.4K) = 49.6%, mean about 27K, P90 = 62.4K (the case study, docs/paper.md)."""
    assert PAPER.prob_greater(19400) == pytest.approx(0.496, abs=0.001)
    assert PAPER.mean() == pytest.approx(27.5e3, rel=0.01)
    assert PAPER.quantile(0.9) == pytest.approx(62.4e3, rel=0.002)


def test_untruncated_limit_gives_lognormal_moments() -> None:
    d = TruncatedLogNormal(mu=2.0, sigma=0.5, min_tokens=1e-12, max_tokens=1e12)
    assert d.mean() == pytest.approx(math.exp(2.0 + 0.125), rel=1e-9)
    assert d.second_moment_between(0, math.inf) == pytest.approx(math.exp(4.0 + 0.5), rel=1e-9)
    assert d.quantile(0.5) == pytest.approx(math.exp(2.0), rel=1e-9)
    # P(L > e^mu * e^sigma) = 1 - Phi(1)
    assert d.prob_greater(math.exp(2.5)) == pytest.approx(1 - NormalDist().cdf(1.0), rel=1e-9)


def test_conditional_means_agree_with_sampling() -> None:
    rng = random.Random(7)
    samples = EmpiricalLengths([PAPER.sample(rng) for _ in range(100_000)])
    for lo, hi in [(0, 19400), (19400, math.inf), (5000, 40000)]:
        assert PAPER.mean_between(lo, hi) == pytest.approx(samples.mean_between(lo, hi), rel=0.01)
    assert samples.prob_greater(19400) == pytest.approx(PAPER.prob_greater(19400), abs=0.005)


def test_law_of_total_expectation() -> None:
    t = 19400
    p = PAPER.prob_greater(t)
    total = p * PAPER.mean_between(t, math.inf) + (1 - p) * PAPER.mean_between(0, t)
    assert total == pytest.approx(PAPER.mean(), rel=1e-9)


def test_samples_stay_in_bounds_and_are_deterministic() -> None:
    d = TruncatedLogNormal(mu=5.0, sigma=3.0, min_tokens=100, max_tokens=200)
    xs = [d.sample(random.Random(3)) for _ in range(3)]
    assert xs[0] == xs[1] == xs[2]
    rng = random.Random(1)
    assert all(100 <= d.sample(rng) <= 200 for _ in range(2000))


def test_quantile_inverts_cdf() -> None:
    for q in (0.01, 0.3, 0.5, 0.9, 0.99):
        assert PAPER.cdf(PAPER.quantile(q)) == pytest.approx(q, abs=1e-9)
    assert PAPER.quantile(0.0) == 128
    assert PAPER.quantile(1.0) == 131072


@pytest.mark.parametrize(
    "args",
    [(9.9, 0.0, 128, 1000), (9.9, -1.0, 128, 1000), (9.9, 1.0, 1000, 128), (9.9, 1.0, 0, 10)],
)
def test_bad_lognormal_parameters_raise_user_error(args: tuple[float, ...]) -> None:
    with pytest.raises(UserError):
        TruncatedLogNormal(*args)


def test_empirical_hand_computed() -> None:
    d = EmpiricalLengths([10, 20, 30, 40])
    assert d.prob_greater(20) == 0.5
    assert d.prob_greater(19.9) == 0.75
    assert d.mean_between(15, 40) == 30.0  # (20 + 30 + 40) / 3
    assert d.mean_between(-math.inf, 20) == 15.0
    assert d.second_moment_between(0, 20) == 250.0
    assert d.mean() == 25.0
    assert d.quantile(0.5) == 25.0
    assert d.quantile(1.0) == 40.0
    with pytest.raises(ValueError):
        d.mean_between(40, 100)
    assert d.sample(random.Random(0)) in {10, 20, 30, 40}


def test_empirical_rejects_bad_values() -> None:
    with pytest.raises(UserError):
        EmpiricalLengths([])
    with pytest.raises(UserError):
        EmpiricalLengths([1, -2])


def test_expect_between_matches_closed_forms() -> None:
    for lo, hi in [(0, math.inf), (19400, math.inf), (0, 19400)]:
        mean = PAPER.expect_between(lambda x: x, lo, hi)
        assert mean == pytest.approx(PAPER.mean_between(lo, hi), rel=1e-4)
        second = PAPER.expect_between(lambda x: x * x, lo, hi)
        assert second == pytest.approx(PAPER.second_moment_between(lo, hi), rel=2e-3)
    d = EmpiricalLengths([1, 2, 3])
    assert d.expect_between(lambda x: x**3, 1, 3) == (8 + 27) / 2
    with pytest.raises(ValueError):
        PAPER.expect_between(lambda x: x, 200_000, 300_000)
