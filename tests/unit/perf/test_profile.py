"""Prefill profiles: interpolation, validation, CSV/JSON loading and the paper's Table 5 preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prfaas.errors import UserError
from prfaas.perf import PrefillProfile, list_profiles, load_profile
from prfaas.types import MIB


def make(lengths: tuple[int, ...], latencies: tuple[float, ...]) -> PrefillProfile:
    return PrefillProfile(lengths=lengths, latencies_s=latencies)


def test_interpolates_and_extrapolates_linearly() -> None:
    profile = make((1000, 2000, 4000), (1.0, 2.0, 6.0))
    assert profile.t_prefill_s(1000) == 1.0
    assert profile.t_prefill_s(1500) == pytest.approx(1.5)
    assert profile.t_prefill_s(3000) == pytest.approx(4.0)
    assert profile.t_prefill_s(5000) == pytest.approx(8.0)  # last segment, slope 2e-3
    assert profile.t_prefill_s(500) == pytest.approx(0.5)  # first segment


def test_extrapolation_to_non_positive_latency_fails() -> None:
    profile = make((1000, 2000), (0.1, 2.0))
    with pytest.raises(ValueError, match="extrapolating"):
        profile.t_prefill_s(10)


@pytest.mark.parametrize(
    ("lengths", "latencies", "message"),
    [
        ((1000,), (1.0,), "at least two"),
        ((2000, 1000), (1.0, 2.0), "strictly increasing"),
        ((1000, 1000), (1.0, 2.0), "strictly increasing"),
        ((0, 1000), (1.0, 2.0), "positive"),
        ((1000, 2000), (1.0, 0.0), "latencies must be positive"),
        ((1000, 2000), (1.0,), "different sizes"),
    ],
)
def test_validation(lengths: tuple[int, ...], latencies: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(lengths, latencies)


def test_paper_preset_is_table5() -> None:
    assert "paper-1t-h200" in list_profiles()
    profile = load_profile("paper-1t-h200")
    assert profile.lengths == (1024, 8192, 32768, 131072)
    assert tuple(round(t, 2) for t in profile.latencies_s) == (0.44, 0.72, 1.84, 7.40)
    assert profile.hardware == "H200" and profile.num_gpus == 8 and profile.model == "paper-1t"
    assert profile.kv_bytes_at(8192) == round(308.9 * MIB)
    assert profile.kv_bytes_at(100) is None  # outside the measured range


def test_csv_with_kv_bytes(tmp_path: Path) -> None:
    path = tmp_path / "h20.csv"
    path.write_text("tokens,t_prefill_s,kv_bytes\n1024,0.5,100\n2048,0.9,200\n")
    profile = load_profile(path)
    assert profile.name == "h20"
    assert profile.t_prefill_s(1536) == pytest.approx(0.7)
    assert profile.kv_bytes_at(1536) == 150


def test_json_list_of_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"length": 10, "latency_s": 1}, {"length": 20, "latency_s": 3}]))
    assert load_profile(path).t_prefill_s(15) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "tokens,latency\n1,2\n3,4\n", "lacks a required column"),
        ("b.csv", "tokens,t_prefill_s\n2048,1\n1024,2\n", "strictly increasing"),
        ("c.csv", "tokens,t_prefill_s\n1024,fast\n2048,2\n", "not a number"),
        ("d.csv", "tokens,t_prefill_s\n", "no rows"),
        ("e.json", "{oops", "not valid JSON"),
        ("f.json", '{"rows": 3}', "list of row objects"),
        ("g.csv", "tokens,t_prefill_s,kv_bytes\n1,1,5\n2,2,\n", "some rows but not all"),
        ("h.csv", "tokens,t_prefill_s\n1.5,1\n2,2\n", "not an integer"),
    ],
)
def test_bad_files_are_user_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_profile(path)


def test_unknown_profile() -> None:
    with pytest.raises(UserError, match=r"unknown profile 'nope'.*paper-1t-h200"):
        load_profile("nope")
