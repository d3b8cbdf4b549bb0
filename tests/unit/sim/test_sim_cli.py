"""`prfaas sim` rejects bad input with one line and exit status 2; JSON output is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prfaas.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "-1"],
        ["--rate", "nan"],
        ["--duration-s", "0"],
        ["--preset", "no-such-preset"],
        ["--link-drop", "abc"],
        ["--link-drop", "10"],
        ["--link-fluctuation", "1:2:3"],
        ["--arrival", "gamma", "--cv", "0"],
        ["--trace", "/nonexistent/trace.jsonl"],
        ["--chunk-tokens", "0"],
        ["--load", "0"],
        ["--num-requests", "0"],
        ["--link-gbps", "0"],
        ["--arrival", "gamma", "--trace", "x.jsonl"],
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("prfaas sim: error:")


@pytest.mark.parametrize("argv", [["--deployment", "hybrid"], ["--h20-curve", "guess"]])
def test_bad_choices_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _case_study_available() -> bool:
    try:
        from prfaas.sim.presets import load_case_study

        load_case_study()
    except Exception:
        return False
    return True


@pytest.mark.slow
def test_case_study_json_is_byte_identical(capsys: pytest.CaptureFixture[str]) -> None:
    if not _case_study_available():
        pytest.skip("prfaas.models / prfaas.perf case-study inputs not available")
    argv = ["sim", "--num-requests", "150", "--json", "--seed", "3", "--drain-s", "60"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert first == second
    result = json.loads(first)
    assert set(result) == {"prfaas", "homogeneous", "naive"}
    for r in result.values():
        assert r["num_completed"] + r["num_unfinished"] == r["num_arrived"] == 150


@pytest.mark.slow
def test_find_max_rate_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A short search (15 simulated minutes per probe) still lands near the model's Λ_max."""
    if not _case_study_available():
        pytest.skip("prfaas.models / prfaas.perf case-study inputs not available")
    argv = ["sim", "--find-max-rate", "--deployment", "prfaas", "--duration-s", "900"]
    assert main([*argv, "--json", "--plot", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"prfaas"}
    found = result["prfaas"]
    assert 0.85 <= found["max_rate"] / found["model_lambda_max"] <= 1.1
    assert found["planner"]["split"] == [4, 3, 5]
    assert found["planner"]["lambda_max"] == pytest.approx(found["model_lambda_max"], rel=0.01)
    assert (tmp_path / "sim_max_rate.png").stat().st_size > 0


@pytest.mark.slow
def test_plots_of_a_short_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not _case_study_available():
        pytest.skip("prfaas.models / prfaas.perf case-study inputs not available")
    assert main(["sim", "--num-requests", "60", "--plot", str(tmp_path)]) == 0
    assert "deployment" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"sim_egress.png", "sim_ttft.png"}
