"""Eqs. 2-7 on small hand-computed cases."""

from __future__ import annotations

import math

import pytest

from prfaas.policy.throughput import (
    StageCosts,
    best_threshold,
    eq2_egress_bytes_per_s,
    evaluate,
    lambda_max,
    theta_pd_decode,
    theta_pd_prefill,
    theta_prfaas,
)
from prfaas.workload import EmpiricalLengths, TruncatedLogNormal


def _costs(egress_bytes_per_s: float = 1000.0) -> StageCosts:
    return StageCosts(
        t_prefill_prfaas_s=lambda n: n / 100,
        t_prefill_pd_s=lambda n: n / 100,
        kv_bytes=lambda n: 10 * n,
        egress_bytes_per_s=egress_bytes_per_s,
        max_batch_size=10,
        t_decode_step_s=0.05,
        num_output_tokens=100,
    )


def test_each_equation_by_hand() -> None:
    assert theta_prfaas(2, 3.5, 1000, 3500) == pytest.approx(1000 / 3500)  # egress binds
    assert theta_prfaas(2, 3.5, 1e9, 3500) == pytest.approx(2 / 3.5)  # compute binds
    assert theta_pd_prefill(3, 1.5) == 2.0
    assert theta_pd_decode(4, 10, 0.05, 100) == pytest.approx(8.0)
    assert lambda_max(0.5, 2.0, 8.0, 0.5) == 1.0
    assert lambda_max(0.0, 2.0, 8.0, 0.0) == 2.0  # no offload: PrfaaS does not bind
    assert lambda_max(0.5, 0.0, 8.0, 1.0) == 0.5  # all offloaded: PD-P does not bind
    assert lambda_max(9.0, 9.0, 3.0, 0.5) == 3.0  # decode binds
    assert eq2_egress_bytes_per_s(4, 200, lambda n: n / 100, lambda n: 10 * n) == 4000.0


def test_evaluate_small_case() -> None:
    lengths = EmpiricalLengths([100, 200, 300, 400])
    point = evaluate(_costs(), lengths, 250, num_prfaas=2, num_pd_p=3, num_pd_d=4)
    assert point.offload_fraction == 0.5
    assert (point.l_long_tokens, point.l_short_tokens) == (350, 150)
    assert point.theta_prfaas_per_s == pytest.approx(1000 / 3500)
    assert point.prfaas_egress_limited
    assert point.theta_pd_p_per_s == pytest.approx(2.0)
    assert point.theta_pd_d_per_s == pytest.approx(8.0)
    assert point.lambda_max_per_s == pytest.approx((1000 / 3500) / 0.5)


def test_evaluate_extremes() -> None:
    lengths = EmpiricalLengths([100, 200, 300, 400])
    homo = evaluate(_costs(), lengths, math.inf, 0, 3, 4)
    assert homo.offload_fraction == 0 and homo.l_long_tokens is None
    assert homo.lambda_max_per_s == pytest.approx(3 / 2.5)
    naive = evaluate(_costs(1e12), lengths, -math.inf, 2, 0, 4)
    assert naive.offload_fraction == 1 and naive.l_short_tokens is None
    assert naive.lambda_max_per_s == pytest.approx(2 / 2.5)


def test_best_threshold_balances_prefill_paths() -> None:
    """Eq. 7: at the returned t, Θ_prfaas/p equals Θ_pd-p/(1-p)."""
    lengths = TruncatedLogNormal(9.9, 1.0, 128, 131072)
    costs = StageCosts(
        t_prefill_prfaas_s=lambda n: 0.3 + n / 20000,
        t_prefill_pd_s=lambda n: 0.5 + n / 8000,
        kv_bytes=lambda n: 1e8 + 2e4 * n,
        egress_bytes_per_s=12.5e9,
        max_batch_size=20,
        t_decode_step_s=0.025,
        num_output_tokens=1024,
    )
    t = best_threshold(costs, lengths, 4, 3, 128, 131072, tol_tokens=0.5)
    point = evaluate(costs, lengths, t, 4, 3, 100)
    p = point.offload_fraction
    assert point.theta_prfaas_per_s / p == pytest.approx(point.theta_pd_p_per_s / (1 - p), rel=1e-3)
    for other in (t * 0.9, t * 1.1):
        assert evaluate(costs, lengths, other, 4, 3, 100).lambda_max_per_s < point.lambda_max_per_s


def test_best_threshold_clamps_when_one_path_dominates() -> None:
    lengths = EmpiricalLengths([100, 200, 300, 400])
    fast_link = _costs(1e12)
    assert best_threshold(fast_link, lengths, 1000, 1, 150, 350) == 150  # PrfaaS always faster
    assert best_threshold(fast_link, lengths, 1, 1000, 150, 350) == 350  # PD-P always faster
    with pytest.raises(ValueError):
        best_threshold(_costs(), lengths, 1, 1, 500, 50)
