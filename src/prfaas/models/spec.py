"""What one request of a model keeps in memory: layer specs, the model spec and its KV footprint.

Owns the byte formulas of S_kv(l) (the paper's Eq. 1 numerator). Knows nothing about config files,
hardware or time. Conventions (the same as vLLM/SGLang's cache managers):

- full attention (GQA/MHA): `num_kv_heads * (head_dim_k + head_dim_v)` KV elements per token;
- MLA: one latent of `kv_lora_rank + qk_rope_head_dim` elements per token (K and V share it);
- sliding window: like full attention, but only the last `window` tokens, so `min(l, window)`;
- linear attention (Gated DeltaNet, KDA, lightning) and Mamba2: `num_state_heads * state_key_dim *
  state_value_dim` recurrent elements in the state dtype (fp32 by default), plus a causal-conv
  state of `conv_channels * (conv_kernel - 1)` elements in the activation dtype;
- a KV codec (`prfaas.models.kv_codec`) changes the bytes of every attention K/V vector (full,
  MLA, sliding window); recurrent and conv state stay exact;
- Mamba1: `conv_channels * state_key_dim` recurrent elements (`num_state_heads = 1`,
  `state_value_dim = conv_channels`), conv state as above; short conv (LFM2): conv state only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.models.kv_codec import KV_CODEC_NONE, KVCodecSpec, get_kv_codec
from prfaas.types import LayerKind, dtype_bytes

GROWING_KINDS = frozenset({LayerKind.FULL_ATTENTION, LayerKind.MLA})
RECURRENT_KINDS = frozenset({LayerKind.LINEAR_ATTENTION, LayerKind.MAMBA})


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One decoder layer: its kind and the dimensions of that kind (0 where they do not apply)."""

    index: int  # 0-based position in the decoder stack
    kind: LayerKind
    num_q_heads: int = 0  # attention query heads (FULL_ATTENTION, SLIDING_WINDOW, MLA)
    num_kv_heads: int = 0  # attention KV heads (FULL_ATTENTION, SLIDING_WINDOW)
    head_dim_k: int = 0  # per-head query/key dim (MLA: qk_nope_head_dim + qk_rope_head_dim)
    head_dim_v: int = 0  # per-head value dim
    window: int = 0  # SLIDING_WINDOW: tokens kept
    kv_lora_rank: int = 0  # MLA: latent width cached per token
    qk_rope_head_dim: int = 0  # MLA: decoupled rope key width cached per token
    num_state_heads: int = 0  # LINEAR_ATTENTION / MAMBA: heads of the recurrent state
    state_key_dim: int = 0  # per-head key dim (linear attention) or d_state (Mamba)
    state_value_dim: int = 0  # per-head value dim (linear attention) or head_dim (Mamba2)
    conv_channels: int = 0  # channels of the causal short convolution (0: none)
    conv_kernel: int = 0  # its kernel width; the state keeps the last kernel - 1 inputs
    is_moe: bool = False  # the block's MLP is a mixture of experts

    def kv_bytes_per_token(self, kv_dtype: str = "bfloat16", kv_codec: str = KV_CODEC_NONE) -> int:
        """Bytes this layer adds per prompt token (0 unless full attention or MLA), each K/V
        vector coded by `kv_codec` (`prfaas.models.kv_codec`)."""
        codec = get_kv_codec(kv_codec)
        if self.kind is LayerKind.FULL_ATTENTION:
            return self._head_vectors_bytes(codec, kv_dtype)
        if self.kind is LayerKind.MLA:
            latent = codec.vector_bytes(self.kv_lora_rank, kv_dtype)
            return latent + codec.vector_bytes(self.qk_rope_head_dim, kv_dtype)
        return 0

    def window_bytes_per_token(
        self, kv_dtype: str = "bfloat16", kv_codec: str = KV_CODEC_NONE
    ) -> int:
        """Bytes per token kept inside the window (0 unless sliding window)."""
        if self.kind is not LayerKind.SLIDING_WINDOW:
            return 0
        return self._head_vectors_bytes(get_kv_codec(kv_codec), kv_dtype)

    def _head_vectors_bytes(self, codec: KVCodecSpec, kv_dtype: str) -> int:
        """One token's K and V vectors of every KV head."""
        key = codec.vector_bytes(self.head_dim_k, kv_dtype)
        return self.num_kv_heads * (key + codec.vector_bytes(self.head_dim_v, kv_dtype))

    def recurrent_state_bytes(self, state_dtype: str = "float32") -> int:
        """Fixed recurrent state (linear attention / SSM), independent of length."""
        if self.kind not in RECURRENT_KINDS:
            return 0
        elements = self.num_state_heads * self.state_key_dim * self.state_value_dim
        return elements * dtype_bytes(state_dtype)

    def conv_state_bytes(self, conv_dtype: str = "bfloat16") -> int:
        """Fixed causal-conv state: the last `conv_kernel - 1` inputs of every channel."""
        if self.conv_channels == 0 or self.conv_kernel < 2:
            return 0
        return self.conv_channels * (self.conv_kernel - 1) * dtype_bytes(conv_dtype)

    def state_bytes(
        self,
        num_tokens: int,
        kv_dtype: str = "bfloat16",
        state_dtype: str = "float32",
        conv_dtype: str = "bfloat16",
        kv_codec: str = KV_CODEC_NONE,
    ) -> int:
        """Per-request bytes of this layer that do not grow past a bound (SWA window, states);
        the codec applies to the window's K/V only, the states stay exact."""
        per_token = self.window_bytes_per_token(kv_dtype, kv_codec)
        window_bytes = per_token * min(num_tokens, self.window)
        return (
            window_bytes
            + self.recurrent_state_bytes(state_dtype)
            + self.conv_state_bytes(conv_dtype)
        )


