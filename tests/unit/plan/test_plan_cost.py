"""`prfaas plan`'s cost view: each deployment's cost worked by hand from the plan's own numbers,
the cheapest split under a TTFT SLO against every split the search evaluated, and the refusals
(one line on stderr, exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main
from prfaas.plan import get_preset, resolve, run_plan
from prfaas.plan.cost import Prices, cost_view

PRICES = ["--price-prfaas-gpu-hour", "4", "--price-pd-gpu-hour", "1.5", "--price-link-gb", "0.02"]
Capsys = pytest.CaptureFixture[str]


def _json(capsys: Capsys, *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _bad(capsys: Capsys, *argv: str) -> str:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prfaas plan: error: ")
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def test_planned_costs_by_hand(capsys: Capsys) -> None:
    out = _json(capsys, *PRICES, "--link-efficiency", "0.5")
    planned = out["cost"]["planned"]
    homo = planned["homogeneous"]
    # 96 H20 GPUs at $1.5, no link: $144/h
    assert homo["gpu_usd_per_hour"] == pytest.approx(96 * 1.5)
    assert homo["link_gb_per_hour"] == 0
    assert homo["usd_per_request"] == pytest.approx(144 / (3600 * out["homogeneous"]["lambda_max"]))
    prfaas = planned["prfaas"]
    # 32 H200 at $4 + 64 H20 at $1.5 = $224/h; egress Gbps -> GB/h of wire bytes (efficiency 0.5)
    wire_gb_per_h = out["prfaas"]["egress_gbps"] / 8 * 3600 / 0.5
    assert prfaas["gpu_usd_per_hour"] == pytest.approx(32 * 4 + 64 * 1.5)
    assert prfaas["link_gb_per_hour"] == pytest.approx(wire_gb_per_h)
    usd_per_hour = 224 + wire_gb_per_h * 0.02
    assert prfaas["usd_per_hour"] == pytest.approx(usd_per_hour)
    per_request = usd_per_hour / (3600 * out["prfaas"]["lambda_max"])
    assert prfaas["usd_per_request"] == pytest.approx(per_request)
    assert prfaas["usd_per_m_output_tokens"] == pytest.approx(per_request / 1024 * 1e6)
    inputs = resolve(get_preset("paper-case-study"))
    assert prfaas["usd_per_m_prompt_tokens"] == pytest.approx(
        per_request / inputs.lengths.mean() * 1e6
    )


def test_cheapest_split_is_the_least_cost_one_meeting_the_slo() -> None:
    inputs = resolve(get_preset("paper-case-study"))
    result = run_plan(inputs)
    prices = Prices(prfaas_gpu_hour=4.0, pd_gpu_hour=1.5, link_gb=0.02)
    free = cost_view(inputs, result, prices, None)
    slo = cost_view(inputs, result, prices, 5.0)
    assert free.cheapest is not None and slo.cheapest is not None
    # without an SLO the homogeneous cluster is cheapest per request at these prices, but its
    # P90 TTFT (all on H20) exceeds 5 s, so the SLO moves the choice to a split that offloads
    assert free.cheapest.kind.value == "homogeneous"
    assert free.cheapest.ttft_p90_s > 5.0
    assert slo.cheapest.ttft_p90_s <= 5.0
    assert slo.cheapest.kind.value == "prfaas"
    assert slo.num_meeting_slo < slo.num_candidates
    # no planned deployment that meets the SLO is cheaper than the chosen split
    for point in slo.planned.values():
        if point.ttft_p90_s <= 5.0:
            assert slo.cheapest.usd_per_request <= point.usd_per_request


def test_a_metered_link_moves_the_cheapest_split_to_less_egress() -> None:
    inputs = resolve(get_preset("paper-case-study"))
    result = run_plan(inputs)
    unmetered = cost_view(inputs, result, Prices(4.0, 1.5, 0.0), 5.0).cheapest
    metered = cost_view(inputs, result, Prices(4.0, 1.5, 1.0), 5.0).cheapest
    assert unmetered is not None and metered is not None
    assert metered.link_gb_per_hour < unmetered.link_gb_per_hour


def test_text_table_and_no_split_meeting_the_slo(capsys: Capsys) -> None:
    assert main(["plan", *PRICES, "--ttft-slo-s", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "$ per M prompt tokens" in text
    assert "no split of the" in text and "meets P90 TTFT <= 0.5 s" in text
    out = _json(capsys, *PRICES, "--ttft-slo-s", "0.5")
    assert out["cost"]["cheapest"] is None and out["cost"]["num_meeting_slo"] == 0


def test_no_cost_view_without_prices(capsys: Capsys) -> None:
    assert _json(capsys)["cost"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--price-prfaas-gpu-hour", "-1"], "--price-prfaas-gpu-hour: must be >= 0"),
        (["--price-link-gb", "nan"], "--price-link-gb: expected a finite number"),
        (["--ttft-slo-s", "0", *PRICES], "--ttft-slo-s: must be > 0"),
        (["--price-pd-gpu-hour", "1e9", *PRICES[:2], *PRICES[4:]], "must be in [0, 1,000,000]"),
        (PRICES[:4], "missing --price-link-gb"),
        (["--ttft-slo-s", "5"], "missing --price-prfaas-gpu-hour, --price-pd-gpu-hour, --pri"),
    ],
)
def test_bad_prices_refused_in_one_line(capsys: Capsys, argv: list[str], message: str) -> None:
    assert message in _bad(capsys, *argv)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("price_pd_gpu_hour = -2\n", "price_pd_gpu_hour (--price-pd-gpu-hour or the --config"),
        ("price_link_gb = nan\n", "price_link_gb"),
        ("ttft_slo_s = inf\n", "ttft_slo_s"),
        ('price_link_gb = "cheap"\n', "price_link_gb must be int or float"),
    ],
)
def test_bad_prices_in_config_refused(
    capsys: Capsys, tmp_path: Path, text: str, message: str
) -> None:
    prices = "price_prfaas_gpu_hour = 4\nprice_pd_gpu_hour = 1.5\nprice_link_gb = 0.02\n"
    lines = [line for line in prices.splitlines(keepends=True) if line.split()[0] not in text]
    config = tmp_path / "plan.toml"
    config.write_text("".join(lines) + text, encoding="utf-8")
    assert message in _bad(capsys, "--config", str(config))


def test_prices_from_config(capsys: Capsys, tmp_path: Path) -> None:
    config = tmp_path / "plan.toml"
    config.write_text(
        "price_prfaas_gpu_hour = 4\nprice_pd_gpu_hour = 1.5\nprice_link_gb = 0\nttft_slo_s = 5\n",
        encoding="utf-8",
    )
    cost = _json(capsys, "--config", str(config))["cost"]
    assert cost["prices"] == {"prfaas_gpu_hour": 4, "pd_gpu_hour": 1.5, "link_gb": 0}
    assert cost["ttft_slo_s"] == 5
    assert cost["cheapest"]["ttft_p90_s"] <= 5
