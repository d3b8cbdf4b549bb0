"""The grid search finds planted optima; homogeneous and naive deployments on small cases."""

from __future__ import annotations

import math

import pytest

from prfaas.perf.latency import QuadraticLatency
from prfaas.plan import ClusterSpec, PlanInputs, run_plan
from prfaas.plan.search import plan_homogeneous, plan_naive, plan_prfaas, threshold_grid
from prfaas.policy.throughput import evaluate
from prfaas.types import DeploymentKind
from prfaas.workload import EmpiricalLengths


def _constant(seconds: float) -> QuadraticLatency:
    return QuadraticLatency(seconds, 0.0, 0.0)


def _planted(step_tokens: float = 7.0) -> PlanInputs:
    """Uniform lengths 1..1000, every prefill 1 s, PrfaaS 2 instances, PD 5 instances.

    With N_p = 3 the paths balance (Eq. 7) at 2/p = 3/(1-p): p = 0.4, t = 600, Λ = 5;
    each decode instance gives 3 req/s, so N_d = 2 (6 req/s) does not bind. N_p = 2 balances at
    p = 0.5 (Λ = 4); N_p = 4 leaves one decode instance (Λ = 3). The optimum is (t=600, N_p=3).
    """
    return PlanInputs(
        prfaas=ClusterSpec("fast", 2, 1, _constant(1.0), "constant"),
        pd=ClusterSpec("slow", 5, 1, _constant(1.0), "constant"),
        homogeneous=ClusterSpec("slow", 7, 1, _constant(1.0), "constant"),
        kv_bytes=lambda n: 1000.0 * n,
        kv_source="1000 B/token",
        lengths=EmpiricalLengths(range(1, 1001)),
        lengths_source="uniform 1..1000",
        link_bytes_per_s=1e12,
        num_output_tokens=100,
        max_batch_size=3,
        t_decode_step_s=0.01,  # 3 / (0.01 * 100) = 3 req/s per decode instance
        prices_per_gpu={"fast": 3.0, "slow": 1.0},
        threshold_step_tokens=step_tokens,
    )


def test_grid_search_finds_planted_optimum() -> None:
    plan, sweep = plan_prfaas(_planted())
    assert (plan.num_prfaas, plan.num_pd_p, plan.num_pd_d) == (2, 3, 2)
    assert 599.5 <= plan.point.threshold_tokens < 601  # off the 7-token grid: Eq. 7 refinement
    assert plan.point.offload_fraction == pytest.approx(0.4)
    assert plan.point.lambda_max_per_s == pytest.approx(5.0)
    assert {s.num_pd_p for s in sweep} == {1, 2, 3, 4}


def test_grid_search_beats_every_grid_point() -> None:
    inputs = _planted(step_tokens=50)
    plan, sweep = plan_prfaas(inputs)
    assert all(s.point.lambda_max_per_s <= plan.point.lambda_max_per_s + 1e-12 for s in sweep)


def test_egress_bound_moves_the_optimum() -> None:
    """A thin link caps Θ_prfaas at B/S_kv(l_long); the search still matches brute force."""
    inputs = _planted()
    thin = PlanInputs(**{**inputs.__dict__, "link_bytes_per_s": 1e6})
    plan, _ = plan_prfaas(thin)
    assert plan.point.prfaas_egress_limited
    assert plan.point.lambda_max_per_s < 5.0
    brute = max(
        evaluate(
            thin.stage_costs(thin.prfaas, thin.pd), thin.lengths, t, 2, n_p, 5 - n_p
        ).lambda_max_per_s
        for t in range(0, 1001)
        for n_p in range(1, 5)
    )
    assert plan.point.lambda_max_per_s == pytest.approx(brute, rel=1e-3)


def test_homogeneous_best_split() -> None:
    """7 instances, prefill 1 s each, decode 3 req/s each: N_p = 5 gives min(5, 6) = 5."""
    plan = plan_homogeneous(_planted())
    assert plan.kind is DeploymentKind.HOMOGENEOUS
    assert (plan.num_prfaas, plan.num_pd_p, plan.num_pd_d) == (None, 5, 2)
    assert plan.point.lambda_max_per_s == pytest.approx(5.0)
    assert plan.ttft_mean_s == pytest.approx(1.0)
    assert plan.egress_bytes_per_s is None


def test_naive_all_remote() -> None:
    plan = plan_naive(_planted())
    assert (plan.num_prfaas, plan.num_pd_p, plan.num_pd_d) == (2, None, 5)
    assert plan.point.offload_fraction == 1.0
    assert plan.point.lambda_max_per_s == pytest.approx(2.0)
    # egress = Λ * p * S_kv(mean length 500.5) bytes/s
    assert plan.egress_bytes_per_s == pytest.approx(2.0 * 1000 * 500.5)


def test_equal_cost_on_planted_case() -> None:
    result = run_plan(_planted())
    ec = result.equal_cost
    assert ec is not None
    assert ec.cost_by_kind[DeploymentKind.PRFAAS] == 2 * 3.0 + 5 * 1.0
    assert (
        ec.homogeneous_at_equal_cost.num_pd_d + (ec.homogeneous_at_equal_cost.num_pd_p or 0) == 11
    )
    assert ec.ratio_vs_equal_cost_homogeneous == pytest.approx(
        result.prfaas.point.lambda_max_per_s / ec.homogeneous_at_equal_cost.point.lambda_max_per_s
    )


def test_threshold_grid_covers_support() -> None:
    grid = threshold_grid(EmpiricalLengths([10, 20, 35]), 10)
    assert grid == [10, 20, 30, 35]
    assert math.isclose(grid[-1], 35)
