"""Token mixers of one layer: its `LayerSpec` (what it caches) and its parameter count.

One parser per layer kind: GQA/MHA (full or sliding window), MLA, Gated DeltaNet, Kimi Delta
Attention, lightning linear attention, Mamba2, Mamba1 and LFM2 short convolution. Each returns
`(spec, mixer_params)`; parameter counts come from the projection shapes (norms and biases
ignored, well under 0.1% of any model here).
"""

from __future__ import annotations

from prfaas.models.config_access import Config, get_int, resolve_head_dim
from prfaas.models.spec import LayerSpec
from prfaas.types import LayerKind


def gqa(
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
    hidden = get_int(cfg, "hidden_size")
    n_q = num_q_heads or get_int(cfg, "num_attention_heads")
    n_kv = num_kv_heads or get_int(cfg, "num_key_value_heads", n_q)
    dk = head_dim_k or resolve_head_dim(cfg)
    dv = head_dim_v or dk
    kind = LayerKind.SLIDING_WINDOW if window else LayerKind.FULL_ATTENTION
    spec = LayerSpec(
        index, kind, num_q_heads=n_q, num_kv_heads=n_kv, head_dim_k=dk, head_dim_v=dv, window=window
    )
    params = hidden * n_q * dk * (2 if gated else 1) + hidden * n_kv * (dk + dv) + n_q * dv * hidden
    return spec, params


def mla(cfg: Config, index: int, *, gated: bool = False) -> tuple[LayerSpec, int]:
    """DeepSeek-style MLA. Caches kv_lora_rank + qk_rope_head_dim values per token."""
    hidden = get_int(cfg, "hidden_size")
    n = get_int(cfg, "num_attention_heads")
    kv_lora = get_int(cfg, "kv_lora_rank")
    rope = get_int(cfg, "qk_rope_head_dim")
    nope = get_int(cfg, "qk_nope_head_dim")
    dv = get_int(cfg, "v_head_dim")
    q_lora = get_int(cfg, "q_lora_rank", 0)
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


def gated_deltanet(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Qwen3-Next / Qwen3.5 Gated DeltaNet: state Hv x dk x dv, conv over q, k and v."""
    hidden = get_int(cfg, "hidden_size")
    hk, hv = get_int(cfg, "linear_num_key_heads"), get_int(cfg, "linear_num_value_heads")
    dk, dv = get_int(cfg, "linear_key_head_dim"), get_int(cfg, "linear_value_head_dim")
    kernel = get_int(cfg, "linear_conv_kernel_dim")
    channels = 2 * hk * dk + hv * dv
    spec = _state_layer(index, LayerKind.LINEAR_ATTENTION, (hv, dk, dv), (channels, kernel))
    params = hidden * (2 * hk * dk + 2 * hv * dv) + hidden * 2 * hv + channels * kernel
    return spec, params + hv * dv * hidden


def kda(cfg: Config, index: int, lin: Config) -> tuple[LayerSpec, int]:
    """Kimi Delta Attention: state H x d x d, short convs on q, k, v; low-rank gates."""
    hidden = get_int(cfg, "hidden_size")
    heads, dim = get_int(lin, "num_heads"), get_int(lin, "head_dim")
    kernel = get_int(lin, "short_conv_kernel_size")
    width = heads * dim
    spec = _state_layer(index, LayerKind.LINEAR_ATTENTION, (heads, dim, dim), (3 * width, kernel))
    low_rank_gates = 2 * (hidden * dim + dim * width)  # decay gate f and output gate g
    params = 3 * hidden * width + 3 * width * kernel + low_rank_gates + hidden * heads
    return spec, params + width * hidden


def lightning(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Lightning linear attention (MiniMax-01, Ring/Ling linear): state H x d x d, no conv."""
    hidden = get_int(cfg, "hidden_size")
    heads, dim = get_int(cfg, "num_attention_heads"), resolve_head_dim(cfg)
    width = heads * dim
    spec = _state_layer(index, LayerKind.LINEAR_ATTENTION, (heads, dim, dim))
    return spec, 3 * hidden * width + hidden * width + width * hidden


def mamba2(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """Mamba2 (SSD): state heads x head_dim x d_state, conv over x, B and C."""
    hidden = get_int(cfg, "hidden_size")
    heads, head_dim = get_int(cfg, "mamba_num_heads"), get_int(cfg, "mamba_head_dim")
    d_state, groups = get_int(cfg, "ssm_state_size"), get_int(cfg, "n_groups", 1)
    kernel = get_int(cfg, "conv_kernel")
    inner = heads * head_dim
    channels = inner + 2 * groups * d_state
    spec = _state_layer(index, LayerKind.MAMBA, (heads, d_state, head_dim), (channels, kernel))
    params = hidden * (inner + channels + heads) + channels * kernel + inner * hidden
    return spec, params


def mamba1(
    cfg: Config, index: int, *, inner: int, d_state: int, kernel: int, dt_rank: int
) -> tuple[LayerSpec, int]:
    """Mamba1 selective scan: state inner x d_state, conv over the inner channels."""
    hidden = get_int(cfg, "hidden_size")
    spec = _state_layer(index, LayerKind.MAMBA, (1, d_state, inner), (inner, kernel))
    params = hidden * 2 * inner + inner * kernel + inner * (dt_rank + 2 * d_state)
    params += dt_rank * inner + inner * d_state + inner * hidden
    return spec, params


def short_conv(cfg: Config, index: int) -> tuple[LayerSpec, int]:
    """LFM2 gated short convolution over the hidden channels: conv state only."""
    hidden = get_int(cfg, "hidden_size")
    kernel = get_int(cfg, "conv_L_cache")
    spec = LayerSpec(index, LayerKind.SHORT_CONV, conv_channels=hidden, conv_kernel=kernel)
    return spec, hidden * 3 * hidden + hidden * kernel + hidden * hidden


def _state_layer(
    index: int,
    kind: LayerKind,
    state_shape: tuple[int, int, int],
    conv_shape: tuple[int, int] = (0, 0),
) -> LayerSpec:
    """A layer with a fixed recurrent state of `state_shape` = (heads, key_dim, value_dim)
    elements and a causal conv over `conv_shape` = (channels, kernel) ((0, 0): no conv)."""
    heads, key_dim, value_dim = state_shape
    channels, kernel = conv_shape
    return LayerSpec(
        index,
        kind,
        num_state_heads=heads,
        state_key_dim=key_dim,
        state_value_dim=value_dim,
        conv_channels=channels,
        conv_kernel=kernel,
    )
