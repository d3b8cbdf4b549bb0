"""Highest arrival rate whose queues stay bounded, found by bisection over simulated runs.

Criterion ("bounded queues"): over the second half of the arrival window, completions are at least
`min_completion_ratio` (default 0.97) of arrivals, i.e. the backlog of requests in the system grows
by at most 3% of what arrived. Below capacity the backlog is stationary and the ratio is ~1; above
capacity the backlog grows at (rate - capacity) and the ratio falls to capacity / rate. The answer
can therefore sit up to ~3% above the true capacity, and a finite run adds noise of
~1/sqrt(arrivals).

A caller may add criteria (a TTFT p90 limit, in `prfaas.sim.scenario.max_rate`) by building its
own `Probe`s for `bisect_rate`; the search assumes only that a rate meeting them is also met by
every lower rate. A criterion that no rate meets (a TTFT limit below one request's own prefill)
ends the search at `MIN_RATE_FRACTION` of the first rate with `max_rate_per_s` 0: below that the
runs only grow longer (a fixed request count spread over ever more simulated time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.sim.metrics import RequestLog

MIN_COMPLETION_RATIO = 0.97
MIN_RATE_FRACTION = 2.0**-10  # the search gives up below this share of its first rate


def completion_ratio(log: RequestLog, lo_s: float, hi_s: float) -> float:
    """Completions within [lo_s, hi_s] divided by arrivals within it (1.0 with no arrivals)."""
    arrived = sum(1 for t in log.arrived_at if lo_s <= t <= hi_s)
    completed = sum(1 for t in log.finished_at if lo_s <= t <= hi_s)
    return completed / arrived if arrived else 1.0


@dataclass(frozen=True, slots=True)
class Probe:
    """One simulated run of the bisection."""

    rate_per_s: float  # offered arrival rate, requests/s
    completion_ratio: float  # second-half completions / arrivals
    is_stable: bool  # meets every criterion (completion_ratio, and a TTFT limit when given)
    ttft_p90_s: float | None = None  # the run's TTFT p90, when a TTFT limit is a criterion


@dataclass(frozen=True, slots=True)
class MaxRate:
    """Result of the search."""

    max_rate_per_s: float  # highest rate found stable (the bracket's lower end)
    upper_rate_per_s: float  # lowest rate found unstable (the bracket's upper end)
    probes: tuple[Probe, ...]  # every run, in order


def find_max_rate(
    ratio_at: Callable[[float], float],
    initial_rate_per_s: float,
    *,
    rel_tol: float = 0.01,
    max_probes: int = 24,
    min_completion_ratio: float = MIN_COMPLETION_RATIO,
) -> MaxRate:
    """Highest rate with bounded queues: `bisect_rate` on the completion criterion alone.

    `ratio_at(rate)` runs the simulation at `rate` and returns its second-half completion ratio.
    """

    def run_at(rate: float) -> Probe:
        ratio = ratio_at(rate)
        return Probe(rate, ratio, ratio >= min_completion_ratio)

    return bisect_rate(run_at, initial_rate_per_s, rel_tol=rel_tol, max_probes=max_probes)


def bisect_rate(
    run_at: Callable[[float], Probe],
    initial_rate_per_s: float,
    *,
    rel_tol: float = 0.01,
    max_probes: int = 24,
) -> MaxRate:
    """Bracket the highest rate whose probe `is_stable` from `initial_rate_per_s`
    (doubling/halving), then bisect. `run_at(rate)` simulates at `rate` and judges the run.
    Stops when the bracket is within `rel_tol` of its upper end or after `max_probes` runs, and
    with `max_rate_per_s` 0 when no rate down to `MIN_RATE_FRACTION` of the first is stable.
    """
    if not (math.isfinite(initial_rate_per_s) and initial_rate_per_s > 0):
        raise UserError(f"initial rate must be > 0, got {initial_rate_per_s}")
    probes: list[Probe] = []

    def probe(rate: float) -> bool:
        probes.append(run_at(rate))
        return probes[-1].is_stable

    lo, hi = 0.0, math.inf
    rate = initial_rate_per_s
    min_rate_per_s = initial_rate_per_s * MIN_RATE_FRACTION
    while math.isinf(hi) or lo == 0.0:
        if len(probes) >= max_probes or rate < min_rate_per_s:
            break
        if probe(rate):
            lo, rate = rate, rate * 2 if math.isinf(hi) else (rate + hi) / 2
        else:
            hi, rate = rate, rate / 2 if lo == 0.0 else (lo + rate) / 2
    if lo == 0.0:
        return MaxRate(0.0, hi, tuple(probes))
    while len(probes) < max_probes and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return MaxRate(lo, hi, tuple(probes))
