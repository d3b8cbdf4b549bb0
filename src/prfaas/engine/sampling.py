"""Token sampling: greedy, temperature, top-k, top-p, with a per-request, per-position seed.

Each sampled token draws from a generator seeded by (request seed, output index), so a request
gives the same tokens whether its first token was sampled on a prefill instance and the rest on a
decode instance in another process, or all in one place.
"""

from __future__ import annotations

import torch

from prfaas.messages import SamplingParams

_SEED_STRIDE = 1_000_003  # separates the streams of neighbouring seeds


def sample_token(logits: torch.Tensor, params: SamplingParams, seed: int, output_index: int) -> int:
    """One token id from last-position logits [vocab_size]."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature  # [vocab_size]
    scores = _top_k(scores, params.top_k)
    scores = _top_p(scores, params.top_p)
    probs = torch.softmax(scores, dim=-1)  # [vocab_size]
    generator = torch.Generator().manual_seed((seed * _SEED_STRIDE + output_index) % (1 << 64))
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k <= 0 or top_k >= scores.numel():
        return scores
    kth = torch.topk(scores, top_k).values[-1]
    return scores.masked_fill(scores < kth, float("-inf"))


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=True)  # [vocab_size]
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)  # [vocab_size]
    is_cut = cumulative - torch.softmax(sorted_scores, dim=-1) >= top_p  # keeps the first token
    cut = torch.zeros_like(is_cut).scatter(0, order, is_cut)
    return scores.masked_fill(cut, float("-inf"))
