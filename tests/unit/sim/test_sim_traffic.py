"""Workload building: common random numbers across rates, trace replay and rescaling."""

from __future__ import annotations

import itertools

import pytest

from prfaas.errors import UserError
from prfaas.sim.config import SimRequest
from prfaas.sim.traffic import synthetic_requests, trace_requests
from prfaas.workload import TraceRequest, TruncatedLogNormal

LENGTHS = TruncatedLogNormal(9.9, 1.0, 128, 131072)


def test_same_seed_gives_same_lengths_at_any_rate() -> None:
    slow = synthetic_requests(LENGTHS, 1024, 1.0, seed=5, num_requests=50)
    fast = synthetic_requests(LENGTHS, 1024, 2.0, seed=5, num_requests=50)
    assert [r.num_prompt_tokens for r in slow] == [r.num_prompt_tokens for r in fast]
    assert [r.arrived_at / 2 for r in slow] == pytest.approx([r.arrived_at for r in fast])


def test_duration_limits_arrivals_and_gamma_is_burstier() -> None:
    poisson = synthetic_requests(LENGTHS, 8, 5.0, seed=1, duration_s=2000.0)
    gamma = synthetic_requests(LENGTHS, 8, 5.0, seed=1, duration_s=2000.0, cv=3.0)
    assert all(r.arrived_at <= 2000.0 for r in poisson + gamma)

    def cv(reqs: list[SimRequest]) -> float:
        gaps = [b.arrived_at - a.arrived_at for a, b in itertools.pairwise(reqs)]
        mean = sum(gaps) / len(gaps)
        return float((sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean)

    assert cv(poisson) == pytest.approx(1.0, abs=0.1)
    assert cv(gamma) > 2.0


def test_trace_rescaling_and_bad_input() -> None:
    trace = [TraceRequest(float(t), 100, 5, (t,)) for t in range(11)]
    requests = trace_requests(trace, rate_per_s=2.0)
    assert requests[-1].arrived_at == pytest.approx(5.0)
    assert requests[3].block_hashes == (3,)
    assert len(trace_requests(trace, num_requests=4)) == 4
    with pytest.raises(UserError):
        synthetic_requests(LENGTHS, 8, 1.0, seed=0)
    with pytest.raises(UserError):
        trace_requests(trace, rate_per_s=-1.0)