@dataclass(frozen=True, slots=True)
class KVFootprint:
    """S_kv(l) as a closed form, for the router, planner and simulator (no model object needed).

    `bytes_for(l) = bytes_per_token * l + recurrent_bytes + sum(w_bytes * min(l, w))` over the
    sliding windows. `fixed_bytes_per_request` is the fixed part once every window is full.
    """

    bytes_per_token: int  # full-attention / MLA KV bytes per prompt token
    fixed_bytes_per_request: int  # recurrent + conv state + every window full, bytes
    recurrent_bytes: int  # recurrent + conv state only (no window KV), bytes
    window_bytes: tuple[tuple[int, int], ...] = ()  # (window_tokens, bytes_per_token) per window

    def bytes_for(self, num_tokens: int) -> int:
        """Exact S_kv(num_tokens) in bytes."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        windows = sum(b * min(num_tokens, w) for w, b in self.window_bytes)
        return self.bytes_per_token * num_tokens + self.recurrent_bytes + windows


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as PrfaaS needs it: per-layer state shapes, parameter counts, dtypes.

    Built by `prfaas.models.load_model_spec` from a Hugging Face config.json. Parameter counts
    exclude MTP / next-token-prediction heads and vision towers.
    """

    name: str  # preset name, or the config's file stem
    model_type: str  # HF model_type of the top-level config ("kimi_linear", "gemma3", ...)
    num_layers: int  # decoder layers (len(layers))
    layers: tuple[LayerSpec, ...]
    hidden_size: int
    vocab_size: int
    num_total_params: int  # all weights of the language model, embeddings included
    num_active_params: int  # weights one token passes through (MoE: top-k + shared experts)
    num_embedding_params: int = 0  # input embedding + untied lm_head (lookup / last token only)
    num_routed_expert_params: int = 0  # all routed experts of all layers
    num_experts: int = 0  # routed experts per MoE layer (0: dense)
    num_experts_per_tok: int = 0  # routed experts each token uses
    weight_bytes_per_param: float = (
        2.0  # average stored bytes per weight (bf16 2, fp8 1, mxfp4 ~0.53)
    )
    activation_dtype: str = "bfloat16"  # dtype of activations and of the conv state
    recurrent_state_dtype: str = "float32"  # the config's SSM/linear-state dtype (fp32 default)
    max_position_embeddings: int | None = None  # positions (prompt + output) it takes; None: unsaid
    source: str = ""  # where the spec came from: preset name, file path or "dict"
    provenance: str = ""  # non-empty when the config is reconstructed or inferred: how
    layer_counts: dict[LayerKind, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_layers != len(self.layers):
            raise ValueError(f"num_layers={self.num_layers} but {len(self.layers)} layers given")
        counts: dict[LayerKind, int] = {}
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
        object.__setattr__(self, "layer_counts", counts)

    def _state_dtype(self, state_dtype: str | None) -> str:
        return self.recurrent_state_dtype if state_dtype is None else state_dtype

    def kv_bytes_per_token(self, kv_dtype: str = "bfloat16", kv_codec: str = KV_CODEC_NONE) -> int:
        """Full-attention and MLA KV bytes added per prompt token, summed over layers."""
        return sum(layer.kv_bytes_per_token(kv_dtype, kv_codec) for layer in self.layers)

    def state_bytes(
        self,
        num_tokens: int,
        kv_dtype: str = "bfloat16",
        state_dtype: str | None = None,
        kv_codec: str = KV_CODEC_NONE,
    ) -> int:
        """Fixed per-request bytes at `num_tokens`: recurrent + conv state + SWA window KV.

        `state_dtype` None means the model's own recurrent-state dtype (fp32 unless its config
        says otherwise). The conv state is kept in the activation dtype.
        """
        _check_tokens(num_tokens)
        sdt = self._state_dtype(state_dtype)
        return sum(
            layer.state_bytes(num_tokens, kv_dtype, sdt, self.activation_dtype, kv_codec)
            for layer in self.layers
        )

    def kv_bytes(
        self,
        num_tokens: int,
        kv_dtype: str = "bfloat16",
        state_dtype: str | None = None,
        kv_codec: str = KV_CODEC_NONE,
    ) -> int:
        """S_kv(l): every byte one request of `num_tokens` tokens hands from prefill to decode."""
        _check_tokens(num_tokens)
        per_token = self.kv_bytes_per_token(kv_dtype, kv_codec) * num_tokens
        return per_token + self.state_bytes(num_tokens, kv_dtype, state_dtype, kv_codec)

    def footprint(
        self,
        kv_dtype: str = "bfloat16",
        state_dtype: str | None = None,
        kv_codec: str = KV_CODEC_NONE,
    ) -> KVFootprint:
        """The closed form of `kv_bytes` for these dtypes and this KV codec."""
        sdt = self._state_dtype(state_dtype)
        recurrent = sum(
            layer.recurrent_state_bytes(sdt) + layer.conv_state_bytes(self.activation_dtype)
            for layer in self.layers
        )
        by_window: dict[int, int] = {}
        for layer in self.layers:
            if layer.kind is LayerKind.SLIDING_WINDOW:
                by_window[layer.window] = by_window.get(layer.window, 0) + (
                    layer.window_bytes_per_token(kv_dtype, kv_codec)
                )
        windows = tuple(sorted(by_window.items()))
        return KVFootprint(
            bytes_per_token=self.kv_bytes_per_token(kv_dtype, kv_codec),
            fixed_bytes_per_request=recurrent + sum(w * b for w, b in windows),
            recurrent_bytes=recurrent,
            window_bytes=windows,
        )

    def layer_bytes(
        self,
        num_tokens: int,
        kv_dtype: str = "bfloat16",
        state_dtype: str | None = None,
        kv_codec: str = KV_CODEC_NONE,
    ) -> tuple[int, ...]:
        """S_kv split by layer (sums to `kv_bytes`): the payload of each layer's transfer."""
        _check_tokens(num_tokens)
        sdt = self._state_dtype(state_dtype)
        return tuple(
            layer.kv_bytes_per_token(kv_dtype, kv_codec) * num_tokens
            + layer.state_bytes(num_tokens, kv_dtype, sdt, self.activation_dtype, kv_codec)
            for layer in self.layers
        )

    def num_layers_of(self, kind: LayerKind) -> int:
        return self.layer_counts.get(kind, 0)

    def layer_pattern(self) -> str:
        """Human summary such as "45 linear_attention : 15 full_attention"."""
        parts = sorted(self.layer_counts.items(), key=lambda kv: (-kv[1], kv[0].value))
        return " : ".join(f"{n} {kind.value}" for kind, n in parts)


def _check_tokens(num_tokens: int) -> None:
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
