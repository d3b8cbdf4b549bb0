"""Per-family layer layouts: which mixer and which MLP/MoE each layer of a `model_type` has.

One small builder per family of `model_type`s, the `model_type` -> builder table and
`known_model_types()`. Builders return `BuiltLayer`s (spec plus parameter counts); an
unsupported type or a malformed layout raises `UserError` with a one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.models.config_access import (
    Config,
    first_int,
    get_int,
    normalize_model_type,
    require,
    resolve_head_dim,
)
from prfaas.models.ffn import Ffn, ffn_params, num_routed_experts
from prfaas.models.mixers import (
    gated_deltanet,
    gqa,
    kda,
    lightning,
    mamba1,
    mamba2,
    mla,
    short_conv,
)
from prfaas.models.spec import LayerSpec
from prfaas.types import LayerKind


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    """One layer as laid out: its spec, token-mixer parameters and MLP/MoE parameters."""

    spec: LayerSpec
    mixer_params: int  # token mixer: attention, linear attention, SSM or conv
    ffn: Ffn


def _layer(pair: tuple[LayerSpec, int], ffn: Ffn) -> BuiltLayer:
    spec, params = pair
    if ffn.is_moe:
        spec = _with_moe(spec)
    return BuiltLayer(spec, params, ffn)


def _with_moe(spec: LayerSpec) -> LayerSpec:
    fields = {name: getattr(spec, name) for name in LayerSpec.__dataclass_fields__}
    fields["is_moe"] = True
    return LayerSpec(**fields)


def _layer_types(cfg: Config) -> list[str] | None:
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != get_int(cfg, "num_hidden_layers"):
        raise UserError("config 'layer_types' must list one type per hidden layer")
    return [str(t) for t in types]


_SLIDING_NAMES = {"sliding_attention", "sliding_window", "local_attention", "local"}


def _build_attention_only(cfg: Config) -> list[BuiltLayer]:
    """Llama, Qwen2/3(-MoE), Mixtral, MiniMax-M2, gpt-oss, Gemma 2/3: GQA, some layers SWA."""
    num = get_int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None and cfg.get("sliding_window_pattern") and cfg.get("sliding_window"):
        pattern = get_int(cfg, "sliding_window_pattern")
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num)
        ]
    if types is None and str(cfg.get("model_type", "")).startswith("gemma2"):
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num)]
    layers = []
    for i in range(num):
        sliding = types is not None and types[i] in _SLIDING_NAMES
        window = get_int(cfg, "sliding_window") if sliding else 0
        layers.append(_layer(gqa(cfg, i, window=window), ffn_params(cfg, i)))
    return layers


def _build_mimo(cfg: Config) -> list[BuiltLayer]:
    """MiMo-V2-Flash: `hybrid_layer_pattern` 0 = full GQA, 1 = SWA with its own head shapes."""
    pattern = require(cfg, "hybrid_layer_pattern")
    if len(pattern) != get_int(cfg, "num_hidden_layers"):
        raise UserError("hybrid_layer_pattern must have one entry per hidden layer")
    window = first_int(cfg, ("sliding_window_size", "sliding_window"))
    layers = []
    for i, code in enumerate(pattern):
        if code == 0:
            pair = gqa(cfg, i, head_dim_v=get_int(cfg, "v_head_dim", resolve_head_dim(cfg)))
        else:
            pair = gqa(
                cfg,
                i,
                window=window,
                num_q_heads=get_int(
                    cfg, "swa_num_attention_heads", get_int(cfg, "num_attention_heads")
                ),
                num_kv_heads=get_int(cfg, "swa_num_key_value_heads"),
                head_dim_k=get_int(cfg, "swa_head_dim", resolve_head_dim(cfg)),
                head_dim_v=get_int(
                    cfg, "swa_v_head_dim", get_int(cfg, "v_head_dim", resolve_head_dim(cfg))
                ),
            )
        layers.append(_layer(pair, ffn_params(cfg, i)))
    return layers


def _build_qwen_linear(cfg: Config) -> list[BuiltLayer]:
    """Qwen3-Next / Qwen3.5: Gated DeltaNet + output-gated GQA (`layer_types` or interval)."""
    num = get_int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None:
        interval = get_int(cfg, "full_attention_interval")
        types = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num)
        ]
    gated = bool(cfg.get("attn_output_gate", True))
    layers = []
    for i, kind in enumerate(types):
        if kind == "full_attention":
            pair = gqa(cfg, i, gated=gated)
        elif kind == "linear_attention":
            pair = gated_deltanet(cfg, i)
        else:
            raise UserError(f"unknown layer type {kind!r} in layer_types")
        layers.append(_layer(pair, ffn_params(cfg, i)))
    return layers


def _build_kimi_linear(cfg: Config) -> list[BuiltLayer]:
    """Kimi Linear / Kimi K3: `linear_attn_config` lists 1-based KDA and MLA (full) layers."""
    lin = require(cfg, "linear_attn_config")
    num = get_int(cfg, "num_hidden_layers")
    full_layers = {int(i) - 1 for i in lin.get("full_attn_layers") or ()}
    kda_layers = {int(i) - 1 for i in lin.get("kda_layers") or ()}
    if full_layers & kda_layers or full_layers | kda_layers != set(range(num)):
        raise UserError("linear_attn_config must assign every layer to exactly one of kda/full")
    gated = bool(cfg.get("mla_use_output_gate", False))
    layers = []
    for i in range(num):
        pair = mla(cfg, i, gated=gated) if i in full_layers else kda(cfg, i, lin)
        layers.append(_layer(pair, ffn_params(cfg, i)))
    return layers


def _build_mla(cfg: Config) -> list[BuiltLayer]:
    """DeepSeek-V2/V3, Kimi K2: MLA in every layer (MTP layers not counted)."""
    return [
        _layer(mla(cfg, i), ffn_params(cfg, i)) for i in range(get_int(cfg, "num_hidden_layers"))
    ]


def _build_minimax(cfg: Config) -> list[BuiltLayer]:
    """MiniMax-Text-01 / M1: lightning linear attention with a softmax GQA layer every few."""
    num = get_int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None:
        flags = require(cfg, "attn_type_list")
        types = ["full_attention" if f else "linear_attention" for f in flags]
    layers = []
    for i, kind in enumerate(types[:num]):
        pair = gqa(cfg, i) if kind == "full_attention" else lightning(cfg, i)
        layers.append(_layer(pair, ffn_params(cfg, i)))
    return layers


def _build_nemotron_h(cfg: Config) -> list[BuiltLayer]:
    """Nemotron-H: one block per character of `hybrid_override_pattern`.

    M = Mamba2, * = attention, - = dense MLP, E = MoE (both MLP_ONLY: no state).
    """
    pattern = str(require(cfg, "hybrid_override_pattern"))
    if len(pattern) != get_int(cfg, "num_hidden_layers"):
        raise UserError("hybrid_override_pattern must have one character per hidden layer")
    layers = []
    for i, char in enumerate(pattern):
        if char == "M":
            layers.append(_layer(mamba2(cfg, i), Ffn()))
        elif char == "*":
            layers.append(_layer(gqa(cfg, i), Ffn()))
        elif char in "-E":
            spec = LayerSpec(i, LayerKind.MLP_ONLY)
            layers.append(_layer((spec, 0), ffn_params(cfg, i, moe=char == "E")))
        else:
            raise UserError(f"unknown block {char!r} in hybrid_override_pattern")
    return layers


def _build_bailing_linear(cfg: Config) -> list[BuiltLayer]:
    """Ring/Ling linear hybrids: every `layer_group_size`-th layer is softmax (MLA when the
    config has `kv_lora_rank`, else GQA); the rest are lightning linear attention."""
    num, group = get_int(cfg, "num_hidden_layers"), get_int(cfg, "layer_group_size")
    use_mla = cfg.get("kv_lora_rank") is not None
    layers = []
    for i in range(num):
        if (i + 1) % group == 0:
            pair = mla(cfg, i) if use_mla else gqa(cfg, i)
        else:
            pair = lightning(cfg, i)
        layers.append(_layer(pair, ffn_params(cfg, i)))
    return layers


def _build_jamba(cfg: Config) -> list[BuiltLayer]:
    """Jamba: attention at `attn_layer_offset` every `attn_layer_period` layers, Mamba1 else."""
    hidden = get_int(cfg, "hidden_size")
    period, offset = get_int(cfg, "attn_layer_period"), get_int(cfg, "attn_layer_offset")
    e_period, e_offset = (
        get_int(cfg, "expert_layer_period", 1),
        get_int(cfg, "expert_layer_offset", 0),
    )
    inner = get_int(cfg, "mamba_expand") * hidden
    dt_rank = _dt_rank(cfg.get("mamba_dt_rank", "auto"), hidden)
    layers = []
    for i in range(get_int(cfg, "num_hidden_layers")):
        if i % period == offset:
            pair = gqa(cfg, i)
        else:
            d_state, kernel = get_int(cfg, "mamba_d_state"), get_int(cfg, "mamba_d_conv")
            pair = mamba1(cfg, i, inner=inner, d_state=d_state, kernel=kernel, dt_rank=dt_rank)
        moe = num_routed_experts(cfg) > 1 and i % e_period == e_offset
        layers.append(_layer(pair, ffn_params(cfg, i, moe=moe)))
    return layers


def _build_mamba(cfg: Config) -> list[BuiltLayer]:
    """Mamba / Falcon-Mamba: Mamba1 blocks only, no MLP."""
    hidden = get_int(cfg, "hidden_size")
    inner = get_int(cfg, "intermediate_size", get_int(cfg, "expand", 2) * hidden)
    dt_rank = _dt_rank(cfg.get("time_step_rank", "auto"), hidden)
    d_state, kernel = get_int(cfg, "state_size"), get_int(cfg, "conv_kernel")
    return [
        _layer(mamba1(cfg, i, inner=inner, d_state=d_state, kernel=kernel, dt_rank=dt_rank), Ffn())
        for i in range(get_int(cfg, "num_hidden_layers"))
    ]


def _build_lfm2(cfg: Config) -> list[BuiltLayer]:
    """LFM2: `layer_types` "conv" (short conv) or "full_attention" (GQA)."""
    types = _layer_types(cfg)
    if types is None:
        full = set(require(cfg, "full_attn_idxs"))
        types = [
            "full_attention" if i in full else "conv"
            for i in range(get_int(cfg, "num_hidden_layers"))
        ]
    inter = first_int(cfg, ("block_ff_dim", "intermediate_size"))
    hidden = get_int(cfg, "hidden_size")
    layers = []
    for i, kind in enumerate(types):
        pair = gqa(cfg, i) if kind == "full_attention" else short_conv(cfg, i)
        layers.append(_layer(pair, Ffn(dense=3 * hidden * inter)))
    return layers


def _dt_rank(value: object, hidden: int) -> int:
    if value in (None, "auto"):
        return math.ceil(hidden / 16)
    if not isinstance(value, int):
        raise UserError(f"time-step rank must be an integer or 'auto', got {value!r}")
    return value


_BUILDERS: dict[str, Callable[[Config], list[BuiltLayer]]] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "minimax_m2",
            "gpt_oss",
            "gemma2",
            "gemma3",
            "gemma3_text",
        ),
        _build_attention_only,
    ),
    "mimo_v2_flash": _build_mimo,
    **dict.fromkeys(
        ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"),
        _build_qwen_linear,
    ),
    "kimi_linear": _build_kimi_linear,
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "kimi_k2"), _build_mla),
    "minimax": _build_minimax,
    "nemotron_h": _build_nemotron_h,
    **dict.fromkeys(
        ("bailing_moe_v2_5", "bailing_moe_linear", "bailing_hybrid"), _build_bailing_linear
    ),
    "jamba": _build_jamba,
    **dict.fromkeys(("mamba", "falcon_mamba"), _build_mamba),
    "lfm2": _build_lfm2,
}


def known_model_types() -> list[str]:
    """Every `model_type` (top-level or of `text_config`) this module can read."""
    return sorted(_BUILDERS)


def builder_for(cfg: Config, top_type: str) -> Callable[[Config], list[BuiltLayer]]:
    """The builder for the text `model_type` (a VLM's `text_config`), else the top-level one."""
    text_type = normalize_model_type(cfg.get("model_type", top_type))
    for candidate in (text_type, top_type):
        if candidate in _BUILDERS:
            return _BUILDERS[candidate]
    raise UserError(
        f"unsupported model_type {top_type!r}"
        + (f" (text model_type {text_type!r})" if text_type != top_type else "")
        + f"; known: {', '.join(known_model_types())}"
    )
