"""The case-study inputs live once (`prfaas.casestudy`); planner and simulator read them there."""

from __future__ import annotations

import pytest

from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.perf.latency import QuadraticLatency
from prfaas.plan.curves import parse_quadratic
from prfaas.plan.presets import PlanSettings, get_preset
from prfaas.sim import presets as sim_presets


def test_plan_preset_is_the_case_study() -> None:
    case, settings = PAPER_CASE_STUDY, get_preset("paper-case-study")
    assert settings == PlanSettings()
    assert (settings.prfaas_gpus, settings.pd_gpus, settings.gpus_per_instance) == (32, 64, 8)
    assert (settings.mu, settings.sigma) == (case.length_mu, case.length_sigma)
    assert (settings.min_tokens, settings.max_tokens) == (128, 131_072)
    assert (settings.bs_max, settings.t_decode_s, settings.link_gbps) == (20, 0.025, 100.0)
    kind, _, spec = settings.pd_latency.partition(":")
    assert kind == "quadratic" and parse_quadratic(spec) == case.pd_latency
    assert settings.prfaas_latency == f"profile:{case.prfaas_profile}"


def test_sim_preset_is_the_case_study() -> None:
    case = PAPER_CASE_STUDY
    assert case.lengths() == sim_presets.CASE_LENGTHS
    assert sim_presets.CASE_OUTPUT_TOKENS == case.output_tokens == 1024
    assert case.max_batch_size == sim_presets.CASE_MAX_BATCH_SIZE
    assert case.t_decode_step_s == sim_presets.CASE_DECODE_STEP_S
    assert case.link_gbps == sim_presets.CASE_LINK_GBPS


def test_inferred_h20_curve_by_hand() -> None:
    curve = PAPER_CASE_STUDY.pd_latency
    assert curve == QuadraticLatency(0.469, 1.300e-4, 2.945e-10)
    expected = 0.469 + 1.300e-4 * 10_000 + 2.945e-10 * 10_000**2
    assert curve(10_000) == pytest.approx(expected)
    assert curve.t_prefill_s(10_000) == curve(10_000)
    assert parse_quadratic(curve.as_spec()) == curve


@pytest.mark.parametrize("coeffs", [(0.0, 0.0, 1e-9), (-1.0, 0.1, 0.0), (float("nan"), 0.1, 0.0)])
def test_quadratic_latency_rejects_bad_coefficients(coeffs: tuple[float, float, float]) -> None:
    with pytest.raises(UserError):
        QuadraticLatency(*coeffs)
