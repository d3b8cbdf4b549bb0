"""Case-study scenarios: link rules on/off, the link-bound regression, trace-derived inputs,
bandwidth series, the cost-model decode step."""

from __future__ import annotations

import math

import pytest

from prfaas.cli._sim_setup import load_preset_setup, load_setup
from prfaas.errors import UserError
from prfaas.plan import PlanSettings
from prfaas.sim.presets import CASE_LENGTHS
from prfaas.sim.scenario import Scenario, bandwidth_of, build_config, run_scenario
from prfaas.types import DeploymentKind


@pytest.fixture(scope="module")
def case():  # type: ignore[no-untyped-def]
    try:
        return load_preset_setup()
    except ImportError:
        pytest.skip("prfaas.models / prfaas.perf case-study inputs not available")


def test_static_threshold_switches_off_the_link_rules(case) -> None:  # type: ignore[no-untyped-def]
    dynamic = build_config(case, Scenario(DeploymentKind.PRFAAS)).deployment.route_config
    static = build_config(
        case, Scenario(DeploymentKind.PRFAAS, static_threshold=True)
    ).deployment.route_config
    assert dynamic is not None and static is not None
    assert static.threshold_tokens == dynamic.threshold_tokens
    assert dynamic.costs is not None and static.costs is None
    assert math.isinf(static.scarce_utilization)


@pytest.mark.parametrize(
    "link",
    [{"link_gbps": 10.0}, {"link_drop": (300.0, 10.0)}],
    ids=["10gbps", "drop-100-to-10"],
)
def test_link_bound_prfaas_pd_does_not_collapse(case, link) -> None:  # type: ignore[no-untyped-def]
    """Regression: the routing policy used to react to egress *utilization* (t raised at 0.8,
    offloading stopped at 0.95). On a 10 Gbps link, the binding resource at the planned point, the
    link runs near full utilization while keeping up, so offloading stopped, local PD-P saturated
    and this 10-minute run at 80% load left over 100 requests unfinished (p50 TTFT ~30 s at 10 Gbps;
    also after a 100 -> 10 Gbps drop). The offload-delay rule reads the link backlog instead."""
    scenario = Scenario(DeploymentKind.PRFAAS, duration_s=600.0, drain_s=120.0, **link)
    result = run_scenario(case, scenario)
    assert result["num_unfinished"] == 0
    assert result["ttft_s"]["p99"] < 30.0
    assert result["offload_ratio"] > 0.3  # still offloading, not all local


def test_only_prfaas_gets_a_route_config(case) -> None:  # type: ignore[no-untyped-def]
    for kind in (DeploymentKind.HOMOGENEOUS, DeploymentKind.NAIVE):
        assert build_config(case, Scenario(kind)).deployment.route_config is None


def test_trace_setup_uses_uncached_lengths_and_mean_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [1, 2]}\n'
        # full hit: nothing uncached
        '{"timestamp": 1000, "input_length": 1024, "output_length": 30, "hash_ids": [1, 2]}\n'
    )
    setup = load_setup(PlanSettings(trace=str(trace)))
    assert setup.lengths.mean() == pytest.approx(512.0)
    assert setup.num_output_tokens == pytest.approx(20.0)
    assert setup.output_tokens_override is None and setup.reuses_prefixes
    fixed = load_setup(PlanSettings(trace=str(trace), output_tokens=7, trace_prefix_cache=False))
    assert fixed.num_output_tokens == 7 and fixed.output_tokens_override == 7
    assert fixed.lengths.mean() == pytest.approx(1024.0) and not fixed.reuses_prefixes
    assert load_preset_setup().num_output_tokens == 1024
    assert load_preset_setup().lengths == CASE_LENGTHS


def test_bandwidth_series_from_flags() -> None:
    drop = bandwidth_of(Scenario(DeploymentKind.NAIVE, link_drop=(1800.0, 10.0)))
    assert [(s.at, s.gbps) for s in drop] == [(0.0, 100.0), (1800.0, 10.0)]
    wobble = bandwidth_of(
        Scenario(DeploymentKind.NAIVE, link_fluctuation=(0.2, 60.0), duration_s=600.0, drain_s=0)
    )
    assert len(wobble) == 10
    assert all(20.0 <= s.gbps <= 100.0 for s in wobble)
    with pytest.raises(UserError):
        bandwidth_of(Scenario(DeploymentKind.NAIVE, link_drop=(-1.0, 10.0)))
    with pytest.raises(UserError):
        Scenario(DeploymentKind.NAIVE, link_gbps=0.0)


def test_cost_model_decode_step(case) -> None:  # type: ignore[no-untyped-def]
    fixed = build_config(case, Scenario(DeploymentKind.PRFAAS)).deployment.decode_step
    model = build_config(
        case, Scenario(DeploymentKind.PRFAAS, decode_step="cost-model")
    ).deployment.decode_step
    assert fixed.t_decode_step_s(1) == fixed.t_decode_step_s(20) == 0.025
    context = round(CASE_LENGTHS.mean() + 1024 / 2)
    assert model.t_decode_step_s(20) == pytest.approx(
        case.pd_cost_model().t_decode_step_s(20, context)
    )
    assert model.t_decode_step_s(1) < model.t_decode_step_s(20)  # batching costs per step
    with pytest.raises(UserError):
        build_config(case, Scenario(DeploymentKind.PRFAAS, decode_step="magic"))
