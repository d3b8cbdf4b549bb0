"""What a model's per-request cache looks like: fresh caches, layer kinds, decoder layer modules.

Everything here reads the transformers model and config so the rest of the engine can stay
architecture-agnostic: `new_cache` builds the cache the model itself would build (from its config,
or MiniMax's own cache class), `layer_kinds` names each decoder layer's state with a
`prfaas.types.LayerKind`, and `decoder_layers` returns the modules the layer callback hooks.
"""

from __future__ import annotations

from typing import Any

from transformers import DynamicCache

from prfaas.types import LayerKind

MAMBA_ARCHS = frozenset({"jamba", "bamba", "nemotron_h", "falcon_h1", "granitemoehybrid", "zamba2"})
SHORT_CONV_ARCHS = frozenset({"lfm2", "lfm2_moe"})
MINIMAX_ARCHS = frozenset({"minimax"})

_KIND_BY_LAYER_TYPE: dict[str, LayerKind] = {
    "full_attention": LayerKind.FULL_ATTENTION,
    "attention": LayerKind.FULL_ATTENTION,
    "*": LayerKind.FULL_ATTENTION,
    "sliding_attention": LayerKind.SLIDING_WINDOW,
    "linear_attention": LayerKind.LINEAR_ATTENTION,
    "mamba": LayerKind.MAMBA,
    "M": LayerKind.MAMBA,
    "conv": LayerKind.SHORT_CONV,
    "hybrid": LayerKind.MAMBA,
    "moe": LayerKind.MLP_ONLY,
    "mlp": LayerKind.MLP_ONLY,
    "E": LayerKind.MLP_ONLY,
    "-": LayerKind.MLP_ONLY,
}


def new_cache(model: Any) -> Any:
    """An empty cache of the class and layer layout the model would build for itself."""
    if model.config.model_type in MINIMAX_ARCHS:
        from transformers.models.minimax.modeling_minimax import MiniMaxCache

        cache_class: Any = MiniMaxCache  # untyped in transformers
        return cache_class()
    return DynamicCache(config=model.config)


def layer_kinds(config: Any) -> list[LayerKind]:
    """The LayerKind of every decoder layer, from the config's layer pattern."""
    num_layers = int(config.num_hidden_layers)
    names = getattr(config, "layer_types", None) or ["full_attention"] * num_layers
    kinds = [_KIND_BY_LAYER_TYPE.get(str(n), LayerKind.FULL_ATTENTION) for n in names]
    arch = str(config.model_type)
    is_mla = getattr(config, "kv_lora_rank", None) is not None
    return [_refine(kind, arch, is_mla) for kind in kinds]


def _refine(kind: LayerKind, arch: str, is_mla: bool) -> LayerKind:
    if kind == LayerKind.FULL_ATTENTION and is_mla:
        return LayerKind.MLA
    if kind == LayerKind.LINEAR_ATTENTION and arch in MAMBA_ARCHS:
        return LayerKind.MAMBA
    if kind == LayerKind.LINEAR_ATTENTION and arch in SHORT_CONV_ARCHS:
        return LayerKind.SHORT_CONV
    return kind


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layer modules, in order (the per-layer callback hooks these)."""
    return list(model.model.layers)
