"""Hugging Face config.json -> ModelSpec: the public `spec_from_config`.

Picks the language-model part of a config (`text_config` of a VLM wrapper), lays out its
layers with the family builder (`families.py`), counts parameters and weight bytes
(`params.py`) and assembles the `ModelSpec`. Knows nothing about files or presets (see
`presets.py`); every malformed or unsupported config raises `UserError` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from prfaas.errors import UserError
from prfaas.models.config_access import Config, get_int, normalize_model_type
from prfaas.models.families import builder_for
from prfaas.models.ffn import experts_per_token, num_routed_experts
from prfaas.models.params import (
    activation_dtype,
    param_counts,
    recurrent_state_dtype,
    weight_bytes_per_param,
)
from prfaas.models.spec import ModelSpec


def text_config(cfg: Config) -> Config:
    """The language-model part of a config: `text_config` of a VLM wrapper, else the config."""
    inner = cfg.get("text_config")
    if isinstance(inner, Mapping):
        merged = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}
        merged.update(inner)
        return merged
    return cfg


def spec_from_config(
    config: Config, *, name: str, source: str = "", provenance: str = ""
) -> ModelSpec:
    """Build a ModelSpec from a parsed HF config (a VLM wrapper's `text_config` is used)."""
    if not isinstance(config, Mapping):
        raise UserError("a model config must be a JSON object")
    top_type = normalize_model_type(config.get("model_type", ""))
    if not top_type:
        raise UserError("config has no 'model_type'")
    cfg = text_config(config)
    builder = builder_for(cfg, top_type)
    try:
        built = builder(cfg)
        if not built:
            raise UserError("config describes a model with no layers")
        params = param_counts(cfg, built, top_type)
        weight_bytes = weight_bytes_per_param(cfg, params.routed_total, params.total)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        raise UserError(f"malformed {top_type!r} config: {type(exc).__name__}: {exc}") from exc
    experts, top_k = num_routed_experts(cfg), experts_per_token(cfg)
    return ModelSpec(
        name=name,
        model_type=top_type,
        num_layers=len(built),
        layers=tuple(layer.spec for layer in built),
        hidden_size=get_int(cfg, "hidden_size"),
        vocab_size=get_int(cfg, "vocab_size", 0),
        num_total_params=params.total,
        num_active_params=params.active,
        num_embedding_params=params.embedding,
        num_routed_expert_params=params.routed_total,
        num_experts=experts if params.routed_total else 0,
        num_experts_per_tok=top_k if params.routed_total else 0,
        weight_bytes_per_param=weight_bytes,
        activation_dtype=activation_dtype(cfg),
        recurrent_state_dtype=recurrent_state_dtype(cfg),
        max_position_embeddings=get_int(cfg, "max_position_embeddings", 0) or None,
        source=source,
        provenance=provenance or str(config.get("_provenance", "")),
    )
