"""How large one `prfaas sim` run may be: requests, arrival span, drain, link steps, series windows
and controller ticks. A run past a bound would hang or exhaust memory instead of finishing, so it
is refused before it starts, with the bound and the flag that would bring it back inside.

`check_flags` needs only the flags; `check_run` also needs the setup (the offered rate of a run at
`--load`, a trace's own timing), so it runs after the planner and before the simulation.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prfaas.cli._args import MAX_LINK_GBPS
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.sim.presets import SimSetup
    from prfaas.sim.scenario import Scenario
    from prfaas.workload import TraceRequest

MAX_REQUESTS = 10_000_000  # arrivals one run may generate
MAX_DURATION_S = 30 * 86400.0  # arrival span of a run, and its drain after the last arrival
MAX_LINK_STEPS = 1_000_000  # link capacity changes over the simulated horizon
MAX_WINDOWS = 100_000  # arrival windows of the JSON 'windows' series
MAX_CONTROLLER_TICKS = 1_000_000  # adaptive controller ticks over the horizon
MIN_CV, MAX_CV = 0.01, 100.0  # gamma inter-arrival CV: outside, the gamma shape under- or overflows
DEFAULT_DURATION_S = 3600.0  # what `prfaas sim` simulates when neither span nor count is given


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags whose request list, drain or link schedule would be unbounded in practice."""
    if args.duration_s is not None and args.duration_s > MAX_DURATION_S:
        raise UserError(f"--duration-s must be <= {MAX_DURATION_S:g} s, got {args.duration_s:g}")
    if args.drain_s > MAX_DURATION_S:
        raise UserError(f"--drain-s must be <= {MAX_DURATION_S:g} s, got {args.drain_s:g}")
    expected = None if args.rate is None else args.rate * (args.duration_s or DEFAULT_DURATION_S)
    if args.num_requests is None and expected is not None and expected > MAX_REQUESTS:
        raise UserError(
            f"--rate x --duration-s makes about {expected:,.0f} requests; at most "
            f"{MAX_REQUESTS:,} are allowed (lower one, or give --num-requests)"
        )
    _check_link_drop(parse_pair(args.link_drop, "--link-drop"))
    _check_fluctuation(args)


def _check_fluctuation(args: argparse.Namespace) -> None:
    """LOW in [0, 1], PERIOD_S in (0, MAX_DURATION_S], and at most MAX_LINK_STEPS periods over
    the run."""
    fluctuation = parse_pair(args.link_fluctuation, "--link-fluctuation")
    if fluctuation is None:
        return
    low, period_s = fluctuation
    if not (0 <= low <= 1 and 0 < period_s <= MAX_DURATION_S):
        raise UserError(
            f"--link-fluctuation needs LOW in [0, 1] and PERIOD_S in (0, {MAX_DURATION_S:g}], "
            f"got {args.link_fluctuation!r}"
        )
    horizon_s = (args.duration_s or DEFAULT_DURATION_S) + args.drain_s
    if horizon_s / period_s > MAX_LINK_STEPS:
        raise UserError(
            f"--link-fluctuation period {period_s:g} s makes over {MAX_LINK_STEPS:,} "
            f"capacity steps over {horizon_s:g} s; use a period >= "
            f"{horizon_s / MAX_LINK_STEPS:.3g} s"
        )


def _check_link_drop(drop: tuple[float, float] | None) -> None:
    """AT_S in (0, MAX_DURATION_S] and GBPS in [0, MAX_LINK_GBPS]: a rate above that would
    overflow to infinity once converted to bytes per second."""
    if drop is None:
        return
    at_s, gbps = drop
    if not (0 < at_s <= MAX_DURATION_S and 0 <= gbps <= MAX_LINK_GBPS):
        raise UserError(
            f"--link-drop needs AT_S in (0, {MAX_DURATION_S:g}] s and GBPS in "
            f"[0, {MAX_LINK_GBPS:g}], got {at_s:g}:{gbps:g}"
        )


def parse_pair(text: str | None, flag: str) -> tuple[float, float] | None:
    """'A:B' -> (A, B), both finite; None for None."""
    if text is None:
        return None
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"{flag} expects two numbers as A:B, got {text!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UserError(f"{flag} expects finite numbers, got {text!r}")
    return a, b


def check_run(args: argparse.Namespace, setup: SimSetup, scenario: Scenario) -> None:
    """Refuse a run whose arrivals span more than `MAX_DURATION_S`, or whose series windows or
    controller ticks over that span exceed their bounds."""
    span_s = arrival_span_s(setup, scenario)
    if span_s is None:
        return
    if span_s > MAX_DURATION_S:
        raise UserError(
            f"{scenario.kind}: the arrivals would span about {span_s:,.0f} s; at most "
            f"{MAX_DURATION_S:,.0f} s (30 days) are allowed (give --duration-s, fewer "
            "--num-requests or a higher --rate / --load)"
        )
    _check_num_periods("--window-s", args.window_s, span_s, "arrival windows", MAX_WINDOWS)
    if args.controller == "adaptive":
        _check_num_periods(
            "--controller-period-s",
            args.controller_period_s,
            span_s + scenario.drain_s,
            "ticks",
            MAX_CONTROLLER_TICKS,
        )


def _check_num_periods(
    flag: str, period_s: float, span_s: float, what: str, max_periods: int
) -> None:
    """Refuse a `flag` of `period_s` that cuts `span_s` into more than `max_periods` periods
    (`what` names them in the message)."""
    num_periods = math.ceil(span_s / period_s)
    if num_periods > max_periods:
        raise UserError(
            f"{flag} {period_s:g} makes {num_periods:,} {what} over {span_s:,.0f} s; at most "
            f"{max_periods:,} are allowed (use {flag} >= {span_s / max_periods:.3g})"
        )


def arrival_span_s(setup: SimSetup, scenario: Scenario) -> float | None:
    """The time from the first to the last arrival the run will generate (the expected one for
    a random process), or None where the simulator will refuse the rate itself."""
    from prfaas.sim.scenario import offered_rate

    rate_per_s = offered_rate(setup, scenario)
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        return None
    if setup.trace is not None:
        span_s = _trace_span_s(setup.trace, rate_per_s, scenario.num_requests)
    elif scenario.num_requests is not None and rate_per_s is not None:
        span_s = scenario.num_requests / rate_per_s
    else:
        span_s = math.inf
    if scenario.duration_s is not None:
        span_s = min(span_s, scenario.duration_s)
    return span_s


def _trace_span_s(
    trace: Sequence[TraceRequest], rate_per_s: float | None, num_requests: int | None
) -> float:
    """The last replayed arrival: the trace's own timing, or rescaled to `rate_per_s` as
    `prfaas.sim.traffic.trace_requests` does."""
    last = trace[min(len(trace), num_requests or len(trace)) - 1].arrival_s
    if rate_per_s is None:
        return last
    whole_span_s = trace[-1].arrival_s - trace[0].arrival_s
    if whole_span_s <= 0:
        return 0.0  # the simulator refuses to rescale it, with its own reason
    return last * (len(trace) - 1) / whole_span_s / rate_per_s
