"""Reading values out of a Hugging Face config.json mapping, with one-line `UserError`s.

Owns the `Config` type, required / integer / first-present key lookups, the attention head
dimension rule and the normalisation of annotated `model_type` strings. Every other module in
`prfaas.models` reads config values through these helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prfaas.errors import UserError

Config = Mapping[str, Any]


def require(cfg: Config, key: str) -> Any:
    value = cfg.get(key)
    if value is None:
        kind = cfg.get("model_type", "?")
        raise UserError(f"config (model_type {kind!r}) lacks required key {key!r}")
    return value


def get_int(cfg: Config, key: str, default: int | None = None) -> int:
    value = cfg.get(key)
    if value is None:
        if default is None:
            return int(require(cfg, key))
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise UserError(f"config key {key!r} must be a number >= 0, got {value!r}")
    return int(value)


def first_int(cfg: Config, keys: Sequence[str], default: int = 0) -> int:
    for key in keys:
        if cfg.get(key) is not None:
            return get_int(cfg, key)
    return default


def resolve_head_dim(cfg: Config) -> int:
    explicit = first_int(cfg, ("head_dim", "attention_head_dim"))
    return explicit or get_int(cfg, "hidden_size") // get_int(cfg, "num_attention_heads")


def normalize_model_type(value: object) -> str:
    """ "bailing_moe_v2_5 (assumed)" -> "bailing_moe_v2_5": annotations in reconstructed files."""
    return str(value).split(" (", 1)[0].strip()
