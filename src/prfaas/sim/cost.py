"""Cost model seams of the simulator: how long a prefill, a decode step and a KV handover take.

Only durations live here; nothing decides. Any object with `t_prefill_s(num_tokens)` (for example a
`prfaas.perf` profile or cost model) is a prefill latency; the curves below are the analytic
defaults the case study uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PrefillLatency(Protocol):
    """Latency of prefilling `num_tokens` uncached tokens of one request, alone on one instance."""

    def t_prefill_s(self, num_tokens: int) -> float: ...


class DecodeStepTime(Protocol):
    """Duration of one decode step of an instance running `batch_size` requests."""

    def t_decode_step_s(self, batch_size: int) -> float: ...


class KVSize(Protocol):
    """Bytes of KV (including fixed per-request state) of a request of `num_tokens` tokens."""

    def kv_bytes(self, num_tokens: int) -> int: ...


@dataclass(frozen=True, slots=True)
class QuadraticLatency:
    """T(l) = a + b*l + c*l^2 seconds, e.g. the H20 curve inferred in PAPER.md section 6."""

    a_s: float  # fixed cost of a prefill, seconds
    b_s_per_token: float  # linear term, seconds per token
    c_s_per_token2: float  # quadratic (attention) term, seconds per token squared

    def t_prefill_s(self, num_tokens: int) -> float:
        return self.a_s + self.b_s_per_token * num_tokens + self.c_s_per_token2 * num_tokens**2


# 8xH20 prefill of the paper's 1T model, back-solved from Table 6 (PAPER.md section 6, inferred).
H20_INFERRED_LATENCY = QuadraticLatency(0.469, 1.300e-4, 2.945e-10)


@dataclass(frozen=True, slots=True)
class FixedDecodeStep:
    """Every decode step takes `step_s`, whatever the batch (T_decode fixed by the SLO)."""

    step_s: float  # seconds per decode step

    def t_decode_step_s(self, batch_size: int) -> float:
        return self.step_s


def chunk_time_s(latency: PrefillLatency, start_token: int, end_token: int) -> float:
    """Marginal cost of computing tokens [start_token, end_token) of one request.

    The first chunk pays T(end) (fixed cost included); later chunks pay T(end) - T(start), so the
    chunks of a lone request add up to exactly T(l): the fluid limit matches the planner.
    """
    if start_token == 0:
        return latency.t_prefill_s(end_token)
    return latency.t_prefill_s(end_token) - latency.t_prefill_s(start_token)
