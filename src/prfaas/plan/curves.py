"""Prefill-latency curves the planner accepts besides measured profiles: a quadratic in length."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.errors import UserError


@dataclass(frozen=True, slots=True)
class QuadraticLatency:
    """T(l) = a + b*l + c*l^2 seconds for one instance (l in tokens)."""

    a_s: float  # fixed cost per prefill, seconds
    b_s_per_token: float  # linear (GEMM) cost, seconds per token
    c_s_per_token2: float  # quadratic (attention) cost, seconds per token^2

    def __post_init__(self) -> None:
        coeffs = (self.a_s, self.b_s_per_token, self.c_s_per_token2)
        if (
            not all(math.isfinite(c) and c >= 0 for c in coeffs)
            or self.a_s + self.b_s_per_token <= 0
        ):
            raise UserError(
                f"quadratic latency needs finite coefficients >= 0, not all zero, got {coeffs}"
            )

    def __call__(self, num_tokens: float) -> float:
        return self.a_s + self.b_s_per_token * num_tokens + self.c_s_per_token2 * num_tokens**2

    def describe(self) -> str:
        return f"{self.a_s:g} + {self.b_s_per_token:g}*l + {self.c_s_per_token2:g}*l^2 s"


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
