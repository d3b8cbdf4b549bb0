"""How `prfaas profile` turns measured requests into a profile's rows: one latency source for
every row, medians, non-decreasing latencies, and a document `prfaas.perf.profile` loads."""

from __future__ import annotations

import math

import pytest

from prfaas.bench.outcome import RequestResult
from prfaas.bench.profile import (
    DecodeRow,
    PrefillRow,
    ProfileSpec,
    non_decreasing,
    prefill_rows,
    profile_document,
)
from prfaas.errors import UserError
from prfaas.perf.profile import profile_from_rows


def _result(num_tokens: int, ttft_s: float, prefill_s: float = math.nan) -> RequestResult:
    r = RequestResult(0, 0.0, num_tokens, 1, sent_at_s=1.0, first_chunk_at_s=1.0 + ttft_s)
    r.prefill_s = prefill_s
    return r


def test_the_instance_time_is_used_only_when_every_response_reported_it() -> None:
    reported = {8: [_result(8, 0.5, 0.1), _result(8, 0.7, 0.3), _result(8, 0.6, 0.2)]}
    rows = prefill_rows(reported)
    assert rows == [PrefillRow(8, 0.2, (0.1, 0.3, 0.2), "prefill_s")]
    one_missing = {8: reported[8], 16: [_result(16, 0.9)]}
    rows = prefill_rows(one_missing)
    assert [r.source for r in rows] == ["ttft", "ttft"]
    assert [r.t_prefill_s for r in rows] == pytest.approx([0.6, 0.9])


def test_latencies_are_raised_to_be_non_decreasing() -> None:
    assert non_decreasing([0.2, 0.1, 0.3, 0.25, 0.4]) == [0.2, 0.2, 0.3, 0.3, 0.4]
    assert non_decreasing([]) == []


def test_the_document_loads_as_a_profile_and_names_what_was_raised() -> None:
    prefill = [PrefillRow(128, 0.05, (0.05,), "ttft"), PrefillRow(512, 0.04, (0.04,), "ttft")]
    doc = profile_document(prefill, [DecodeRow(1, 0.01)], {"name": "m", "hardware": "h200"})
    assert doc["rows"] == [
        {"tokens": 128, "t_prefill_s": 0.05},
        {"tokens": 512, "t_prefill_s": 0.05},
    ]
    assert doc["raised_to_non_decreasing"] == [512]
    assert doc["decode"] == [{"batch_size": 1, "t_step_s": 0.01}]
    profile = profile_from_rows(doc["rows"], meta=doc)
    assert profile.hardware == "h200" and profile.lengths == (128, 512)


def test_a_zero_latency_is_refused_in_one_line() -> None:
    prefill = [PrefillRow(128, 0.0, (0.0,), "ttft"), PrefillRow(512, 0.1, (0.1,), "ttft")]
    with pytest.raises(UserError, match="not usable"):
        profile_document(prefill, [], {"name": "m"})


def test_the_progress_total_counts_every_request() -> None:
    spec = ProfileSpec(lengths=(8, 16, 32), repeats=2, batch_sizes=(1, 4))
    assert spec.num_requests() == 1 + 3 * 2 + 5
