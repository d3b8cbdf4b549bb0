"""Trace loading: Mooncake JSONL and Azure CSV, the real traces (copies in tests/data) and
malformed files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from prfaas.errors import UserError
from prfaas.workload import TraceRequest, load_trace, uncached_lengths


def test_mooncake_small_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 1500, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 0, "input_length": 1000, "output_length": 7, "hash_ids": [1, 3]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    reqs = load_trace(path)
    assert reqs == [
        TraceRequest(0.0, 1000, 7, (1, 3)),
        TraceRequest(1.5, 600, 5, (1, 2)),
    ]
    assert uncached_lengths(reqs) == [1000, 600 - 512]


def test_azure_small_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:05.0000000,3180,8"
    )
    reqs = load_trace(path)
    assert [r.num_input_tokens for r in reqs] == [4808, 3180]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(1.02004, abs=1e-6)
    assert reqs[1].hash_ids == ()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("a.jsonl", '{"timestamp": 0, "input_length": 5}\n', "a.jsonl:1: missing field"),
        (
            "b.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n',
            "b.jsonl:2",
        ),
        ("c.jsonl", '{"timestamp": 0, "input_length": -5, "output_length": 1}\n', "c.jsonl:1"),
        ("d.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.1,5\n", "d.csv:1: missing column"),
        ("e.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,1\n", "e.csv:2"),
        ("f.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,5\n", "f.csv:2"),
        ("g.txt", "hello\n", "unknown trace format"),
    ],
)
def test_malformed_traces_name_file_and_line(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    with pytest.raises(UserError, match=where.replace(".", r"\.")):
        load_trace(_write(tmp_path, name, text))


def test_missing_file() -> None:
    with pytest.raises(UserError, match="not found"):
        load_trace("/nonexistent/trace.jsonl")


def test_real_traces_match_their_readme(real_trace: Callable[[str], Path]) -> None:
    """Row counts and the infinite-cache uncached mean published with the traces (see
    tests/data/README.md)."""
    conv = load_trace(real_trace("mooncake_conversation_trace.jsonl"))
    assert len(conv) == 12031
    lengths = uncached_lengths(conv)
    assert sum(lengths) / len(lengths) == pytest.approx(7538.48, abs=0.01)
    azure = load_trace(real_trace("AzureLLMInferenceTrace_code.csv"))
    assert len(azure) == 8819
    assert azure[-1].arrival_s == pytest.approx(3436, abs=1)
