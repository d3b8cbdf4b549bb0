"""`prfaas sim` rejects bad input with one line and exit status 2; JSON output is deterministic;
it takes `prfaas plan`'s inputs and starts every deployment from the planner's answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        ["--max-ttft-p90-s", "5"],
        ["--sigma", "0"],
        ["--pd-gpus", "8"],
        ["--pd-latency", "linear:1"],
        ["--threshold-step", "0.001"],
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("prfaas sim: error:")


@pytest.mark.parametrize(
    "argv", [["--deployment", "hybrid"], ["--routing", "guess"], ["--h20-curve", "predicted"]]
)
def test_bad_choices_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize(
    "flags",
    [
        ["--link-gbps", "10"],
        ["--mu", "9", "--sigma", "0.8", "--output-tokens", "512"],
        ["--pd-gpus", "48", "--homogeneous-gpus", "64", "--t-decode-ms", "30"],
    ],
    ids=["10gbps", "workload", "clusters"],
)
def test_sim_starts_from_the_planner_answer(
    capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """The same flags give `prfaas plan`'s split, t and Λ_max in `prfaas sim` (at 10 Gbps the
    planner picks 4/4/4, not the 100 Gbps case study's 4/3/5)."""
    plan = _json(capsys, "plan", *flags, "--json")
    sim = _json(capsys, "sim", *flags, "--num-requests", "30", "--drain-s", "60", "--json")
    for kind in ("prfaas", "homogeneous", "naive"):
        p, s = plan[kind], sim[kind]
        assert s["split"] == [p["n_prfaas"] or 0, p["n_p"] or 0, p["n_d"]]
        assert s["model_lambda_max_rps"] == pytest.approx(p["lambda_max"], rel=1e-5)
    assert sim["prfaas"]["threshold_tokens"] == pytest.approx(
        plan["prfaas"]["threshold_tokens"], abs=0.05
    )
    if flags[:2] == ["--link-gbps", "10"]:
        assert sim["prfaas"]["split"] == [4, 4, 4]


def test_trace_runs_report_prefix_hits_per_cluster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two conversations growing turn by turn: every later turn hits its earlier turns' blocks
    somewhere; per-cluster hits add up to the run's prefix-hit ratio; windows count arrivals."""
    lines = []
    for turn in range(1, 9):
        for conv in range(2):
            blocks = [1000 * conv + b for b in range(8 * turn)]
            request = {"input_length": 512 * len(blocks), "output_length": 8, "hash_ids": blocks}
            lines.append(json.dumps({"timestamp": 1000 * (2 * turn + conv), **request}))
    trace = tmp_path / "conv.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    argv = ["sim", "--trace", str(trace), "--deployment", "prfaas", "--window-s", "10", "--json"]
    for routing in ("cache-aware", "length-only"):
        r = _json(capsys, *argv, "--routing", routing)["prfaas"]
        hits = r["prefix_hits"]
        assert r["routing"] == routing
        assert sum(c["num_requests"] for c in hits.values()) == r["num_arrived"] == 16
        hit_tokens = sum(c["hit_tokens"] for c in hits.values())
        prompt_tokens = sum(c["prompt_tokens"] for c in hits.values())
        assert hit_tokens > 0
        assert hit_tokens / prompt_tokens == pytest.approx(r["prefix_hit_ratio"], abs=1e-5)
        assert sum(w["num_arrived"] for w in r["windows"]) == 16
        if routing == "length-only":
            assert all(c["moved_tokens"] == 0 for c in hits.values())


@pytest.mark.slow
def test_case_study_json_is_byte_identical(capsys: pytest.CaptureFixture[str]) -> None:
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
    argv = ["sim", "--find-max-rate", "--deployment", "prfaas", "--duration-s", "900"]
    assert main([*argv, "--json", "--plot", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"prfaas"}
    found = result["prfaas"]
    assert 0.85 <= found["max_rate"] / found["model_lambda_max"] <= 1.1
    assert found["split"] == [4, 3, 5]
    assert found["model_lambda_max"] == pytest.approx(3.195, rel=0.01)  # `prfaas plan`'s
    assert (tmp_path / "sim_max_rate.png").stat().st_size > 0


@pytest.mark.slow
def test_plots_of_a_short_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--num-requests", "60", "--plot", str(tmp_path)]) == 0
    assert "deployment" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"sim_egress.png", "sim_ttft.png"}


def test_max_rate_at_a_ttft_p90_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """With --max-ttft-p90-s the highest rate found keeps TTFT p90 under the limit and the first
    rate found too high breaks it (or the queue bound); the limit lowers the rate found."""
    argv = ["sim", "--find-max-rate", "--deployment", "homogeneous", "--duration-s", "600"]
    free = _json(capsys, *argv, "--json")["homogeneous"]
    limited = _json(capsys, *argv, "--max-ttft-p90-s", "15", "--json")["homogeneous"]
    assert limited["max_ttft_p90_s"] == 15
    by_rate = {p["rate"]: p for p in limited["probes"]}
    assert by_rate[limited["max_rate"]]["ttft_p90_s"] <= 15
    upper = by_rate[limited["upper_rate"]]
    assert upper["ttft_p90_s"] > 15 or upper["completion_ratio"] < 0.97
    assert limited["max_rate"] < free["max_rate"]


def test_max_rate_at_an_unreachable_ttft_limit_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No rate keeps TTFT p90 under 1 ms (one request's prefill takes seconds): the search ends
    at its floor with one line naming the lowest rate's TTFT, not a hang or a traceback."""
    argv = ["sim", "--find-max-rate", "--deployment", "homogeneous", "--num-requests", "100"]
    assert main([*argv, "--max-ttft-p90-s", "0.001"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no arrival rate is stable" in err and "> 0.001 s" in err
    assert len(err.splitlines()) == 1
