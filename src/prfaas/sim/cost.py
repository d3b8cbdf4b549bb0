"""Cost model seams of the simulator: how long a prefill, a decode step and a KV handover take.

Only durations live here; nothing decides. Any object with `t_prefill_s(num_tokens)` (for example a
`prfaas.perf` profile or cost model, or `prfaas.perf.latency.QuadraticLatency`) is a prefill
latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PrefillLatency(Protocol):
    """Latency of prefilling `num_tokens` uncached tokens of one request, alone on one instance."""

    def t_prefill_s(self, num_tokens: int) -> float: ...


class DecodeStepTime(Protocol):
    """Duration of one decode step of an instance running `batch_size` requests whose contexts
    (tokens computed so far) average `context_tokens`; a cost that ignores the context leaves it
    at 0."""

    def t_decode_step_s(self, batch_size: int, context_tokens: int = 0) -> float: ...


class KVSize(Protocol):
    """Bytes of KV (including fixed per-request state) of a request of `num_tokens` tokens."""

    def kv_bytes(self, num_tokens: int) -> int: ...


@dataclass(frozen=True, slots=True)
class FixedDecodeStep:
    """Every decode step takes `step_s`, whatever the batch (T_decode fixed by the SLO)."""

    step_s: float  # seconds per decode step

    def t_decode_step_s(self, batch_size: int, context_tokens: int = 0) -> float:
        return self.step_s


class DecodeStepByContext(Protocol):
    """A decode-step cost that also depends on the context each sequence holds (prfaas.perf)."""

    def t_decode_step_s(self, batch_size: int, context_tokens: int) -> float: ...


@dataclass(frozen=True, slots=True)
class ContextDecodeStep:
    """Decode step time per batch size, read once from a cost model at a fixed context.

    Build with `context_decode_step`. Every running sequence is taken to hold `context_tokens`
    tokens (a workload mean), since the decode instance does not track per-request context.
    """

    context_tokens: int  # tokens each sequence holds, for every batch
    step_s: tuple[float, ...]  # step_s[b - 1]: seconds per step with b running requests

    def t_decode_step_s(self, batch_size: int, context_tokens: int = 0) -> float:
        """The tabulated step of `batch_size`, whatever the context (it is the table's)."""
        return self.step_s[min(batch_size, len(self.step_s)) - 1]


@dataclass(frozen=True, slots=True)
class BatchContextDecodeStep:
    """A cost model's decode step at the batch's own mean context: what an emulated decode
    engine sleeps per step (`EmulatedEngine._decode`, the same `prfaas.perf.CostModel`)."""

    model: DecodeStepByContext  # the decode instance's cost model

    def t_decode_step_s(self, batch_size: int, context_tokens: int = 0) -> float:
        return self.model.t_decode_step_s(batch_size, context_tokens)


def context_decode_step(
    model: DecodeStepByContext, context_tokens: int, max_batch_size: int
) -> ContextDecodeStep:
    """Tabulate `model.t_decode_step_s(b, context_tokens)` for b = 1..max_batch_size."""
    steps = tuple(model.t_decode_step_s(b, context_tokens) for b in range(1, max_batch_size + 1))
    return ContextDecodeStep(context_tokens, steps)


def chunk_time_s(latency: PrefillLatency, start_token: int, end_token: int) -> float:
    """Marginal cost of computing tokens [start_token, end_token) of one request.

    The first chunk pays T(end) (fixed cost included); later chunks pay T(end) - T(start), so the
    chunks of a lone request add up to exactly T(l): the fluid limit matches the planner.
    """
    if start_token == 0:
        return latency.t_prefill_s(end_token)
    return latency.t_prefill_s(end_token) - latency.t_prefill_s(start_token)
