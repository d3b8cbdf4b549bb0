"""`prfaas plan --preset paper-case-study --json` reproduces the paper's Table 6.

Targets: every Λ and Θ within 3%, t within 3% of 19.4K, the splits exactly (4/3/5, 9/3, 4/-/8),
p within 1 point of 49.6%, egress within 15% of 13 Gbps, mean and P90 TTFT within 5%.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from prfaas.cli import main

PAPER: dict[str, dict[str, Any]] = {
    "prfaas": {
        "threshold_tokens": 19400,
        "split": (4, 3, 5),
        "theta_prfaas": 1.61,
        "theta_pd_p": 1.64,
        "theta_pd_d": 3.91,
        "lambda_max": 3.24,
        "ttft": (2.22, 3.51),
    },
    "homogeneous": {
        "split": (None, 9, 3),
        "theta_pd_p": 2.11,
        "theta_pd_d": 2.35,
        "lambda_max": 2.11,
        "ttft": (4.44, 9.73),
    },
    "naive": {
        "split": (4, None, 8),
        "theta_prfaas": 2.45,
        "theta_pd_d": 6.25,
        "lambda_max": 2.45,
        "ttft": (1.74, 3.51),
    },
}


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.fixture(scope="module")
def table6() -> dict[str, Any]:
    from prfaas.plan import get_preset, resolve, run_plan
    from prfaas.plan.report import result_dict

    inputs = resolve(get_preset("paper-case-study"))
    return result_dict(run_plan(inputs), inputs)


@pytest.mark.parametrize("kind", ["prfaas", "homogeneous", "naive"])
def test_splits_exact(table6: dict[str, Any], kind: str) -> None:
    got = table6[kind]
    assert (got["n_prfaas"], got["n_p"], got["n_d"]) == PAPER[kind]["split"]


@pytest.mark.parametrize("kind", ["prfaas", "homogeneous", "naive"])
def test_rates_within_3_percent(table6: dict[str, Any], kind: str) -> None:
    for key in ("theta_prfaas", "theta_pd_p", "theta_pd_d", "lambda_max"):
        if key in PAPER[kind]:
            assert table6[kind][key] == pytest.approx(PAPER[kind][key], rel=0.03), key
        else:
            assert table6[kind][key] is None, key


@pytest.mark.parametrize("kind", ["prfaas", "homogeneous", "naive"])
def test_ttft_within_5_percent(table6: dict[str, Any], kind: str) -> None:
    mean_s, p90_s = PAPER[kind]["ttft"]
    assert table6[kind]["ttft_mean_s"] == pytest.approx(mean_s, rel=0.05)
    assert table6[kind]["ttft_p90_s"] == pytest.approx(p90_s, rel=0.05)


def test_threshold_offload_and_egress(table6: dict[str, Any]) -> None:
    got = table6["prfaas"]
    assert got["threshold_tokens"] == pytest.approx(19400, rel=0.03)
    assert got["offload_fraction"] == pytest.approx(0.496, abs=0.01)
    assert got["egress_gbps"] == pytest.approx(13.0, rel=0.15)
    assert got["link_share"] == pytest.approx(0.13, abs=0.02)
    assert got["ratio_vs_homogeneous"] == pytest.approx(1.54, rel=0.03)
    assert table6["naive"]["ratio_vs_homogeneous"] == pytest.approx(1.16, rel=0.03)
    assert table6["homogeneous"]["threshold_tokens"] is None
    assert table6["homogeneous"]["egress_gbps"] is None


def test_cli_json_keys_and_determinism(capsys: pytest.CaptureFixture[str]) -> None:
    first = _run_json(capsys)
    second = _run_json(capsys)
    assert first == second
    fields = {
        "threshold_tokens", "offload_fraction", "n_prfaas", "n_p", "n_d", "theta_prfaas",
        "theta_pd_p", "theta_pd_d", "lambda_max", "ratio_vs_homogeneous", "egress_gbps",
        "ttft_mean_s", "ttft_p90_s",
    }  # fmt: skip
    for kind in ("prfaas", "homogeneous", "naive"):
        assert fields <= set(first[kind])
    assert first["equal_cost"] is None


def test_equal_cost_with_prices(capsys: pytest.CaptureFixture[str]) -> None:
    """H200 at 2x an H20: the paper's 'about 15% more throughput at equal cost'."""
    out = _run_json(capsys, "--price", "h200=2,h20=1")
    ec = out["equal_cost"]
    assert ec["cost"] == {"prfaas": 128, "homogeneous": 96, "naive": 128}
    eq = ec["homogeneous_at_equal_cost"]
    assert eq["n_p"] + eq["n_d"] == 16  # 128 H20 / 8 per instance
    assert ec["ratio_vs_equal_cost_homogeneous"] == pytest.approx(1.15, abs=0.03)


def test_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "4 / 3 / 5" in out and "- / 9 / 3" in out and "4 / - / 8" in out
    assert "inferred" in out
