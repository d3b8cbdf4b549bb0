"""`prfaas kv` through `prfaas.cli.main`: the paper's Table 5, sizes, units and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main
from prfaas.cli.kv import parse_lengths

Capsys = pytest.CaptureFixture[str]
ROW_KEYS = {"tokens", "s_kv_mib", "kv_bytes_per_token", "state_bytes", "t_prefill_s", "phi_gbps"}


def run_json(capsys: Capsys, *argv: str) -> list[dict[str, Any]]:
    assert main(["kv", *argv, "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def run_error(capsys: Capsys, *argv: str) -> str:
    assert main(["kv", *argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("prfaas kv: error: ")
    return lines[0]


def test_paper_table5_phi_column(capsys: Capsys) -> None:
    """Phi_kv = S_kv * 2^20 * 8 / T / 1e9 reproduces both printed columns of Table 5: T to 0.01 s
    and Phi_kv to 0.01 Gbps (the profile keeps the latency consistent with both roundings)."""
    rows = run_json(capsys, "--profile", "paper-1t-h200")
    assert [r["tokens"] for r in rows] == [1024, 8192, 32768, 131072]
    assert [r["s_kv_mib"] for r in rows] == [190.8, 308.9, 701.3, 2316.3]
    assert [round(r["t_prefill_s"], 2) for r in rows] == [0.44, 0.72, 1.84, 7.40]
    paper_phi = [3.61, 3.59, 3.19, 2.62]
    for row, phi in zip(rows, paper_phi, strict=True):
        assert set(row) >= ROW_KEYS
        assert round(row["phi_gbps"], 2) == phi
        expected = row["s_kv_mib"] * 2**20 * 8 / row["t_prefill_s"] / 1e9
        assert row["phi_gbps"] == pytest.approx(expected, abs=1e-3)


def test_minimax_32k_is_7936_mib(capsys: Capsys) -> None:
    (row,) = run_json(capsys, "--model", "minimax-m2.5", "--lengths", "32768")
    assert row["s_kv_mib"] == 7936.0
    assert row["kv_bytes_per_token"] == 62 * 8 * 128 * 2 * 2
    assert row["t_prefill_s"] is None and row["phi_gbps"] is None


def test_k_suffix_lengths(capsys: Capsys) -> None:
    rows = run_json(capsys, "--model", "qwen3.5-397b", "--lengths", "1K,128k")
    assert [r["tokens"] for r in rows] == [1024, 131072]
    assert parse_lengths("8K, 32768") == [8192, 32768]


def test_cost_model_latency_source(capsys: Capsys) -> None:
    rows = run_json(capsys, "--model", "kimi-linear-48b", "--hardware", "H200", "--gpus", "8")
    assert all(r["t_prefill_s"] > 0 and r["phi_gbps"] > 0 for r in rows)
    assert all(r["s_kv_source"] == "model" for r in rows)


def test_calibrated_prediction_on_other_hardware(capsys: Capsys) -> None:
    rows = run_json(capsys, "--profile", "paper-1t-h200", "--hardware", "H20")
    assert all(r["t_prefill_s"] > t for r, t in zip(rows, (0.44, 0.72, 1.84, 7.40), strict=True))
    same = run_json(capsys, "--profile", "paper-1t-h200", "--hardware", "H200")
    for row, t in zip(same, (0.44, 0.72, 1.84, 7.40), strict=True):
        assert row["t_prefill_s"] == pytest.approx(t, rel=0.02)


def test_profile_sizes_not_used_for_another_model_or_dtype(capsys: Capsys) -> None:
    rows = run_json(capsys, "--profile", "paper-1t-h200", "--model", "kimi-k2")
    assert all(r["s_kv_source"] == "model" for r in rows)
    fp8 = run_json(capsys, "--profile", "paper-1t-h200", "--kv-dtype", "fp8")
    assert all(r["s_kv_source"] == "model" for r in fp8)


def test_human_table(capsys: Capsys) -> None:
    assert main(["kv", "--model", "gpt-oss-120b", "--lengths", "64,1K"]) == 0
    out = capsys.readouterr().out
    assert "18 full_attention : 18 sliding_window" in out
    assert "S_kv MiB" in out and "Phi_kv Gbps" in out
    assert out.count("\n") >= 5


def test_unknown_preset(capsys: Capsys) -> None:
    assert "unknown model 'gpt-5'" in run_error(capsys, "--model", "gpt-5")


def test_unknown_model_type(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "t5", "hidden_size": 8}))
    line = run_error(capsys, "--model", str(path))
    assert "unsupported model_type 't5'" in line and "kimi_linear" in line


def test_malformed_json_config(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",')
    assert "not valid JSON" in run_error(capsys, "--model", str(path))


@pytest.mark.parametrize("lengths", ["0", "-8", "1024,0", "abc", "1.5", ""])
def test_bad_lengths(capsys: Capsys, lengths: str) -> None:
    assert "bad length" in run_error(capsys, "--model", "llama-3.1-70b", f"--lengths={lengths}")


def test_profile_unsorted(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("tokens,t_prefill_s\n8192,1.0\n1024,0.5\n")
    assert "strictly increasing" in run_error(capsys, "--model", "paper-1t", "--profile", str(path))


def test_profile_missing_columns(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("tokens\n1024\n8192\n")
    line = run_error(capsys, "--model", "paper-1t", "--profile", str(path))
    assert "lacks a required column" in line


def test_other_bad_flags(capsys: Capsys) -> None:
    assert "unknown hardware" in run_error(capsys, "--model", "kimi-k2", "--hardware", "TPU")
    assert "--gpus" in run_error(capsys, "--model", "kimi-k2", "--hardware", "H20", "--gpus", "0")
    assert "dtype" in run_error(capsys, "--model", "kimi-k2", "--kv-dtype", "int3")
    assert "give --model" in run_error(capsys)
