"""The pure schedule of `prfaas bench system`: what a run sends and when, seeded, with no I/O
and no clock.

Arrival times are Poisson at a rate, or a trace's timestamps stretched to a rate; prompt lengths
come from a length distribution (or the trace's), output lengths are fixed (or the trace's), and
prompts are synthetic token ids in the tiny byte tokenizer's printable range. Trace prompts reuse
one block of ids per trace hash id, so shared prefixes stay shared. A `Burst` adds Poisson
arrivals of one prompt length during a window; `warmup_schedule` is the unmeasured requests
before a run. The runner that sends them is `prfaas.bench.loadgen`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.workload import LengthDistribution, TraceRequest, poisson_arrivals

PROMPT_TOKEN_IDS = (10, 250)  # [lo, hi): ids every tiny byte-tokenizer vocabulary accepts
TRACE_BLOCK_TOKENS = 512  # tokens per hash id of a Mooncake trace
MAX_REQUESTS = 100_000  # requests of one run
MAX_DURATION_S = 24 * 3600.0  # arrival window of one run
MAX_OUTPUT_TOKENS = 1 << 20


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of a run: when to send it (s after the start), its prompt and output length."""

    at_s: float
    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Burst:
    """Extra Poisson arrivals of one prompt length during a window of the run."""

    at_s: float  # window start, s after the run's start
    duration_s: float
    rate_per_s: float
    num_tokens: int  # prompt length of every burst request

    def __post_init__(self) -> None:
        values = (self.at_s, self.duration_s, self.rate_per_s)
        if not all(math.isfinite(v) for v in values) or self.at_s < 0:
            raise UserError(f"a burst needs a finite start >= 0, got {self.at_s}")
        if not (0 < self.duration_s <= MAX_DURATION_S and 0 < self.rate_per_s <= 1e4):
            raise UserError(
                f"a burst needs a duration in (0, {MAX_DURATION_S:g}] s and a rate in (0, 1e4] "
                f"requests/s, got {self.duration_s} s at {self.rate_per_s}/s"
            )
        if self.rate_per_s * self.duration_s > MAX_REQUESTS:
            raise UserError(f"a burst of more than {MAX_REQUESTS} requests")
        if self.num_tokens < 1:
            raise UserError(f"a burst's prompt needs at least one token, got {self.num_tokens}")


@dataclass(frozen=True, slots=True)
class Workload:
    """What to send: lengths from a distribution (with a fixed output length), or a trace,
    and optionally a burst of one prompt length on top."""

    lengths: LengthDistribution | None = None
    output_tokens: int = 1024
    trace: tuple[TraceRequest, ...] | None = None
    max_model_len: int | None = None  # prompt + output fit this: prompts are cut to fit
    burst: Burst | None = None

    def __post_init__(self) -> None:
        if (self.lengths is None) == (self.trace is None):
            raise ValueError("a workload has either a length distribution or a trace")
        if not 1 <= self.output_tokens <= MAX_OUTPUT_TOKENS:
            raise UserError(
                f"output tokens must be in [1, {MAX_OUTPUT_TOKENS}], got {self.output_tokens}"
            )
        if self.trace is not None and not self.trace:
            raise UserError("the trace holds no requests")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UserError(f"a context of {self.max_model_len} tokens leaves no room to run")

    def prompt_tokens(self, num_tokens: int, max_tokens: int) -> int:
        """`num_tokens` cut so that prompt + `max_tokens` fit the model's context (>= 1)."""
        if self.max_model_len is not None:
            num_tokens = min(num_tokens, self.max_model_len - max_tokens)
        return max(1, num_tokens)

    def output_tokens_of(self, num_tokens: int) -> int:
        """An output length within bounds, leaving a prompt token of the model's context."""
        limit = MAX_OUTPUT_TOKENS if self.max_model_len is None else self.max_model_len - 1
        return max(1, min(limit, MAX_OUTPUT_TOKENS, num_tokens))


def check_run_bounds(rate_per_s: float | None, num_requests: int, max_duration_s: float) -> None:
    """UserError unless the run's rate, request count and window are finite and within bounds."""
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise UserError(f"rate must be > 0 requests/s, got {rate_per_s}")
    if not 1 <= num_requests <= MAX_REQUESTS:
        raise UserError(f"number of requests must be in [1, {MAX_REQUESTS}], got {num_requests}")
    if not (math.isfinite(max_duration_s) and 0 < max_duration_s <= MAX_DURATION_S):
        raise UserError(f"max duration must be in (0, {MAX_DURATION_S:g}] s, got {max_duration_s}")


def arrival_times_s(
    rate_per_s: float, num_requests: int, max_duration_s: float, rng: random.Random
) -> list[float]:
    """Poisson arrivals from 0: at most `num_requests`, none later than `max_duration_s`."""
    check_run_bounds(rate_per_s, num_requests, max_duration_s)
    times: list[float] = []
    for at_s in poisson_arrivals(rate_per_s, rng):
        if len(times) >= num_requests or at_s > max_duration_s:
            break
        times.append(at_s)
    return times


