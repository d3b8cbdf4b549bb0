"""Hugging Face config.json -> ModelSpec: layer kinds, state dims and parameter counts per family.

One small builder per family of `model_type`s. Knows nothing about files or presets (see
`presets.py`); every malformed or unsupported config raises `UserError` with a one-line reason.
Parameter counts are computed from the projection shapes (norms and biases ignored, well under
0.1% of any model here); a config that states `total_params` / `activated_params` itself (the
reconstructed and inferred ones) overrides them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prfaas.errors import UserError
from prfaas.models.spec import LayerSpec, ModelSpec
from prfaas.types import LayerKind, dtype_bytes

Config = Mapping[str, Any]
MXFP4_BYTES_PER_PARAM = 4.25 / 8  # 4-bit values + one 8-bit scale per 32 values


@dataclass(frozen=True, slots=True)
class _Ffn:
    """Parameter counts of one layer's MLP / MoE block."""

    dense: int = 0  # always-active weights (dense MLP, shared experts, router)
    routed_total: int = 0  # all routed experts
    routed_active: int = 0  # routed experts one token uses

    @property
    def is_moe(self) -> bool:
        return self.routed_total > 0


@dataclass(frozen=True, slots=True)
class _Layer:
    spec: LayerSpec
    mixer_params: int  # token mixer: attention, linear attention, SSM or conv
    ffn: _Ffn


# ---------------------------------------------------------------------------- config access


def _req(cfg: Config, key: str) -> Any:
    value = cfg.get(key)
    if value is None:
        kind = cfg.get("model_type", "?")
        raise UserError(f"config (model_type {kind!r}) lacks required key {key!r}")
    return value


def _int(cfg: Config, key: str, default: int | None = None) -> int:
    value = cfg.get(key)
    if value is None:
        if default is None:
            return int(_req(cfg, key))
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise UserError(f"config key {key!r} must be a number >= 0, got {value!r}")
    return int(value)


def _first_int(cfg: Config, keys: Sequence[str], default: int = 0) -> int:
    for key in keys:
        if cfg.get(key) is not None:
            return _int(cfg, key)
    return default


def _head_dim(cfg: Config) -> int:
    explicit = _first_int(cfg, ("head_dim", "attention_head_dim"))
    return explicit or _int(cfg, "hidden_size") // _int(cfg, "num_attention_heads")


# ---------------------------------------------------------------------------- token mixers


def _gqa(
    cfg: Config,
    index: int,
    *,
    window: int = 0,
    num_q_heads: int | None = None,
    num_kv_heads: int | None = None,
    head_dim_k: int | None = None,
    head_dim_v: int | None = None,
    gated: bool = False,
) -> tuple[LayerSpec, int]:
    """Full or sliding-window GQA/MHA; params = q (x2 when output-gated) + k + v + o."""
    hidden = _int(cfg, "hidden_size")
    n_q = num_q_heads or _int(cfg, "num_attention_heads")
    n_kv = num_kv_heads or _int(cfg, "num_key_value_heads", n_q)
    dk = head_dim_k or _head_dim(cfg)
    dv = head_dim_v or dk
    kind = LayerKind.SLIDING_WINDOW if window else LayerKind.FULL_ATTENTION
    spec = LayerSpec(
        index, kind, num_q_heads=n_q, num_kv_heads=n_kv, head_dim_k=dk, head_dim_v=dv, window=window
    )
    params = hidden * n_q * dk * (2 if gated else 1) + hidden * n_kv * (dk + dv) + n_q * dv * hidden
    return spec, params


