"""Undo a failed forward's changes to a cache, so the requests sharing it can be retried alone.

A batched decode forward that raises may already have updated some layers. `CacheSnapshot.take`
records what a restore needs, per layer object, without copying per-token K/V:

- full-attention K/V (`keys`, `values` of a layer without a sliding window): only their token
  count. The dynamic layer appends with `torch.cat`, so the old tensor is the new one's prefix
  and a restore narrows back to it; holding the old tensors instead would keep a second copy of
  the batch's K/V alive for the whole forward.
- sliding-window K/V: a reference. The update replaces the tensor (and may drop its oldest
  token), and the old one is at most a window long.
- every other tensor (conv and recurrent states, MiniMax's `linear_cache`, tensor counters): a
  clone, because models update those in place.
- everything else (flags, counters, dicts of them): a copy, one level deep.

So a snapshot costs one copy of the batch's fixed-size state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_KV_ATTRS = frozenset({"keys", "values"})  # [batch, heads, num_tokens, head_dim]
_TOKEN_AXIS = -2


@dataclass(frozen=True)
class _TokenPrefix:
    """Appended-to K/V: restored as the first `num_tokens` tokens of whatever the layer holds."""

    num_tokens: int

    def restored(self, current: Any) -> torch.Tensor:
        if not isinstance(current, torch.Tensor) or current.shape[_TOKEN_AXIS] < self.num_tokens:
            raise RuntimeError("cache K/V shrank during a forward; cannot roll it back")
        return current.narrow(_TOKEN_AXIS, 0, self.num_tokens)


def _saved(value: Any) -> Any:
    """A value that stays as it is now: tensors cloned, containers copied."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _saved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_saved(v) for v in value]
    return value


def _saved_layer(layer: Any) -> dict[str, Any]:
    is_sliding = hasattr(layer, "sliding_window")
    saved: dict[str, Any] = {}
    for attr, value in vars(layer).items():
        if attr in _KV_ATTRS and isinstance(value, torch.Tensor):
            saved[attr] = value if is_sliding else _TokenPrefix(int(value.shape[_TOKEN_AXIS]))
        else:
            saved[attr] = _saved(value)
    return saved


@dataclass
class CacheSnapshot:
    """A cache's state at one moment: enough to undo a forward that raised."""

    cache: Any
    num_layers: int
    layer_attrs: list[dict[str, Any]]  # per layer object: attribute -> saved value
    linear_cache: list[Any] | None  # MiniMax's cache-level linear attention state

    @classmethod
    def take(cls, cache: Any) -> CacheSnapshot:
        linear = getattr(cache, "linear_cache", None)
        return cls(
            cache,
            len(cache.layers),
            [_saved_layer(layer) for layer in cache.layers],
            None if linear is None else _saved(linear),
        )

    def restore(self) -> None:
        """Put the cache back as it was when the snapshot was taken."""
        del self.cache.layers[self.num_layers :]  # lazily built caches may have grown
        for layer, saved in zip(self.cache.layers, self.layer_attrs, strict=True):
            current = dict(vars(layer))
            vars(layer).clear()
            for attr, value in saved.items():
                is_prefix = isinstance(value, _TokenPrefix)
                setattr(layer, attr, value.restored(current.get(attr)) if is_prefix else value)
        if self.linear_cache is not None:
            self.cache.linear_cache = self.linear_cache