def trace_times_s(
    trace: Sequence[TraceRequest],
    rate_per_s: float | None,
    num_requests: int,
    max_duration_s: float,
) -> list[float]:
    """The first `num_requests` trace arrivals from 0, stretched so their mean rate is
    `rate_per_s` (None: the trace's own timing), none later than `max_duration_s`."""
    check_run_bounds(rate_per_s, num_requests, max_duration_s)
    head = trace[:num_requests]
    start = head[0].arrival_s
    offsets = [r.arrival_s - start for r in head]
    factor = 1.0
    if rate_per_s is not None and len(head) > 1 and offsets[-1] > 0:
        factor = (len(head) - 1) / offsets[-1] / rate_per_s
    elif rate_per_s is not None:  # one request, or all at once: evenly spaced at the rate
        offsets = [i / rate_per_s for i in range(len(head))]
    return [t * factor for t in offsets if t * factor <= max_duration_s]


def synthetic_prompt(
    num_tokens: int, rng: random.Random, hash_ids: Sequence[int] = ()
) -> tuple[int, ...]:
    """`num_tokens` token ids: one seeded block of `TRACE_BLOCK_TOKENS` per hash id (equal ids
    give equal blocks), then ids from `rng`."""
    if num_tokens < 1:
        raise ValueError(f"a prompt needs at least one token, got {num_tokens}")
    lo, hi = PROMPT_TOKEN_IDS
    ids: list[int] = []
    for hash_id in hash_ids:
        if len(ids) >= num_tokens:
            break
        block = random.Random(hash_id)
        ids.extend(block.randrange(lo, hi) for _ in range(TRACE_BLOCK_TOKENS))
    ids = ids[:num_tokens]
    ids.extend(rng.randrange(lo, hi) for _ in range(num_tokens - len(ids)))
    return tuple(ids)


def build_schedule(
    workload: Workload,
    rate_per_s: float | None,
    num_requests: int,
    max_duration_s: float,
    seed: int,
) -> list[PlannedRequest]:
    """The run's requests in arrival order; the same arguments give the same schedule."""
    rng = random.Random(seed)
    if workload.trace is not None:
        times = trace_times_s(workload.trace, rate_per_s, num_requests, max_duration_s)
        planned = _trace_requests(workload, workload.trace, times, rng)
    else:
        if rate_per_s is None:
            raise UserError("a length-distribution workload needs a rate")
        times = arrival_times_s(rate_per_s, num_requests, max_duration_s, rng)
        planned = _sampled_requests(workload, times, rng)
    if workload.burst is None:
        return planned
    extra = burst_schedule(workload, workload.burst, random.Random(seed + 1))
    return sorted(planned + extra, key=lambda p: p.at_s)


def burst_schedule(workload: Workload, burst: Burst, rng: random.Random) -> list[PlannedRequest]:
    """The burst's requests: Poisson arrivals at its rate within its window."""
    max_tokens = workload.output_tokens_of(workload.output_tokens)
    num_prompt = workload.prompt_tokens(burst.num_tokens, max_tokens)
    planned = []
    for offset_s in poisson_arrivals(burst.rate_per_s, rng):
        if offset_s > burst.duration_s:
            break
        planned.append(
            PlannedRequest(burst.at_s + offset_s, synthetic_prompt(num_prompt, rng), max_tokens)
        )
    return planned


def _trace_requests(
    workload: Workload,
    trace: Sequence[TraceRequest],
    times: Sequence[float],
    rng: random.Random,
) -> list[PlannedRequest]:
    """The trace's requests at `times`: its lengths (cut to the context), its prefix blocks."""
    planned = []
    for at_s, r in zip(times, trace, strict=False):
        max_tokens = workload.output_tokens_of(r.num_output_tokens)
        num_prompt = workload.prompt_tokens(r.num_input_tokens, max_tokens)
        planned.append(
            PlannedRequest(at_s, synthetic_prompt(num_prompt, rng, r.hash_ids), max_tokens)
        )
    return planned


def _sampled_requests(
    workload: Workload, times: Sequence[float], rng: random.Random
) -> list[PlannedRequest]:
    """Requests at `times` with prompt lengths drawn from the workload's distribution (all
    lengths first, then the prompts: the order the draws from `rng` are made in)."""
    assert workload.lengths is not None
    max_tokens = workload.output_tokens_of(workload.output_tokens)
    lengths = [workload.prompt_tokens(workload.lengths.sample(rng), max_tokens) for _ in times]
    return [
        PlannedRequest(at_s, synthetic_prompt(n, rng), max_tokens)
        for at_s, n in zip(times, lengths, strict=True)
    ]


def warmup_schedule(
    threshold_tokens: float, max_model_len: int | None, num_rounds: int = 2
) -> list[PlannedRequest]:
    """Unmeasured requests that take each path once per round before a run: a short prompt
    (local prefill) and, when t is finite, one of t + 64 tokens (offloaded); 2 output tokens."""
    cap = (max_model_len or 1 << 30) - 2
    lengths = [16]
    if math.isfinite(threshold_tokens):
        lengths.append(int(threshold_tokens) + 64)
    rng = random.Random(0)
    return [
        PlannedRequest(0.0, synthetic_prompt(max(1, min(cap, n)), rng), 2)
        for _ in range(num_rounds)
        for n in lengths
    ]
