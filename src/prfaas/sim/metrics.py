"""Per-request timestamps of a run and the summary computed from them (plain dicts for JSON).

Owns definitions, not events. TTFT = first token - arrival, where the first token is what the
client receives: the decode instance streams it once it has imported the request's state, so an
offloaded request's TTFT holds its prefill, its KV transfer's tail and its wait for a decode slot,
exactly what a live client waits for (`prefill_done_s`, prefill end - arrival, is the paper's
TTFT, reported beside it). Time to the second token is the first decode step's end - arrival.
TPOT = (finish - first token) / (output tokens - 1); throughput and goodput count completions
within the arrival window, divided by its length.
Requests still waiting when the run ends enter TTFT and queueing percentiles with their wait so far;
requests that ended with an error (failure policy "fail", `prfaas.sim.deadline`) enter none, as
live reports only the completed ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prfaas.sim.link import BandwidthStep
from prfaas.types import FAIL, GBPS

NAN = math.nan
FLOAT_DIGITS = 6  # every float in the summary is rounded to this many decimals


@dataclass(slots=True)
class RequestLog:
    """Timestamps (seconds of simulated time; nan = not reached) and facts of every request."""

    num_requests: int
    arrived_at: list[float] = field(default_factory=list)
    prefill_started_at: list[float] = field(default_factory=list)
    prefill_done_at: list[float] = field(default_factory=list)  # the first token sampled
    first_token_at: list[float] = field(default_factory=list)  # ... and streamed to the client
    second_token_at: list[float] = field(default_factory=list)  # the first decode step's end
    kv_ready_at: list[float] = field(default_factory=list)
    decode_started_at: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    is_offloaded: list[bool] = field(default_factory=list)
    num_prompt_tokens: list[int] = field(default_factory=list)
    num_cached_tokens: list[int] = field(default_factory=list)
    num_output_tokens: list[int] = field(default_factory=list)
    prefill_instance: list[str] = field(default_factory=list)  # instance that ran the prefill
    decode_instance: list[str] = field(default_factory=list)  # instance that decoded
    # past its transfer deadline: the failure policy applied ("recompute", "fail"); "" otherwise
    failure: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.num_requests
        for name in (
            "arrived_at",
            "prefill_started_at",
            "prefill_done_at",
            "first_token_at",
            "second_token_at",
            "kv_ready_at",
            "decode_started_at",
            "finished_at",
        ):
            setattr(self, name, [NAN] * n)
        self.is_offloaded = [False] * n
        self.num_prompt_tokens = [0] * n
        self.num_cached_tokens = [0] * n
        self.num_output_tokens = [0] * n
        self.prefill_instance = [""] * n
        self.decode_instance = [""] * n
        self.failure = [""] * n


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return NAN
    pos = q / 100 * (len(sorted_values) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (pos - i) * (sorted_values[j] - sorted_values[i])


def distribution(values: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(v for v in values if not math.isnan(v))
    mean = math.fsum(ordered) / len(ordered) if ordered else NAN
    return {
        "count": len(ordered),
        "mean": mean,
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else NAN,
    }


def tpot_s(log: RequestLog, i: int) -> float:
    if log.num_output_tokens[i] < 2:
        return NAN
    return (log.finished_at[i] - log.first_token_at[i]) / (log.num_output_tokens[i] - 1)


def waited_s(started_at: float, arrived_at: float, end_s: float) -> float:
    """started_at - arrived_at; a request still waiting at `end_s` counts its wait so far."""
    return (end_s if math.isnan(started_at) else started_at) - arrived_at


def request_stats(
    log: RequestLog, window_end_s: float, end_s: float, slo: tuple[float, float]
) -> dict[str, Any]:
    """Counts, throughput, goodput and latency distributions of a run.

    TTFT and prefill-queue distributions cover every arrival: a request with no first token by
    `end_s` (the end of the run) counts with its wait so far, a lower bound, so an overloaded run
    cannot look fast by leaving its slowest requests out.
    """
    arrived = [i for i in range(log.num_requests) if not math.isnan(log.arrived_at[i])]
    idx = [i for i in arrived if log.failure[i] != FAIL]
    done = [i for i in idx if not math.isnan(log.finished_at[i])]
    in_window = [i for i in done if log.finished_at[i] <= window_end_s]
    ttft = {i: log.first_token_at[i] - log.arrived_at[i] for i in done}
    good = [
        i
        for i in in_window
        if ttft[i] <= slo[0] and (log.num_output_tokens[i] < 2 or tpot_s(log, i) <= slo[1])
    ]
    offloaded = [i for i in idx if log.is_offloaded[i]]
    prompt_tokens = sum(log.num_prompt_tokens[i] for i in idx)
    return {
        "num_arrived": len(arrived),
        "num_completed": len(done),
        "num_unfinished": len(idx) - len(done),
        "throughput_rps": len(in_window) / window_end_s if window_end_s > 0 else NAN,
        "goodput_rps": len(good) / window_end_s if window_end_s > 0 else NAN,
        "offload_ratio": len(offloaded) / len(idx) if idx else NAN,
        "prefix_hit_ratio": (
            sum(log.num_cached_tokens[i] for i in idx) / prompt_tokens if prompt_tokens else NAN
        ),
        "ttft_s": distribution(
            [waited_s(log.first_token_at[i], log.arrived_at[i], end_s) for i in idx]
        ),
        "tpot_s": distribution([tpot_s(log, i) for i in done]),
        "prefill_queue_s": distribution(
            [waited_s(log.prefill_started_at[i], log.arrived_at[i], end_s) for i in idx]
        ),
        "prefill_done_s": distribution(
            [waited_s(log.prefill_done_at[i], log.arrived_at[i], end_s) for i in idx]
        ),
        "second_token_s": distribution(
            [
                log.second_token_at[i] - log.arrived_at[i]
                for i in done
                if log.num_output_tokens[i] > 1
            ]
        ),
        "transfer_s": distribution(
            [log.kv_ready_at[i] - log.prefill_done_at[i] for i in offloaded]
        ),
        "decode_queue_s": distribution(
            [log.decode_started_at[i] - log.kv_ready_at[i] for i in done]
        ),
    }


def _integrate_steps(
    steps: Sequence[tuple[float, float]], lo: float, hi: float, first: int = 0
) -> float:
    """Integral over [lo, hi] of a piecewise constant function given as (from time, value) steps.

    `first` is an index at or before the step that covers `lo` (to skip the earlier ones).
    """
    total = 0.0
    for k in range(first, len(steps)):
        start, value = steps[k]
        if start >= hi:
            break
        end = steps[k + 1][0] if k + 1 < len(steps) else math.inf
        a, b = max(start, lo), min(end, hi)
        if b > a:
            total += value * (b - a)
    return total


def _step_at(steps: Sequence[tuple[float, float]], at: float, k: int) -> int:
    """Index of the step covering time `at`, searching forward from index k."""
    while k + 1 < len(steps) and steps[k + 1][0] <= at:
        k += 1
    return k


EgressBin = tuple[float, float, float, float]  # (start s, end s, bytes sent, capacity bytes)


def _egress_bins(
    rate_segments: Sequence[tuple[float, float]],
    bandwidth: Sequence[BandwidthStep],
    end_s: float,
    bin_s: float,
) -> list[EgressBin]:
    """Bytes sent and bytes the link could carry in each bin of `bin_s` up to `end_s`."""
    capacity = [(b.at, b.gbps * GBPS / 8) for b in bandwidth]
    bins = []
    num_bins = max(1, math.ceil(end_s / bin_s))
    rate_k = cap_k = 0
    for b in range(num_bins):
        lo, hi = b * bin_s, min((b + 1) * bin_s, end_s)
        rate_k = _step_at(rate_segments, lo, rate_k)
        cap_k = _step_at(capacity, lo, cap_k)
        sent = _integrate_steps(rate_segments, lo, hi, rate_k)
        cap = _integrate_steps(capacity, lo, hi, cap_k)
        bins.append((lo, hi, sent, cap))
    return bins


def _series_point(lo: float, hi: float, sent: float, cap: float) -> dict[str, float]:
    return {
        "start_s": lo,
        "egress_gbps": sent * 8 / GBPS / (hi - lo) if hi > lo else 0.0,
        "utilization": sent / cap if cap > 0 else 0.0,
    }


def egress_series(
    rate_segments: Sequence[tuple[float, float]],
    bandwidth: Sequence[BandwidthStep],
    end_s: float,
    bin_s: float,
) -> list[dict[str, float]]:
    """Per-bin mean egress (Gbps) and utilization (sent / capacity) of the inter-cluster link."""
    return [_series_point(*b) for b in _egress_bins(rate_segments, bandwidth, end_s, bin_s)]


def combined_egress_series(
    links: Sequence[tuple[Sequence[tuple[float, float]], Sequence[BandwidthStep]]],
    end_s: float,
    bin_s: float,
) -> list[dict[str, float]]:
    """`egress_series` of several links, (rate segments, bandwidth) each, taken together: per
    bin, the bytes all sent over the bytes all could carry."""
    per_link = [_egress_bins(rates, bandwidth, end_s, bin_s) for rates, bandwidth in links]
    return [
        _series_point(bins[0][0], bins[0][1], sum(b[2] for b in bins), sum(b[3] for b in bins))
        for bins in zip(*per_link, strict=True)
    ]


def round_floats(obj: Any, digits: int = FLOAT_DIGITS) -> Any:
    """Round every float (nan and inf become None) so JSON output is stable and compact."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj
