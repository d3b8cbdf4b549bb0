"""Helpers shared by the engine tests: tiny models cached per (preset, dtype), prompts, requests."""

from __future__ import annotations

import functools

from prfaas.engine.loading import LoadedModel, load_model
from prfaas.messages import GenerateRequest, SamplingParams


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
