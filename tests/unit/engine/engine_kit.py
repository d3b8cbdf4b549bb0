"""Helpers shared by the engine tests: tiny models cached per (preset, dtype), prompts, requests,
and draining an engine's deltas."""

from __future__ import annotations

import functools
from typing import Any

from prfaas.engine.loading import LoadedModel, load_model
from prfaas.messages import GenerateRequest, SamplingParams, TokenDelta


@functools.cache
def tiny(name: str, dtype: str = "fp32") -> LoadedModel:
    return load_model(name, dtype)


def prompt(num_tokens: int, offset: int = 0) -> tuple[int, ...]:
    """A deterministic byte prompt that is not a constant run."""
    return tuple((7 * i + 13 * offset + 3) % 251 for i in range(num_tokens))


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True)


def request(req_id: str, num_tokens: int, max_tokens: int = 6, offset: int = 0) -> GenerateRequest:
    return GenerateRequest(req_id, prompt(num_tokens, offset), greedy(max_tokens))


def drain(engine: Any) -> dict[str, list[TokenDelta]]:
    """Step an engine until nothing is left to do; every delta, per request, in order."""
    deltas: dict[str, list[TokenDelta]] = {}
    while engine.has_unfinished() or engine._waiting:
        for delta in engine.step():
            deltas.setdefault(delta.req_id, []).append(delta)
    return deltas


def emitted(deltas: list[TokenDelta]) -> list[int]:
    """The token ids a client would have received from these deltas."""
    return [t for delta in deltas for t in delta.token_ids]
