"""Turn `prfaas.workload` distributions, arrival processes and traces into simulator requests.

Lengths and arrivals draw from two separate `random.Random` streams seeded from one seed, so runs at
different rates see the same request lengths (common random numbers: bisection on the rate compares
like with like).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence

from prfaas.errors import UserError
from prfaas.sim.config import SimRequest
from prfaas.workload import LengthDistribution, TraceRequest, gamma_arrivals, poisson_arrivals

_LENGTH_STREAM = 1_000_003  # offset of the length RNG's seed from the arrival RNG's


def arrival_times(rate_per_s: float, cv: float | None, seed: int) -> Iterator[float]:
    """Poisson arrivals (cv None or 1) or Gamma arrivals with inter-arrival cv."""
    rng = random.Random(seed)
    if cv is None or cv == 1.0:
        return poisson_arrivals(rate_per_s, rng)
    return gamma_arrivals(rate_per_s, cv, rng)


def _take(
    arrivals: Iterator[float], num_requests: int | None, duration_s: float | None
) -> list[float]:
    if num_requests is None and duration_s is None:
        raise UserError("give a number of requests or a duration")
    if num_requests is not None and num_requests < 1:
        raise UserError(f"number of requests must be >= 1, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise UserError(f"duration must be > 0 s, got {duration_s}")
    limited = (
        arrivals if duration_s is None else itertools.takewhile(lambda t: t <= duration_s, arrivals)
    )
    return list(itertools.islice(limited, num_requests))


def synthetic_requests(
    lengths: LengthDistribution,
    num_output_tokens: int,
    rate_per_s: float,
    *,
    seed: int,
    cv: float | None = None,
    num_requests: int | None = None,
    duration_s: float | None = None,
) -> list[SimRequest]:
    """Requests with lengths from a distribution (all uncached) and Poisson/Gamma arrivals."""
    times = _take(arrival_times(rate_per_s, cv, seed), num_requests, duration_s)
    rng = random.Random(seed + _LENGTH_STREAM)
    return [SimRequest(t, max(1, lengths.sample(rng)), num_output_tokens) for t in times]


def trace_requests(
    trace: Sequence[TraceRequest],
    *,
    rate_per_s: float | None = None,
    num_requests: int | None = None,
    duration_s: float | None = None,
) -> list[SimRequest]:
    """Replay a trace in order; `rate_per_s` rescales its time axis to that mean arrival rate."""
    scale = 1.0
    if rate_per_s is not None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise UserError(f"arrival rate must be > 0 requests/s, got {rate_per_s}")
        span_s = trace[-1].arrival_s - trace[0].arrival_s
        if span_s <= 0:
            raise UserError("cannot rescale a trace whose requests all arrive at once")
        scale = (len(trace) - 1) / span_s / rate_per_s
    requests = [
        SimRequest(r.arrival_s * scale, max(1, r.num_input_tokens), r.num_output_tokens, r.hash_ids)
        for r in trace
    ]
    if duration_s is not None:
        requests = [r for r in requests if r.arrived_at <= duration_s]
    return requests[:num_requests] if num_requests is not None else requests
