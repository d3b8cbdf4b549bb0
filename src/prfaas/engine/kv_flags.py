"""A cache layer's manifest flags and tensor names: written by export, read by checks and import.

Every JSON-able attribute of a cache layer object (flags such as `has_previous_state`,
`cumulative_length`, `sliding_window`) travels in the layer's `flags` (`encode_flag`: dtypes and
int-keyed dicts tagged so that `decode_flag` restores them). A tensor's name says whether it is
attention K/V with a token axis (`is_token_axis`); a layer's flags give its sliding window
(`sliding_window`).
"""

from __future__ import annotations

from typing import Any

import torch

from prfaas.messages import JSONDict

_INT_KEYS = "__int_keys__"
_DTYPE = "__dtype__"
_TOKEN_AXIS_TENSORS = ("keys", "values")  # [batch, heads, num_tokens, head_dim]
_WINDOW_ATTR = "sliding_window"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_flag(attr: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.dtype):
        return {_DTYPE: dtype_name(value)}
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        return {_INT_KEYS: [[k, encode_flag(attr, v)] for k, v in value.items()]}
    raise TypeError(f"cache attribute {attr!r} of type {type(value).__name__} cannot travel")


def decode_flag(value: Any) -> Any:
    if isinstance(value, dict) and _INT_KEYS in value:
        return {int(k): decode_flag(v) for k, v in value[_INT_KEYS]}
    if isinstance(value, dict) and _DTYPE in value:
        return getattr(torch, value[_DTYPE])
    return value


def is_token_axis(name: str) -> bool:
    """Whether tensor `name` is K/V, [batch, heads, num_tokens, dim]."""
    return name.rsplit("/", 1)[-1] in _TOKEN_AXIS_TENSORS


def sliding_window(flags: JSONDict) -> int | None:
    """The sliding window (tokens) of a layer with these manifest `flags`; None without one."""
    window = flags.get("attrs", {}).get(_WINDOW_ATTR)
    return window if isinstance(window, int) else None
