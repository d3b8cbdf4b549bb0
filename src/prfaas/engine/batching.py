"""Stacking per-request caches into one batch cache for decode, and splitting them back.

Requests of different lengths share one forward by left-padding: attention K/V (full and sliding
window) are padded with zeros on the token axis up to the longest request and masked out with an
attention mask; conv and recurrent states (and MiniMax's cache-level `linear_cache`) are
fixed-size and stack along the batch axis. Each row keeps its own explicit position id, so rotary
phases are those of an unbatched run. MiniMax's cache reports a sequence length of 0 when layer 0
is linear, so it gets a precomputed per-layer-type mask instead of the 2-D one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from prfaas.engine.cache_layout import MINIMAX_ARCHS, new_cache

_KV_ATTRS = ("keys", "values")


def attention_mask(lengths: Sequence[int]) -> torch.Tensor:
    """[batch, max_len + 1] mask: 0 on each row's left padding, 1 on its tokens and the new one."""
    padded = max(lengths)
    mask = torch.ones(len(lengths), padded + 1, dtype=torch.long)  # [batch, padded + 1]
    for row, n in enumerate(lengths):
        mask[row, : padded - n] = 0
    return mask


def decode_mask(model: Any, lengths: Sequence[int]) -> Any:
    """The attention_mask argument of a batched decode step for this model."""
    mask = attention_mask(lengths)  # [batch, padded + 1]
    if str(model.config.model_type) in MINIMAX_ARCHS:
        full = mask.bool()[:, None, None, :]  # [batch, 1, q_len=1, padded + 1]
        return {"full_attention": full, "linear_attention": None}
    return mask


def _with_layers(cache: Any, num_layers: int) -> Any:
    """Lazily built caches (MiniMax) start without layer objects: create them."""
    while len(cache.layers) < num_layers:
        cache.layers.append(cache.layer_class_to_replicate())
    return cache


def merge_caches(model: Any, caches: Sequence[Any], lengths: Sequence[int]) -> Any:
    """One batch cache from batch-1 caches holding `lengths[r]` computed tokens each."""
    merged = _with_layers(new_cache(model), len(caches[0].layers))
    padded = max(lengths)
    if hasattr(merged, "linear_cache"):
        merged.linear_cache = [
            _cat_linear([c.linear_cache[j] for c in caches])
            for j in range(len(caches[0].linear_cache))
        ]
    for i, layer in enumerate(merged.layers):
        rows = [c.layers[i] for c in caches]
        for attr, value in vars(rows[0]).items():
            if isinstance(value, torch.Tensor) and attr in _KV_ATTRS:
                setattr(layer, attr, _pad_cat([getattr(r, attr) for r in rows]))
            elif isinstance(value, dict) and any(
                isinstance(v, torch.Tensor) for v in value.values()
            ):
                setattr(
                    layer, attr, {k: _cat_slot([getattr(r, attr)[k] for r in rows]) for k in value}
                )
            elif not isinstance(value, torch.Tensor):
                setattr(layer, attr, value)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = padded
    return merged


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Left-pad [1, heads, tokens_r, dim] tensors to the longest; stack them on the batch axis."""
    longest = max(t.shape[-2] for t in tensors)
    padded = [F.pad(t, (0, 0, longest - t.shape[-2], 0)) for t in tensors]
    return torch.cat(padded, dim=0)  # [batch, heads, longest, dim]


def _cat_linear(items: list[Any]) -> Any:
    return torch.cat(items, dim=0) if isinstance(items[0], torch.Tensor) else []


def _cat_slot(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    return torch.cat([t for t in tensors if t is not None], dim=0)  # [batch, ...]


def split_cache(model: Any, merged: Any, lengths: Sequence[int]) -> list[Any]:
    """Batch-1 caches back from a batch cache; `lengths[r]` is row r's computed tokens now."""
    caches = [_with_layers(new_cache(model), len(merged.layers)) for _ in lengths]
    for row, cache in enumerate(caches):
        if hasattr(merged, "linear_cache"):
            cache.linear_cache = [
                x[row : row + 1].clone() if isinstance(x, torch.Tensor) else []
                for x in merged.linear_cache
            ]
    for i, merged_layer in enumerate(merged.layers):
        for row, (cache, n) in enumerate(zip(caches, lengths, strict=True)):
            _split_layer(merged_layer, cache.layers[i], row, n)
    return caches


def _split_layer(merged_layer: Any, layer: Any, row: int, num_tokens: int) -> None:
    for attr, value in vars(merged_layer).items():
        if isinstance(value, torch.Tensor) and attr in _KV_ATTRS:
            keep = min(num_tokens, value.shape[-2])
            setattr(layer, attr, value[row : row + 1, :, value.shape[-2] - keep :].contiguous())
        elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            rows = {k: None if v is None else v[row : row + 1].clone() for k, v in value.items()}
            setattr(layer, attr, rows)
        elif not isinstance(value, torch.Tensor):
            setattr(layer, attr, value)
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = num_tokens
