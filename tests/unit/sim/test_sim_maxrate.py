"""Bisection for the highest stable rate: on a known ratio curve and on a tiny simulated system."""

from __future__ import annotations

import pytest
from sim_factories import make_config

from prfaas.errors import UserError
from prfaas.sim.maxrate import (
    MIN_RATE_FRACTION,
    Probe,
    bisect_rate,
    completion_ratio,
    find_max_rate,
)
from prfaas.sim.simulator import Simulator
from prfaas.sim.traffic import synthetic_requests
from prfaas.types import DeploymentKind
from prfaas.workload import TruncatedLogNormal


def test_bisection_on_a_known_capacity() -> None:
    result = find_max_rate(lambda rate: min(1.0, 5.0 / rate), 1.0, rel_tol=0.005)
    assert result.upper_rate_per_s >= 5.0
    assert result.max_rate_per_s == pytest.approx(5.0 / 0.97, rel=0.01)
    assert all(p.is_stable == (p.completion_ratio >= 0.97) for p in result.probes)


def test_bisection_rejects_a_bad_start() -> None:
    with pytest.raises(UserError):
        find_max_rate(lambda rate: 1.0, 0.0)


def test_a_criterion_no_rate_meets_ends_the_search_at_its_floor() -> None:
    """Every probe unstable: the search halves down to MIN_RATE_FRACTION of its first rate, then
    reports no stable rate (0) instead of bisecting towards 0 with ever longer runs."""
    result = bisect_rate(lambda rate: Probe(rate, 0.5, False), 4.0)
    assert result.max_rate_per_s == 0.0
    rates = [p.rate_per_s for p in result.probes]
    assert min(rates) >= 4.0 * MIN_RATE_FRACTION
    assert len(rates) == 11  # 4.0, 2.0, ..., 4.0 / 1024


def test_tiny_system_lands_near_its_capacity() -> None:
    """One PD-P instance taking exactly 1 s per request: capacity 1 request/s."""
    config = make_config(
        DeploymentKind.HOMOGENEOUS, prefill_s=(1.0, 0.0, 0.0), max_batch_size=64, drain_s=0.0
    )
    lengths = TruncatedLogNormal(6.0, 0.5, 16, 2000)

    def ratio_at(rate: float) -> float:
        requests = synthetic_requests(lengths, 2, rate, seed=3, duration_s=1500.0)
        sim = Simulator(config, requests)
        sim.run()
        end_s = requests[-1].arrived_at
        return completion_ratio(sim.log, end_s / 2, end_s)

    result = find_max_rate(ratio_at, 0.5, rel_tol=0.01)
    assert 0.92 <= result.max_rate_per_s <= 1.06
