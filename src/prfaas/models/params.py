"""Parameter counts, stored bytes per weight and the activation / recurrent-state dtypes.

Counts are summed from the built layers plus the embeddings; a config that states
`total_params` / `activated_params` itself (the reconstructed and inferred ones) overrides
them. Bytes per weight follow `quantization_config` (MXFP4, compressed-tensors, FP8).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.models.config_access import Config, get_int
from prfaas.models.families import BuiltLayer
from prfaas.models.ffn import experts_per_token, num_routed_experts
from prfaas.types import dtype_bytes

MXFP4_BYTES_PER_PARAM = 4.25 / 8  # 4-bit values + one 8-bit scale per 32 values
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_param_count(value: object) -> int:
    """`1e12`, `"1T"`, `"~63B"`, `"309B"` -> an integer parameter count."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"~?\s*([0-9.]+)\s*([KMBT]?)", str(value).strip(), flags=re.IGNORECASE)
    if not match:
        raise UserError(f"cannot read a parameter count from {value!r}")
    return int(float(match.group(1)) * _SCALE[match.group(2).upper()])


def weight_bytes_per_param(cfg: Config, routed: int, total: int) -> float:
    """Average stored bytes per weight from `quantization_config` (activation dtype if absent).

    MXFP4 and compressed-tensors integer formats quantize the routed experts only (the rest
    stays bf16), as in gpt-oss, Kimi K2-Thinking and Kimi K3; FP8 block quantization covers
    every linear layer.
    """
    quant = cfg.get("quantization_config")
    if not isinstance(quant, Mapping):
        return float(dtype_bytes(activation_dtype(cfg)))
    method = str(quant.get("quant_method", "")).lower()
    fmt = str(quant.get("format", quant.get("fmt", ""))).lower()
    expert_bytes = _expert_bytes_per_param(method, fmt, quant)
    if expert_bytes is not None:
        return (routed * expert_bytes + (total - routed) * 2.0) / max(total, 1)
    if method == "fp8" or "e4m3" in fmt:
        return 1.0
    return float(dtype_bytes(activation_dtype(cfg)))


def _expert_bytes_per_param(method: str, fmt: str, quant: Config) -> float | None:
    if "mxfp4" in method or "mxfp4" in fmt:
        return MXFP4_BYTES_PER_PARAM
    if method != "compressed-tensors":
        return None
    groups = quant.get("config_groups")
    first = next(iter(groups.values()), None) if isinstance(groups, Mapping) else None
    weights = first.get("weights") if isinstance(first, Mapping) else None
    if not isinstance(weights, Mapping) or not isinstance(weights.get("num_bits"), int):
        return None
    group_size = weights.get("group_size")
    scale_bytes = 2 / group_size if isinstance(group_size, int) and group_size > 0 else 0.0
    return float(weights["num_bits"]) / 8 + scale_bytes  # one bf16 scale per group


def activation_dtype(cfg: Config) -> str:
    value = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    try:
        dtype_bytes(value)
    except ValueError as exc:
        raise UserError(f"config dtype {value!r} is not a known dtype") from exc
    return value.removeprefix("torch.")


def recurrent_state_dtype(cfg: Config) -> str:
    value = cfg.get("mamba_ssm_dtype") or cfg.get("mamba_ssm_cache_dtype") or "float32"
    try:
        dtype_bytes(str(value))
    except ValueError as exc:
        raise UserError(f"config SSM state dtype {value!r} is not a known dtype") from exc
    return str(value).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Total, active, embedding and routed-expert parameter counts of one model."""

    total: int
    active: int
    embedding: int
    routed_total: int


def param_counts(cfg: Config, built: list[BuiltLayer], top_type: str) -> ParamCounts:
    """Counts from the shapes, or the config's own `total_params` / `activated_params`."""
    tied = bool(cfg.get("tie_word_embeddings", top_type.startswith("gemma")))
    embedding = get_int(cfg, "vocab_size", 0) * get_int(cfg, "hidden_size") * (1 if tied else 2)
    shared = sum(layer.mixer_params + layer.ffn.dense for layer in built)
    routed_total = sum(layer.ffn.routed_total for layer in built)
    routed_active = sum(layer.ffn.routed_active for layer in built)
    total, active = embedding + shared + routed_total, embedding + shared + routed_active
    if cfg.get("total_params") is None:
        return ParamCounts(total, active, embedding, routed_total)
    total = parse_param_count(cfg["total_params"])
    active = parse_param_count(cfg.get("activated_params", total))
    if not 0 < active <= total:
        raise UserError(f"activated_params ({active}) must be in (0, total_params = {total}]")
    experts, top_k = num_routed_experts(cfg), experts_per_token(cfg)
    if experts > top_k > 0:  # total - active = routed * (1 - top_k / experts)
        routed_total = round((total - active) * experts / (experts - top_k))
    elif routed_total == 0:
        routed_total = total - active
    return ParamCounts(total, active, embedding, min(routed_total, total))
