"""Prefill-latency curves the planner accepts besides measured profiles: the 'a,b,c' parser for
`prfaas.perf.latency.QuadraticLatency`."""

from __future__ import annotations

from prfaas.errors import UserError
from prfaas.perf.latency import QuadraticLatency


def parse_quadratic(text: str) -> QuadraticLatency:
    """'a,b,c' -> QuadraticLatency; a malformed list is a UserError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise UserError(f"quadratic latency wants 'a,b,c' (seconds), got {text!r}")
    try:
        a, b, c = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"quadratic latency wants three numbers 'a,b,c', got {text!r}") from None
    return QuadraticLatency(a, b, c)
