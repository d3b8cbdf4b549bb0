"""The pure parts of `prfaas bench system`: schedules, prompts, stream accounting, percentiles,
egress series, the deployment variant of a topology file, sweeps and flag bounds."""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.bench.loadgen import counter_total
from prfaas.bench.outcome import RequestResult, RunOutcome, StreamReader
from prfaas.bench.report import distribution, egress_series, meets_slo, summarize_live
from prfaas.bench.schedule import (
    PROMPT_TOKEN_IDS,
    TRACE_BLOCK_TOKENS,
    Workload,
    arrival_times_s,
    build_schedule,
    synthetic_prompt,
    trace_times_s,
    warmup_schedule,
)
from prfaas.bench.system import deployment_variant_text, run_rates, sweep_rates
from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.workload import TraceRequest, TruncatedLogNormal

LENGTHS = TruncatedLogNormal(6.0, 1.0, 16, 4096)


def test_schedule_is_deterministic_per_seed() -> None:
    workload = Workload(lengths=LENGTHS, output_tokens=8)
    a = build_schedule(workload, 4.0, 50, 600.0, seed=7)
    b = build_schedule(workload, 4.0, 50, 600.0, seed=7)
    c = build_schedule(workload, 4.0, 50, 600.0, seed=8)
    assert a == b
    assert a != c
    assert len(a) == 50
    assert [x.at_s for x in a] == sorted(x.at_s for x in a)


def test_schedule_is_bounded_by_count_and_duration() -> None:
    times = arrival_times_s(10.0, 1000, 2.0, random.Random(0))
    assert times and max(times) <= 2.0 and len(times) < 1000
    assert len(arrival_times_s(1000.0, 5, 600.0, random.Random(0))) == 5


def test_poisson_mean_rate() -> None:
    times = arrival_times_s(5.0, 5000, 1e4, random.Random(1))
    assert len(times) / times[-1] == pytest.approx(5.0, rel=0.05)


@pytest.mark.parametrize(
    ("rate", "num", "duration", "message"),
    [
        (0.0, 1, 1.0, "rate must be > 0"),
        (math.inf, 1, 1.0, "rate must be > 0"),
        (1.0, 0, 1.0, "number of requests"),
        (1.0, 10**9, 1.0, "number of requests"),
        (1.0, 1, math.nan, "max duration"),
        (1.0, 1, 1e9, "max duration"),
    ],
)
def test_run_bounds(rate: float, num: int, duration: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        arrival_times_s(rate, num, duration, random.Random(0))


def test_prompts_fit_the_context() -> None:
    workload = Workload(lengths=LENGTHS, output_tokens=100, max_model_len=300)
    for planned in build_schedule(workload, 1.0, 200, 1e4, seed=0):
        assert len(planned.prompt_token_ids) + planned.max_tokens <= 300


def test_trace_times_are_stretched_to_the_rate() -> None:
    trace = [TraceRequest(10.0 + 2.0 * i, 100, 10, ()) for i in range(11)]  # 0.5 req/s
    assert trace_times_s(trace, None, 100, 1e4) == [2.0 * i for i in range(11)]
    fast = trace_times_s(trace, 5.0, 100, 1e4)
    assert fast[-1] == pytest.approx(10 / 5.0)
    assert trace_times_s(trace, 5.0, 3, 1e4) == pytest.approx([0.0, 0.2, 0.4])


def test_trace_schedule_takes_lengths_and_shares_prefixes() -> None:
    trace = (
        TraceRequest(0.0, 700, 5, (1, 2)),
        TraceRequest(1.0, 600, 7, (1, 3)),
    )
    a, b = build_schedule(Workload(trace=trace), None, 10, 100.0, seed=0)
    assert (len(a.prompt_token_ids), a.max_tokens) == (700, 5)
    assert (len(b.prompt_token_ids), b.max_tokens) == (600, 7)
    block = TRACE_BLOCK_TOKENS
    assert a.prompt_token_ids[:block] == b.prompt_token_ids[:block]
    assert a.prompt_token_ids[block:600] != b.prompt_token_ids[block:600]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3000), st.lists(st.integers(0, 2**40), max_size=4), st.integers(0, 99))
def test_synthetic_prompt_length_and_ids(num_tokens: int, hash_ids: list[int], seed: int) -> None:
    prompt = synthetic_prompt(num_tokens, random.Random(seed), hash_ids)
    assert len(prompt) == num_tokens
    lo, hi = PROMPT_TOKEN_IDS
    assert all(lo <= t < hi for t in prompt)


def test_warmup_takes_both_paths() -> None:
    lengths = [len(p.prompt_token_ids) for p in warmup_schedule(256, 10_000, 1)]
    assert lengths == [16, 320]
    assert len(warmup_schedule(math.inf, None, 2)) == 2


def _stream(lines: list[str]) -> RequestResult:
    result = RequestResult(0, 0.0, 10, 3, sent_at_s=1.0)
    reader = StreamReader(result)
    for k, line in enumerate(lines):
        reader.feed(line, 2.0 + k)
    reader.close(10.0)
    return result


