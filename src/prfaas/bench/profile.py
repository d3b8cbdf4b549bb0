"""`prfaas profile`: an engine's prefill latency T_prefill(l) and its decode step time against
batch size, measured through its OpenAI API (a `vllm serve`, or a PrfaaS router), written as the
profile `prfaas kv --profile`, `plan`, `sim` and `[model] prefill_latency = "profile:PATH"` read
(`prfaas.perf.profile`).

- *Prefill*: lone requests (nothing else in flight), `max_tokens = 1`, every prompt fresh random
  token ids so that no prefix cache hits. The latency is the prefill instance's own time when a
  PrfaaS router reports it (`prfaas.prefill_s`, whichever instance ran it), else the time to the
  first token the client sees (vLLM: its prefill plus a few milliseconds of serving). The median
  of `repeats` runs per length, after one unrecorded warm-up request.
  Medians are raised where needed to be non-decreasing in length (the rows say which).
- *Decode*: B streamed requests sent at once with short prompts and `max_tokens` N; the step
  time at batch B is the median over them of (last token - first token) / (N - 1).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prfaas.bench.loadgen import Target, run_schedule
from prfaas.bench.outcome import RequestResult
from prfaas.bench.schedule import PlannedRequest
from prfaas.errors import UserError
from prfaas.perf.profile import profile_from_rows

# Prompt ids: in every tokenizer's byte range, clear of the low special ids. Random over 240
# symbols, two prompts share their first 16-token block with probability 240^-16: no cache hit.
_MIN_TOKEN_ID = 16
_MAX_TOKEN_ID = 256


@dataclass(frozen=True)
class ProfileSpec:
    """What to measure: prompt lengths (tokens, increasing), runs per length, decode batch
    sizes, the decode requests' output and prompt lengths, and the prompts' random seed."""

    lengths: tuple[int, ...]
    repeats: int = 3
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    decode_tokens: int = 32
    decode_prompt_tokens: int = 64
    seed: int = 0

    def num_requests(self) -> int:
        """Requests the whole profile sends (the progress bar's total)."""
        return 1 + len(self.lengths) * self.repeats + sum(self.batch_sizes)


@dataclass(frozen=True)
class PrefillRow:
    tokens: int
    t_prefill_s: float  # median of the runs
    runs_s: tuple[float, ...]
    source: str  # "prefill_s" (the PrfaaS instance's own) or "ttft" (the client's)


@dataclass(frozen=True)
class DecodeRow:
    batch_size: int
    t_step_s: float  # median inter-token time of the batch's requests


def random_prompt(rng: random.Random, num_tokens: int) -> tuple[int, ...]:
    return tuple(rng.randrange(_MIN_TOKEN_ID, _MAX_TOKEN_ID) for _ in range(num_tokens))


async def measure(
    target: Target, spec: ProfileSpec, on_done: Callable[[], None] = lambda: None
) -> tuple[list[PrefillRow], list[DecodeRow]]:
    """Every prefill row, then every decode row; UserError on the first failed request."""
    rng = random.Random(spec.seed)
    await _run(target, [PlannedRequest(0.0, random_prompt(rng, spec.lengths[0]), 1)])  # warm-up
    on_done()
    runs_by_length: dict[int, list[RequestResult]] = {}
    for num_tokens in spec.lengths:
        runs = runs_by_length.setdefault(num_tokens, [])
        for _ in range(spec.repeats):
            planned = PlannedRequest(0.0, random_prompt(rng, num_tokens), 1)
            runs.append((await _run(target, [planned]))[0])
            on_done()
    prefill = prefill_rows(runs_by_length)
    decode = []
    for batch_size in spec.batch_sizes:
        batch = [
            PlannedRequest(0.0, random_prompt(rng, spec.decode_prompt_tokens), spec.decode_tokens)
            for _ in range(batch_size)
        ]
        results = await _run(target, batch)
        decode.append(DecodeRow(batch_size, statistics.median(r.tpot_s for r in results)))
        for _ in results:
            on_done()
    return prefill, decode


async def _run(target: Target, planned: Sequence[PlannedRequest]) -> list[RequestResult]:
    results = (await run_schedule(target, planned)).results
    for result in results:
        if not result.ok:
            raise UserError(f"a {result.num_prompt_tokens}-token request failed: {result.error}")
    return results


def prefill_rows(runs_by_length: dict[int, list[RequestResult]]) -> list[PrefillRow]:
    """One row per length, the median of its runs. One latency source for every row: the
    prefill instance's own time when every response reported it (a PrfaaS router whose requests
    all had a prefill instance), else the client's time to first token."""
    runs = [r for results in runs_by_length.values() for r in results]
    source = "prefill_s" if all(not math.isnan(r.prefill_s) for r in runs) else "ttft"
    rows = []
    for num_tokens, results in runs_by_length.items():
        latencies = tuple(r.prefill_s if source == "prefill_s" else r.ttft_s for r in results)
        rows.append(PrefillRow(num_tokens, statistics.median(latencies), latencies, source))
    return rows


def profile_document(
    prefill: Sequence[PrefillRow],
    decode: Sequence[DecodeRow],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The profile file's JSON: `rows` (tokens, t_prefill_s) as `prfaas.perf.profile` reads
    them, `decode` (batch_size, t_step_s) and how each was measured; checked loadable."""
    latencies_s = non_decreasing([r.t_prefill_s for r in prefill])
    rows = [
        {"tokens": r.tokens, "t_prefill_s": round(t, 6)}
        for r, t in zip(prefill, latencies_s, strict=True)
    ]
    raised = [r.tokens for r, t in zip(prefill, latencies_s, strict=True) if t != r.t_prefill_s]
    try:
        profile_from_rows(rows, name=str(meta.get("name", "")), source="measured", meta=meta)
    except ValueError as exc:  # e.g. latencies not positive on a broken server
        raise UserError(f"the measured profile is not usable: {exc}") from None
    return {
        **meta,
        "rows": rows,
        "decode": [{"batch_size": d.batch_size, "t_step_s": round(d.t_step_s, 6)} for d in decode],
        "prefill_runs_s": {str(r.tokens): [round(x, 6) for x in r.runs_s] for r in prefill},
        "prefill_latency_from": prefill[0].source if prefill else None,
        "raised_to_non_decreasing": raised,
    }


def non_decreasing(values: Sequence[float]) -> list[float]:
    """Each value raised to the largest before it: a longer prompt never prefills faster, so a
    median that came out below a shorter length's (noise on a busy host) takes that value, as the
    planner requires of a latency curve."""
    out: list[float] = []
    for value in values:
        out.append(max(value, out[-1]) if out else value)
    return out


def run_profile(
    target: Target, spec: ProfileSpec, on_done: Callable[[], None] = lambda: None
) -> tuple[list[PrefillRow], list[DecodeRow]]:
    return asyncio.run(measure(target, spec, on_done))
