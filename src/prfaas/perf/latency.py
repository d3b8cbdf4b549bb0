"""Analytic prefill-latency curves: T(l) = a + b*l + c*l^2 for one instance.

Layer 1, standard library only. The planner takes the curve as a `LatencyCurve` (called with a real
length), the simulator as a `PrefillLatency` (`t_prefill_s` with an integer length); one class
serves both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.errors import UserError


@dataclass(frozen=True, slots=True)
class QuadraticLatency:
    """T(l) = a + b*l + c*l^2 seconds for one instance (l in tokens), e.g. the H20 curve inferred
    from the paper's Table 6 (docs/paper.md). Coefficients must be finite and >= 0 with a + b > 0
    (UserError)."""

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

    def t_prefill_s(self, num_tokens: float) -> float:
        """Seconds to prefill `num_tokens` uncached tokens of one request alone on one instance."""
        return self(num_tokens)

    def describe(self) -> str:
        return f"{self.a_s:g} + {self.b_s_per_token:g}*l + {self.c_s_per_token2:g}*l^2 s"

    def as_spec(self) -> str:
        """'a,b,c', the form `prfaas plan --*-latency quadratic:a,b,c` parses back exactly."""
        return ",".join(repr(c) for c in (self.a_s, self.b_s_per_token, self.c_s_per_token2))