def test_stream_accounting_ok() -> None:
    r = _stream(
        [
            'data: {"choices": [{"text": "a", "finish_reason": null}]}',
            "",
            'data: {"choices": [{"text": "b", "finish_reason": null}]}',
            'data: {"choices": [{"text": "", "finish_reason": "length"}],'
            ' "prfaas": {"route": "prfaas", "kv_bytes": 1234}}',
            'data: {"choices": [], "usage": {"completion_tokens": 3}}',
            "data: [DONE]",
        ]
    )
    assert r.ok and r.route == "prfaas" and r.kv_bytes == 1234
    assert r.ttft_s == pytest.approx(1.0)
    assert r.tpot_s == pytest.approx((5.0 - 2.0) / 2)
    assert r.record()["ttft_s"] == pytest.approx(1.0)
    assert r.second_token_s == pytest.approx(3.0)  # the second chunk, after the blank line
    assert r.record()["second_token_s"] == pytest.approx(3.0)


def test_stream_accounting_errors() -> None:
    assert _stream(['data: {"error": {"message": "KV lost"}}']).error == "stream error: KV lost"
    cut = _stream(['data: {"choices": [{"text": "a", "finish_reason": null}]}'])
    assert cut.error == "stream ended without a finish reason"
    assert cut.record()["ttft_s"] is None
    assert _stream(["data: {not json"]).error.startswith("bad event")


def test_counter_total_sums_labels() -> None:
    text = (
        "# HELP prfaas:kv_transfer_bytes_total x\n"
        'prfaas:kv_transfer_bytes_total{dest="a"} 1.5e+06\n'
        'prfaas:kv_transfer_bytes_total{dest="b"} 500000.0\n'
        'prfaas:kv_transfer_bytes_created{dest="a"} 1.7e9\n'
    )
    assert counter_total(text, "prfaas:kv_transfer_bytes_total") == 2_000_000


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200))
def test_percentiles_are_ordered(values: list[float]) -> None:
    d = distribution(values)
    assert d["count"] == len(values)
    low, high = round(min(values), 6), round(max(values), 6)  # the report rounds to 1e-6
    assert low <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"] == high  # type: ignore[operator]


def test_distribution_of_nothing() -> None:
    assert distribution([math.nan])["p90"] is None


def test_egress_series_is_rate_between_samples() -> None:
    series = egress_series([(0.0, 0), (1.0, 125_000_000), (3.0, 125_000_000)])
    assert series == [{"at_s": 1.0, "gbps": 1.0}, {"at_s": 3.0, "gbps": 0.0}]


def test_every_request_is_accounted() -> None:
    ok = RequestResult(0, 0.0, 10, 2, 0.0, 0.5, 1.0, 2.0, 2, "prfaas", 100)
    bad = RequestResult(1, 0.5, 10, 2, 0.5, error="HTTP 503: no decode instance")
    live = summarize_live(RunOutcome([ok, bad], [(0.0, 0), (2.0, 100)], wall_s=2.0))
    assert (live["num_planned"], live["num_ok"], live["num_errors"]) == (2, 1, 1)
    assert live["errors"] == {"HTTP 503: no decode instance": 1}
    assert live["offload_ratio"] == 1.0 and live["egress"]["total_bytes"] == 100
    assert live["throughput_rps"] == pytest.approx(0.5)
    assert not meets_slo(live, 10.0)


def test_deployment_variant_replaces_the_key(tmp_path: Path) -> None:
    text = '[model]\nname = "x"\n[policy]\nthreshold = 5\ndeployment = "prfaas"\n[link]\ngbps = 1\n'
    data = tomllib.loads(deployment_variant_text(text, "naive"))
    assert data["policy"] == {"deployment": "naive", "threshold": 5}
    assert data["link"] == {"gbps": 1}
    with pytest.raises(UserError, match="no \\[policy\\]"):
        deployment_variant_text('[model]\nname = "x"\n', "naive")
    with pytest.raises(UserError, match="deployment must be"):
        deployment_variant_text(text, "bogus")


def test_sweep_stops_at_the_first_miss() -> None:
    assert sweep_rates(1.0, 2.0, 4) == [1.0, 2.0, 4.0, 8.0]
    p90 = {1.0: 0.5, 2.0: 0.9, 4.0: 3.0, 8.0: 0.1}

    def run_at(rate: float | None) -> dict[str, object]:
        assert rate is not None
        sim = {"num_requests": 4, "num_completed": 4, "ttft_s": {"p90": p90[rate] / 2}}
        return {"live": {"num_errors": 0, "ttft_s": {"p90": p90[rate]}}, "sim": sim}

    runs, best = run_rates(run_at, [1.0, 2.0, 4.0, 8.0], ttft_slo_s=1.0)
    assert len(runs) == 3 and best == 2.0
    assert [r["sim_meets_slo"] for r in runs] == [True, True, False]
    runs, best = run_rates(run_at, [1.0, 2.0, 4.0, 8.0], ttft_slo_s=None)
    assert len(runs) == 4 and best is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "0"], "must be > 0"),
        (["--rate", "nan"], "finite"),
        (["--num-requests", "0", "--rate", "1"], "must be >= 1"),
        (["--rates", "1,x"], "--rates"),
        (["--rates", "1,2", "--rate", "1"], "do not combine"),
        (["--sweep"], "--sweep starts at --rate"),
        ([], "give --rate"),
        (["--rate", "1", "--url", "ftp://x"], "--url must be"),
        (["--rate", "1", "--url", "http://h:1", "--deployment", "naive"], "--deployment needs"),
        (["--rate", "1", "--min-tokens", "900", "--max-tokens", "100"], "--min-tokens"),
    ],
)
def test_bad_flags_are_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "t.toml"
    config.write_text("")
    status = main(["bench", "system", "--config", str(config), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1


def test_missing_config_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "system", "--config", "/nonexistent.toml", "--rate", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