def _mla(cfg: Config, index: int, *, gated: bool = False) -> tuple[LayerSpec, int]:
    """DeepSeek-style MLA. Caches kv_lora_rank + qk_rope_head_dim values per token."""
    hidden = _int(cfg, "hidden_size")
    n = _int(cfg, "num_attention_heads")
    kv_lora = _int(cfg, "kv_lora_rank")
    rope = _int(cfg, "qk_rope_head_dim")
    nope = _int(cfg, "qk_nope_head_dim")
    dv = _int(cfg, "v_head_dim")
    q_lora = _int(cfg, "q_lora_rank", 0)
    q_params = (
        hidden * q_lora + q_lora * n * (nope + rope) if q_lora else hidden * n * (nope + rope)
    )
    kv_params = hidden * (kv_lora + rope) + kv_lora * n * (nope + dv)
    params = q_params + kv_params + n * dv * hidden + (hidden * n * dv if gated else 0)
    spec = LayerSpec(
        index,
        LayerKind.MLA,
        num_q_heads=n,
        head_dim_k=nope + rope,
        head_dim_v=dv,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
    )
    return spec, params


def _gated_deltanet(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Qwen3-Next / Qwen3.5 Gated DeltaNet: state Hv x dk x dv, conv over q, k and v."""
    hidden = _int(cfg, "hidden_size")
    hk, hv = _int(cfg, "linear_num_key_heads"), _int(cfg, "linear_num_value_heads")
    dk, dv = _int(cfg, "linear_key_head_dim"), _int(cfg, "linear_value_head_dim")
    kernel = _int(cfg, "linear_conv_kernel_dim")
    channels = 2 * hk * dk + hv * dv
    spec = LayerSpec(
        index,
        LayerKind.LINEAR_ATTENTION,
        num_state_heads=hv,
        state_key_dim=dk,
        state_value_dim=dv,
        conv_channels=channels,
        conv_kernel=kernel,
    )
    params = hidden * (2 * hk * dk + 2 * hv * dv) + hidden * 2 * hv + channels * kernel
    return spec, params + hv * dv * hidden


def _kda(cfg: Config, index: int, lin: Config) -> tuple[LayerSpec, int]:
    """Kimi Delta Attention: state H x d x d, short convs on q, k, v; low-rank gates."""
    hidden = _int(cfg, "hidden_size")
    heads, dim = _int(lin, "num_heads"), _int(lin, "head_dim")
    kernel = _int(lin, "short_conv_kernel_size")
    width = heads * dim
    spec = LayerSpec(
        index,
        LayerKind.LINEAR_ATTENTION,
        num_state_heads=heads,
        state_key_dim=dim,
        state_value_dim=dim,
        conv_channels=3 * width,
        conv_kernel=kernel,
    )
    low_rank_gates = 2 * (hidden * dim + dim * width)  # decay gate f and output gate g
    params = 3 * hidden * width + 3 * width * kernel + low_rank_gates + hidden * heads
    return spec, params + width * hidden


def _lightning(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Lightning linear attention (MiniMax-01, Ring/Ling linear): state H x d x d, no conv."""
    hidden = _int(cfg, "hidden_size")
    heads, dim = _int(cfg, "num_attention_heads"), _head_dim(cfg)
    width = heads * dim
    spec = LayerSpec(
        index,
        LayerKind.LINEAR_ATTENTION,
        num_state_heads=heads,
        state_key_dim=dim,
        state_value_dim=dim,
    )
    return spec, 3 * hidden * width + hidden * width + width * hidden


def _mamba2(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Mamba2 (SSD): state heads x head_dim x d_state, conv over x, B and C."""
    hidden = _int(cfg, "hidden_size")
    heads, head_dim = _int(cfg, "mamba_num_heads"), _int(cfg, "mamba_head_dim")
    d_state, groups = _int(cfg, "ssm_state_size"), _int(cfg, "n_groups", 1)
    kernel = _int(cfg, "conv_kernel")
    inner = heads * head_dim
    channels = inner + 2 * groups * d_state
    spec = LayerSpec(
        index,
        LayerKind.MAMBA,
        num_state_heads=heads,
        state_key_dim=d_state,
        state_value_dim=head_dim,
        conv_channels=channels,
        conv_kernel=kernel,
    )
    params = hidden * (inner + channels + heads) + channels * kernel + inner * hidden
    return spec, params


def _mamba1(
    cfg: Config, index: int, *, inner: int, d_state: int, kernel: int, dt_rank: int
) -> tuple[LayerSpec, int]:
    """Mamba1 selective scan: state inner x d_state, conv over the inner channels."""
    hidden = _int(cfg, "hidden_size")
    spec = LayerSpec(
        index,
        LayerKind.MAMBA,
        num_state_heads=1,
        state_key_dim=d_state,
        state_value_dim=inner,
        conv_channels=inner,
        conv_kernel=kernel,
    )
    params = hidden * 2 * inner + inner * kernel + inner * (dt_rank + 2 * d_state)
    params += dt_rank * inner + inner * d_state + inner * hidden
    return spec, params


def _short_conv(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """LFM2 gated short convolution over the hidden channels: conv state only."""
    hidden = _int(cfg, "hidden_size")
    kernel = _int(cfg, "conv_L_cache")
    spec = LayerSpec(index, LayerKind.SHORT_CONV, conv_channels=hidden, conv_kernel=kernel)
    return spec, hidden * 3 * hidden + hidden * kernel + hidden * hidden


# ---------------------------------------------------------------------------- MLP / MoE


def _num_routed_experts(cfg: Config) -> int:
    return _first_int(cfg, ("num_experts", "n_routed_experts", "num_local_experts"))


def _experts_per_token(cfg: Config) -> int:
    return _first_int(cfg, ("num_experts_per_tok", "num_experts_per_token", "experts_per_token"))


def _is_moe_layer(cfg: Config, index: int) -> bool:
    if not _num_routed_experts(cfg) or index in (cfg.get("mlp_only_layers") or ()):
        return False
    if index < _int(cfg, "first_k_dense_replace", 0):
        return False
    freq = cfg.get("moe_layer_freq")
    if isinstance(freq, list):
        return bool(freq[index])
    if isinstance(freq, int) and freq > 1:
        return index % freq == 0
    step = _int(cfg, "decoder_sparse_step", 1)
    return (index + 1) % step == 0


def _shared_expert_inter(cfg: Config) -> int:
    explicit = _first_int(
        cfg, ("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size")
    )
    if explicit:
        return explicit
    num_shared = _first_int(cfg, ("n_shared_experts", "num_shared_experts"))
    return num_shared * _int(cfg, "moe_intermediate_size", 0)


def _ffn(cfg: Config, index: int, *, moe: bool | None = None) -> _Ffn:
    """Dense MLP or MoE of one layer. `moe` forces the choice (pattern-driven families)."""
    hidden = _int(cfg, "hidden_size")
    mats = 2 if cfg.get("mlp_hidden_act") == "relu2" else 3  # relu2 MLPs have no gate matrix
    is_moe = _is_moe_layer(cfg, index) if moe is None else moe
    if not is_moe and cfg.get("intermediate_size") is None and cfg.get("total_params"):
        return _Ffn()  # a config that states its parameter counts instead of its MLP shapes
    if not is_moe:
        return _Ffn(dense=mats * hidden * _int(cfg, "intermediate_size"))
    experts, top_k = _num_routed_experts(cfg), _experts_per_token(cfg)
    if not experts or not top_k:
        raise UserError("MoE config lacks the number of experts or experts per token")
    expert_inter = _first_int(cfg, ("moe_intermediate_size", "intermediate_size"))
    latent = _first_int(cfg, ("moe_latent_size", "routed_expert_hidden_size"))
    width = latent or hidden
    per_expert = mats * width * expert_inter
    dense = hidden * experts + mats * hidden * _shared_expert_inter(cfg)
    if latent:
        dense += 2 * hidden * latent  # projections into and out of the expert latent space
    return _Ffn(dense=dense, routed_total=experts * per_expert, routed_active=top_k * per_expert)


# ---------------------------------------------------------------------------- families


def _layer(pair: tuple[LayerSpec, int], ffn: _Ffn) -> _Layer:
    spec, params = pair
    if ffn.is_moe:
        spec = _with_moe(spec)
    return _Layer(spec, params, ffn)


def _with_moe(spec: LayerSpec) -> LayerSpec:
    fields = {name: getattr(spec, name) for name in LayerSpec.__dataclass_fields__}
    fields["is_moe"] = True
    return LayerSpec(**fields)


def _layer_types(cfg: Config) -> list[str] | None:
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != _int(cfg, "num_hidden_layers"):
        raise UserError("config 'layer_types' must list one type per hidden layer")
    return [str(t) for t in types]


_SLIDING_NAMES = {"sliding_attention", "sliding_window", "local_attention", "local"}


def _build_attention_only(cfg: Config) -> list[_Layer]:
    """Llama, Qwen2/3(-MoE), Mixtral, MiniMax-M2, gpt-oss, Gemma 2/3: GQA, some layers SWA."""
    num = _int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None and cfg.get("sliding_window_pattern") and cfg.get("sliding_window"):
        pattern = _int(cfg, "sliding_window_pattern")
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num)
        ]
    if types is None and str(cfg.get("model_type", "")).startswith("gemma2"):
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num)]
    layers = []
    for i in range(num):
        sliding = types is not None and types[i] in _SLIDING_NAMES
        window = _int(cfg, "sliding_window") if sliding else 0
        layers.append(_layer(_gqa(cfg, i, window=window), _ffn(cfg, i)))
    return layers


def _build_mimo(cfg: Config) -> list[_Layer]:
    """MiMo-V2-Flash: `hybrid_layer_pattern` 0 = full GQA, 1 = SWA with its own head shapes."""
    pattern = _req(cfg, "hybrid_layer_pattern")
    if len(pattern) != _int(cfg, "num_hidden_layers"):
        raise UserError("hybrid_layer_pattern must have one entry per hidden layer")
    window = _first_int(cfg, ("sliding_window_size", "sliding_window"))
    layers = []
    for i, code in enumerate(pattern):
        if code == 0:
            pair = _gqa(cfg, i, head_dim_v=_int(cfg, "v_head_dim", _head_dim(cfg)))
        else:
            pair = _gqa(
                cfg,
                i,
                window=window,
                num_q_heads=_int(cfg, "swa_num_attention_heads", _int(cfg, "num_attention_heads")),
                num_kv_heads=_int(cfg, "swa_num_key_value_heads"),
                head_dim_k=_int(cfg, "swa_head_dim", _head_dim(cfg)),
                head_dim_v=_int(cfg, "swa_v_head_dim", _int(cfg, "v_head_dim", _head_dim(cfg))),
            )
        layers.append(_layer(pair, _ffn(cfg, i)))
    return layers


def _build_qwen_linear(cfg: Config) -> list[_Layer]:
    """Qwen3-Next / Qwen3.5: Gated DeltaNet + output-gated GQA (`layer_types` or interval)."""
    num = _int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None:
        interval = _int(cfg, "full_attention_interval")
        types = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num)
        ]
    gated = bool(cfg.get("attn_output_gate", True))
    layers = []
    for i, kind in enumerate(types):
        if kind == "full_attention":
            pair = _gqa(cfg, i, gated=gated)
        elif kind == "linear_attention":
            pair = _gated_deltanet(cfg, i)
        else:
            raise UserError(f"unknown layer type {kind!r} in layer_types")
        layers.append(_layer(pair, _ffn(cfg, i)))
    return layers


def _build_kimi_linear(cfg: Config) -> list[_Layer]:
    """Kimi Linear / Kimi K3: `linear_attn_config` lists 1-based KDA and MLA (full) layers."""
    lin = _req(cfg, "linear_attn_config")
    num = _int(cfg, "num_hidden_layers")
    full = {int(i) - 1 for i in lin.get("full_attn_layers") or ()}
    kda = {int(i) - 1 for i in lin.get("kda_layers") or ()}
    if full & kda or full | kda != set(range(num)):
        raise UserError("linear_attn_config must assign every layer to exactly one of kda/full")
    gated = bool(cfg.get("mla_use_output_gate", False))
    layers = []
    for i in range(num):
        pair = _mla(cfg, i, gated=gated) if i in full else _kda(cfg, i, lin)
        layers.append(_layer(pair, _ffn(cfg, i)))
    return layers


def _build_mla(cfg: Config) -> list[_Layer]:
    """DeepSeek-V2/V3, Kimi K2: MLA in every layer (MTP layers not counted)."""
    return [_layer(_mla(cfg, i), _ffn(cfg, i)) for i in range(_int(cfg, "num_hidden_layers"))]


def _build_minimax(cfg: Config) -> list[_Layer]:
    """MiniMax-Text-01 / M1: lightning linear attention with a softmax GQA layer every few."""
    num = _int(cfg, "num_hidden_layers")
    types = _layer_types(cfg)
    if types is None:
        flags = _req(cfg, "attn_type_list")
        types = ["full_attention" if f else "linear_attention" for f in flags]
    layers = []
    for i, kind in enumerate(types[:num]):
        pair = _gqa(cfg, i) if kind == "full_attention" else _lightning(cfg, i)
        layers.append(_layer(pair, _ffn(cfg, i)))
    return layers


def _build_nemotron_h(cfg: Config) -> list[_Layer]:
    """Nemotron-H: one block per character of `hybrid_override_pattern`.

    M = Mamba2, * = attention, - = dense MLP, E = MoE (both MLP_ONLY: no state).
    """
    pattern = str(_req(cfg, "hybrid_override_pattern"))
    if len(pattern) != _int(cfg, "num_hidden_layers"):
        raise UserError("hybrid_override_pattern must have one character per hidden layer")
    layers = []
    for i, char in enumerate(pattern):
        if char == "M":
            layers.append(_layer(_mamba2(cfg, i), _Ffn()))
        elif char == "*":
            layers.append(_layer(_gqa(cfg, i), _Ffn()))
        elif char in "-E":
            spec = LayerSpec(i, LayerKind.MLP_ONLY)
            layers.append(_layer((spec, 0), _ffn(cfg, i, moe=char == "E")))
        else:
            raise UserError(f"unknown block {char!r} in hybrid_override_pattern")
    return layers


def _build_bailing_linear(cfg: Config) -> list[_Layer]:
    """Ring/Ling linear hybrids: every `layer_group_size`-th layer is softmax (MLA when the
    config has `kv_lora_rank`, else GQA); the rest are lightning linear attention."""
    num, group = _int(cfg, "num_hidden_layers"), _int(cfg, "layer_group_size")
    use_mla = cfg.get("kv_lora_rank") is not None
    layers = []
    for i in range(num):
        if (i + 1) % group == 0:
            pair = _mla(cfg, i) if use_mla else _gqa(cfg, i)
        else:
            pair = _lightning(cfg, i)
        layers.append(_layer(pair, _ffn(cfg, i)))
    return layers


def _build_jamba(cfg: Config) -> list[_Layer]:
    """Jamba: attention at `attn_layer_offset` every `attn_layer_period` layers, Mamba1 else."""
    hidden = _int(cfg, "hidden_size")
    period, offset = _int(cfg, "attn_layer_period"), _int(cfg, "attn_layer_offset")
    e_period, e_offset = _int(cfg, "expert_layer_period", 1), _int(cfg, "expert_layer_offset", 0)
    inner = _int(cfg, "mamba_expand") * hidden
    dt_rank = _dt_rank(cfg.get("mamba_dt_rank", "auto"), hidden)
    layers = []
    for i in range(_int(cfg, "num_hidden_layers")):
        if i % period == offset:
            pair = _gqa(cfg, i)
        else:
            d_state, kernel = _int(cfg, "mamba_d_state"), _int(cfg, "mamba_d_conv")
            pair = _mamba1(cfg, i, inner=inner, d_state=d_state, kernel=kernel, dt_rank=dt_rank)
        moe = _num_routed_experts(cfg) > 1 and i % e_period == e_offset
        layers.append(_layer(pair, _ffn(cfg, i, moe=moe)))
    return layers


def _build_mamba(cfg: Config) -> list[_Layer]:
    """Mamba / Falcon-Mamba: Mamba1 blocks only, no MLP."""
    hidden = _int(cfg, "hidden_size")
    inner = _int(cfg, "intermediate_size", _int(cfg, "expand", 2) * hidden)
    dt_rank = _dt_rank(cfg.get("time_step_rank", "auto"), hidden)
    d_state, kernel = _int(cfg, "state_size"), _int(cfg, "conv_kernel")
    return [
        _layer(
            _mamba1(cfg, i, inner=inner, d_state=d_state, kernel=kernel, dt_rank=dt_rank), _Ffn()
        )
        for i in range(_int(cfg, "num_hidden_layers"))
    ]


def _build_lfm2(cfg: Config) -> list[_Layer]:
    """LFM2: `layer_types` "conv" (short conv) or "full_attention" (GQA)."""
    types = _layer_types(cfg)
    if types is None:
        full = set(_req(cfg, "full_attn_idxs"))
        types = [
            "full_attention" if i in full else "conv" for i in range(_int(cfg, "num_hidden_layers"))
        ]
    inter = _first_int(cfg, ("block_ff_dim", "intermediate_size"))
    hidden = _int(cfg, "hidden_size")
    layers = []
    for i, kind in enumerate(types):
        pair = _gqa(cfg, i) if kind == "full_attention" else _short_conv(cfg, i)
        layers.append(_layer(pair, _Ffn(dense=3 * hidden * inter)))
    return layers


def _dt_rank(value: object, hidden: int) -> int:
    if value in (None, "auto"):
        return math.ceil(hidden / 16)
    if not isinstance(value, int):
        raise UserError(f"time-step rank must be an integer or 'auto', got {value!r}")
    return value


_BUILDERS: dict[str, Callable[[Config], list[_Layer]]] = {
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


# ---------------------------------------------------------------------------- assembly


def _normalize_type(value: object) -> str:
    """ "bailing_moe_v2_5 (assumed)" -> "bailing_moe_v2_5": annotations in reconstructed files."""
    return str(value).split(" (", 1)[0].strip()


def text_config(cfg: Config) -> Config:
    """The language-model part of a config: `text_config` of a VLM wrapper, else the config."""
    inner = cfg.get("text_config")
    if isinstance(inner, Mapping):
        merged = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}
        merged.update(inner)
        return merged
    return cfg


def _builder_for(cfg: Config, top_type: str) -> Callable[[Config], list[_Layer]]:
    text_type = _normalize_type(cfg.get("model_type", top_type))
    for candidate in (text_type, top_type):
        if candidate in _BUILDERS:
            return _BUILDERS[candidate]
    raise UserError(
        f"unsupported model_type {top_type!r}"
        + (f" (text model_type {text_type!r})" if text_type != top_type else "")
        + f"; known: {', '.join(known_model_types())}"
    )


_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_param_count(value: object) -> int:
    """`1e12`, `"1T"`, `"~63B"`, `"309B"` -> an integer parameter count."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"~?\s*([0-9.]+)\s*([KMBT]?)", str(value).strip(), flags=re.IGNORECASE)
    if not match:
        raise UserError(f"cannot read a parameter count from {value!r}")
    return int(float(match.group(1)) * _SCALE[match.group(2).upper()])


def _weight_bytes(cfg: Config, routed: int, total: int) -> float:
    """Average stored bytes per weight from `quantization_config` (activation dtype if absent).

    MXFP4 and compressed-tensors integer formats quantize the routed experts only (the rest
    stays bf16), as in gpt-oss, Kimi K2-Thinking and Kimi K3; FP8 block quantization covers
    every linear layer.
    """
    quant = cfg.get("quantization_config")
    if not isinstance(quant, Mapping):
        return float(dtype_bytes(_activation_dtype(cfg)))
    method = str(quant.get("quant_method", "")).lower()
    fmt = str(quant.get("format", quant.get("fmt", ""))).lower()
    expert_bytes = _expert_bytes_per_param(method, fmt, quant)
    if expert_bytes is not None:
        return (routed * expert_bytes + (total - routed) * 2.0) / max(total, 1)
    if method == "fp8" or "e4m3" in fmt:
        return 1.0
    return float(dtype_bytes(_activation_dtype(cfg)))


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


def _activation_dtype(cfg: Config) -> str:
    value = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    try:
        dtype_bytes(value)
    except ValueError as exc:
        raise UserError(f"config dtype {value!r} is not a known dtype") from exc
    return value.removeprefix("torch.")


def _state_dtype(cfg: Config) -> str:
    value = cfg.get("mamba_ssm_dtype") or cfg.get("mamba_ssm_cache_dtype") or "float32"
    try:
        dtype_bytes(str(value))
    except ValueError as exc:
        raise UserError(f"config SSM state dtype {value!r} is not a known dtype") from exc
    return str(value).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class _Params:
    total: int
    active: int
    embedding: int
    routed_total: int


def _param_counts(cfg: Config, built: list[_Layer], top_type: str) -> _Params:
    """Counts from the shapes, or the config's own `total_params` / `activated_params`."""
    tied = bool(cfg.get("tie_word_embeddings", top_type.startswith("gemma")))
    embedding = _int(cfg, "vocab_size", 0) * _int(cfg, "hidden_size") * (1 if tied else 2)
    shared = sum(layer.mixer_params + layer.ffn.dense for layer in built)
    routed_total = sum(layer.ffn.routed_total for layer in built)
    routed_active = sum(layer.ffn.routed_active for layer in built)
    total, active = embedding + shared + routed_total, embedding + shared + routed_active
    if cfg.get("total_params") is None:
        return _Params(total, active, embedding, routed_total)
    total = parse_param_count(cfg["total_params"])
    active = parse_param_count(cfg.get("activated_params", total))
    if not 0 < active <= total:
        raise UserError(f"activated_params ({active}) must be in (0, total_params = {total}]")
    experts, top_k = _num_routed_experts(cfg), _experts_per_token(cfg)
    if experts > top_k > 0:  # total - active = routed * (1 - top_k / experts)
        routed_total = round((total - active) * experts / (experts - top_k))
    elif routed_total == 0:
        routed_total = total - active
    return _Params(total, active, embedding, min(routed_total, total))


def spec_from_config(
    config: Config, *, name: str, source: str = "", provenance: str = ""
) -> ModelSpec:
    """Build a ModelSpec from a parsed HF config (a VLM wrapper's `text_config` is used)."""
    if not isinstance(config, Mapping):
        raise UserError("a model config must be a JSON object")
    top_type = _normalize_type(config.get("model_type", ""))
    if not top_type:
        raise UserError("config has no 'model_type'")
    cfg = text_config(config)
    builder = _builder_for(cfg, top_type)
    try:
        built = builder(cfg)
        if not built:
            raise UserError("config describes a model with no layers")
        params = _param_counts(cfg, built, top_type)
        weight_bytes = _weight_bytes(cfg, params.routed_total, params.total)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        raise UserError(f"malformed {top_type!r} config: {type(exc).__name__}: {exc}") from exc
    experts, top_k = _num_routed_experts(cfg), _experts_per_token(cfg)
    return ModelSpec(
        name=name,
        model_type=top_type,
        num_layers=len(built),
        layers=tuple(layer.spec for layer in built),
        hidden_size=_int(cfg, "hidden_size"),
        vocab_size=_int(cfg, "vocab_size", 0),
        num_total_params=params.total,
        num_active_params=params.active,
        num_embedding_params=params.embedding,
        num_routed_expert_params=params.routed_total,
        num_experts=experts if params.routed_total else 0,
        num_experts_per_tok=top_k if params.routed_total else 0,
        weight_bytes_per_param=weight_bytes,
        activation_dtype=_activation_dtype(cfg),
        recurrent_state_dtype=_state_dtype(cfg),
        source=source,
        provenance=provenance or str(config.get("_provenance", "")),
    )
