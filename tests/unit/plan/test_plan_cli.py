"""`prfaas plan` from the command line: overrides, traces, the cost-model preset, plots and bad
input (one line on stderr, exit status 2, no traceback)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _bad(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prfaas plan: error: ")
    assert "Traceback" not in err and err.count("\n") == 1
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sigma", "0"], "--sigma: must be > 0"),
        (["--sigma", "-1"], "--sigma: must be > 0"),
        (["--min-tokens", "1000", "--max-tokens", "10"], "min_tokens < max_tokens"),
        (["--pd-gpus", "0"], "--pd-gpus: must be >= 1"),
        (["--prfaas-gpus", "12"], "do not split into instances"),
        (["--pd-gpus", "8"], "at least 2 instances"),
        (["--link-gbps", "0"], "--link-gbps: must be > 0"),
        (["--bs-max", "0"], "--bs-max: must be >= 1"),
        (["--decode-slo-tps", "0"], "decode-slo-tps"),
        (["--price", "h200"], "--price wants"),
        (["--price", "h200=-1"], "--price wants"),
        (["--pd-latency", "linear:1"], "bad latency spec"),
        (["--pd-latency", "quadratic:1,2"], "a,b,c"),
        (["--prfaas-latency", "profile:/nonexistent.csv"], "unknown profile"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--trace", "/nonexistent.jsonl"], "trace file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in _bad(capsys, *argv)


def test_profile_not_increasing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lengths_down = tmp_path / "down.csv"
    lengths_down.write_text("tokens,t_prefill_s\n2000,1.0\n1000,2.0\n")
    assert "increasing" in _bad(capsys, "--prfaas-latency", f"profile:{lengths_down}")
    latency_down = tmp_path / "faster.csv"
    latency_down.write_text("tokens,t_prefill_s\n1000,2.0\n2000,1.0\n")
    assert "must not decrease" in _bad(capsys, "--prfaas-latency", f"profile:{latency_down}")


def test_trace_missing_columns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.1,5\n")
    assert "missing column" in _bad(capsys, "--trace", str(trace))


def test_overrides_change_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """A 10 Gbps link makes PrfaaS egress-bound; a 100 Gbps link does not."""
    base = _json(capsys)
    thin = _json(capsys, "--link-gbps", "10")
    assert base["prfaas"]["prfaas_egress_limited"] is False
    assert thin["prfaas"]["prfaas_egress_limited"] is True
    assert thin["prfaas"]["lambda_max"] < base["prfaas"]["lambda_max"]
    assert thin["prfaas"]["egress_gbps"] <= 10.0 + 1e-9
    slo = _json(capsys, "--decode-slo-tps", "20")  # T_decode 50 ms halves Θ_pd-d
    assert slo["homogeneous"]["theta_pd_d"] < base["homogeneous"]["theta_pd_d"]
    quad = _json(capsys, "--prfaas-latency", "quadratic:0.389,4.107e-5,9.476e-11")
    assert quad["prfaas"]["lambda_max"] == pytest.approx(base["prfaas"]["lambda_max"], rel=0.05)
    assert quad["inputs"]["prfaas_cluster"]["prefill_latency"].startswith("quadratic")


def test_trace_lengths(
    capsys: pytest.CaptureFixture[str], real_trace: Callable[[str], Path]
) -> None:
    trace = real_trace("mooncake_conversation_trace.jsonl")
    out = _json(capsys, "--trace", str(trace))
    assert "12031 requests" in out["inputs"]["lengths"]
    assert out["prfaas"]["lambda_max"] > out["homogeneous"]["lambda_max"]
    full = _json(capsys, "--trace", str(trace), "--no-prefix-cache")
    assert full["homogeneous"]["ttft_mean_s"] > out["homogeneous"]["ttft_mean_s"]


@pytest.mark.slow
def test_cost_model_preset(capsys: pytest.CaptureFixture[str]) -> None:
    """The H20 curve predicted from the H200 profile replaces the inferred one (PD side only)."""
    inferred = _json(capsys)
    predicted = _json(capsys, "--preset", "paper-case-study-costmodel")
    source = predicted["inputs"]["pd_cluster"]["prefill_latency"]
    assert "cost model" in source and "paper-1t-h200" in source
    assert "inferred" in inferred["inputs"]["pd_cluster"]["prefill_latency"]
    for key in ("lambda_max", "theta_prfaas", "ttft_mean_s"):  # naive prefills on the H200 only
        assert predicted["naive"][key] == inferred["naive"][key]
    assert predicted["homogeneous"]["theta_pd_p"] != inferred["homogeneous"]["theta_pd_p"]


@pytest.mark.slow
def test_plot_writes_figure5(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert main(["plan", "--plot", str(tmp_path / "img")]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("fig5_threshold.png", "fig5_split.png"):
        png = tmp_path / "img" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_toml_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A TOML file sets inputs after the preset; flags still win over it."""
    config = tmp_path / "plan.toml"
    config.write_text(
        'pd_latency = "quadratic:0.469,1.3e-4,2.945e-10"\n'
        "link_gbps = 10\n"
        "[prices_per_gpu]\nh200 = 2\nh20 = 1\n"
    )
    out = _json(capsys, "--config", str(config))
    assert out["inputs"]["link_gbps"] == pytest.approx(10)
    assert out["equal_cost"] is not None
    assert "inferred" not in out["inputs"]["pd_cluster"]["prefill_latency"]
    flag_wins = _json(capsys, "--config", str(config), "--link-gbps", "100")
    assert flag_wins["inputs"]["link_gbps"] == pytest.approx(100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("linkgbps = 10\n", "unknown key 'linkgbps'"),
        ('link_gbps = "fast"\n', "link_gbps must be"),
        ("bs_max = true\n", "bs_max must be"),
        ("link_gbps = \n", "invalid TOML"),
    ],
)
def test_bad_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert message in _bad(capsys, "--config", str(config))
