"""`prfaas bench system`'s workload flags: the case study's length distribution or a trace, the
output length and an optional burst, turned into the run's `Workload` and described for the
results' header."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from prfaas.cli._args import bounded_int, positive_float
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.bench.schedule import Burst, Workload


def add_workload_flags(parser: argparse.ArgumentParser) -> None:
    from prfaas.casestudy import PAPER_CASE_STUDY as case
    from prfaas.cli._args import MAX_LENGTH_TOKENS, finite_float, token_count

    g = parser.add_argument_group("workload (default: the paper's case-study lengths)")
    g.add_argument("--trace", help="Mooncake .jsonl or Azure .csv: its lengths and timing")
    g.add_argument("--mu", type=finite_float, default=case.length_mu, help="log-normal mu")
    g.add_argument("--sigma", type=positive_float, default=case.length_sigma, help="sigma")
    g.add_argument("--min-tokens", type=token_count, default=case.min_tokens, help="lower bound")
    g.add_argument("--max-tokens", type=token_count, default=case.max_tokens, help="upper bound")
    g.add_argument(
        "--output-tokens",
        type=bounded_int(1, MAX_LENGTH_TOKENS),
        default=round(case.output_tokens),
        help=f"output tokens per request ({round(case.output_tokens)}; a trace has its own)",
    )
    g.add_argument(
        "--burst",
        metavar="AT_S:DURATION_S:RATE:TOKENS",
        help="on top of the workload, RATE requests/s of TOKENS-token prompts from AT_S for "
        "DURATION_S (Poisson)",
    )


def workload_of(args: argparse.Namespace) -> Workload:
    """The trace's or the length distribution's workload the flags name, with their burst."""
    from prfaas.bench.schedule import Workload
    from prfaas.workload import TruncatedLogNormal, load_trace

    burst = None if args.burst is None else parse_burst(args.burst)
    if args.trace is not None:
        trace = tuple(load_trace(args.trace))
        return Workload(trace=trace, output_tokens=args.output_tokens, burst=burst)
    if not args.min_tokens <= args.max_tokens:
        raise UserError(f"--min-tokens {args.min_tokens:g} > --max-tokens {args.max_tokens:g}")
    lengths = TruncatedLogNormal(args.mu, args.sigma, args.min_tokens, args.max_tokens)
    return Workload(lengths=lengths, output_tokens=args.output_tokens, burst=burst)


def parse_burst(text: str) -> Burst:
    """`AT_S:DURATION_S:RATE:TOKENS` -> a `Burst`; UserError on anything else."""
    from prfaas.bench.schedule import Burst

    parts = text.split(":")
    try:
        at_s, duration_s, rate = (float(p) for p in parts[:3])
        (num_tokens,) = (int(p) for p in parts[3:])
    except ValueError:
        raise UserError(
            f"--burst must be AT_S:DURATION_S:RATE:TOKENS (TOKENS an integer), got {text!r}"
        ) from None
    return Burst(at_s, duration_s, rate, num_tokens)


def describe_workload(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """The header's `workload`: the trace and its size, or the length distribution's flags."""
    if workload.trace is not None:
        return {"trace": args.trace, "num_trace_requests": len(workload.trace)}
    return {
        "lengths": "truncated log-normal",
        "mu": args.mu,
        "sigma": args.sigma,
        "min_tokens": args.min_tokens,
        "max_tokens": args.max_tokens,
        "output_tokens": workload.output_tokens,
    }


def burst_record(burst: Burst | None) -> dict[str, Any] | None:
    """The header's `burst` (None without one)."""
    if burst is None:
        return None
    keys = ("at_s", "duration_s", "rate_per_s", "num_tokens")
    return {k: getattr(burst, k) for k in keys}
