"""`prfaas bench system` with several providers: the provider each answer names, and the split
(requests, share, TTFT percentiles, share within the target) the live run and its simulation
report alike, on hand-made requests."""

from __future__ import annotations

import pytest

from prfaas.bench.outcome import RequestResult, StreamReader
from prfaas.bench.report import PROVIDER_HEADERS, live_provider_split, provider_rows, provider_split


def _answered(prfaas_field: str, ttft_s: float = 1.0) -> RequestResult:
    result = RequestResult(0, 0.0, 10, 1, sent_at_s=0.0)
    reader = StreamReader(result)
    reader.feed(
        'data: {"choices": [{"text": "a", "finish_reason": "length"}], "prfaas": '
        + prfaas_field
        + "}",
        ttft_s,
    )
    reader.feed('data: {"choices": [], "usage": {"completion_tokens": 1}}', ttft_s)
    reader.close(ttft_s)
    return result


def test_the_stream_reader_keeps_the_provider_the_router_named() -> None:
    assert _answered('{"route": "prfaas", "provider": "cheap"}').provider == "cheap"
    assert _answered('{"route": "pd_prefill", "provider": null}').provider is None
    assert _answered('{"route": "prfaas", "provider": 7}').provider is None  # not a name
    assert _answered('{"route": "prfaas", "provider": "fast"}').record()["provider"] == "fast"


def test_split_by_hand() -> None:
    """cheap: TTFTs 1, 2, 3, 4 s (3 within 3 s); fast: 5 s (none); local: 0.5 s (one)."""
    where = [("cheap", 1.0), ("cheap", 2.0), ("fast", 5.0), ("cheap", 3.0), ("local", 0.5)]
    where.append(("cheap", 4.0))
    split = provider_split(where, 3.0)
    assert list(split) == ["cheap", "fast", "local"]
    assert split["cheap"]["num_requests"] == 4 and split["cheap"]["share"] == pytest.approx(4 / 6)
    assert split["cheap"]["ttft_s"]["p50"] == pytest.approx(2.5)
    assert split["cheap"]["ttft_s"]["p90"] == pytest.approx(3.7)
    assert split["cheap"]["ttft_target_met_share"] == pytest.approx(0.75)
    assert split["fast"]["ttft_target_met_share"] == 0.0
    assert split["local"]["ttft_target_met_share"] == 1.0


def test_live_split_counts_completed_requests_and_names_local() -> None:
    results = [
        _answered('{"route": "prfaas", "provider": "cheap"}', 1.0),
        _answered('{"route": "pd_prefill", "provider": null}', 2.0),
    ]
    failed = RequestResult(2, 0.0, 10, 1, sent_at_s=0.0, error="stream ended")
    split = live_provider_split([*results, failed], 1.5)
    assert {n: s["num_requests"] for n, s in split.items()} == {"cheap": 1, "local": 1}
    assert split["local"]["ttft_target_met_share"] == 0.0


def test_provider_rows_put_live_and_sim_side_by_side() -> None:
    live = {"providers": provider_split([("cheap", 1.0), ("local", 2.0)], 1.5)}
    sim = {"providers": provider_split([("cheap", 1.2), ("fast", 0.8), ("local", 2.0)], 1.5)}
    run = {"deployment": "prfaas", "rate_rps": 1.0, "live": live, "sim": sim}
    rows = provider_rows([run, {**run, "live": {}, "sim": {}}])
    assert [row[2] for row in rows] == ["cheap", "local", "fast"]
    assert all(len(row) == len(PROVIDER_HEADERS) for row in rows)
    assert rows[2][3:5] == ["-", "1"]  # fast: only the simulation sent it a request
