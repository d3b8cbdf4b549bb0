"""S_kv from first principles: each layer kind's bytes recomputed here from the raw config numbers.

Every expected value is derived in the test from the config.json fields (heads x dims x dtype
bytes), not copied from a table, so a wrong layer-kind detection or formula fails here.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from prfaas.models import PRESET_FILES, LayerSpec, load_model_spec
from prfaas.types import LayerKind

BF16, FP32, FP8 = 2, 4, 1


def raw_config(preset: str) -> dict[str, Any]:
    text = resources.files("prfaas.models").joinpath("configs", PRESET_FILES[preset]).read_text()
    config: dict[str, Any] = json.loads(text)
    return config


def indices(preset: str, kind: LayerKind) -> list[int]:
    return [layer.index for layer in load_model_spec(preset).layers if layer.kind is kind]


def test_full_attention_gqa_llama() -> None:
    c = raw_config("llama-3.1-70b")
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    per_token = c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 2 * BF16
    spec = load_model_spec("llama-3.1-70b")
    assert spec.kv_bytes_per_token() == per_token
    assert spec.state_bytes(32768) == 0
    assert spec.kv_bytes(32768) == per_token * 32768
    assert spec.kv_bytes(32768, kv_dtype="fp8") == per_token * 32768 // 2


def test_full_attention_minimax_m25_is_dense_gqa() -> None:
    c = raw_config("minimax-m2.5")
    per_token = c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * 2 * BF16
    spec = load_model_spec("minimax-m2.5")
    assert spec.num_layers_of(LayerKind.FULL_ATTENTION) == c["num_hidden_layers"]
    assert spec.kv_bytes(32768) == per_token * 32768


def test_mla_deepseek_v3_caches_latent_plus_rope_key() -> None:
    c = raw_config("deepseek-v3")
    per_layer = (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * BF16
    spec = load_model_spec("deepseek-v3")
    assert spec.num_layers_of(LayerKind.MLA) == c["num_hidden_layers"]
    assert spec.kv_bytes_per_token() == c["num_hidden_layers"] * per_layer
    assert spec.kv_bytes(4096) == c["num_hidden_layers"] * per_layer * 4096


def test_sliding_window_gpt_oss_alternates_and_caps_at_window() -> None:
    c = raw_config("gpt-oss-120b")
    window = c["sliding_window"]
    per_layer_token = c["num_key_value_heads"] * c["head_dim"] * 2 * BF16
    num_sliding = c["layer_types"].count("sliding_attention")
    num_full = c["num_hidden_layers"] - num_sliding
    spec = load_model_spec("gpt-oss-120b")
    assert indices("gpt-oss-120b", LayerKind.SLIDING_WINDOW) == list(range(0, 36, 2))
    for tokens in (1, window - 1, window, window + 1, 100_000):
        expected_state = num_sliding * per_layer_token * min(tokens, window)
        assert spec.state_bytes(tokens) == expected_state
        assert spec.kv_bytes(tokens) == num_full * per_layer_token * tokens + expected_state


def test_sliding_window_gemma3_pattern_from_text_config() -> None:
    c = raw_config("gemma-3-27b")["text_config"]
    pattern, window = c["sliding_window_pattern"], c["sliding_window"]
    full = [i for i in range(c["num_hidden_layers"]) if (i + 1) % pattern == 0]
    assert indices("gemma-3-27b", LayerKind.FULL_ATTENTION) == full
    per_layer_token = c["num_key_value_heads"] * c["head_dim"] * 2 * BF16
    num_sliding = c["num_hidden_layers"] - len(full)
    spec = load_model_spec("gemma-3-27b")
    assert spec.state_bytes(8192) == num_sliding * per_layer_token * window
    assert spec.kv_bytes(8192) == len(full) * per_layer_token * 8192 + spec.state_bytes(8192)


def test_mimo_distinct_k_and_v_head_dims_for_full_and_swa() -> None:
    c = raw_config("mimo-v2-flash")
    full = [i for i, code in enumerate(c["hybrid_layer_pattern"]) if code == 0]
    assert indices("mimo-v2-flash", LayerKind.FULL_ATTENTION) == full
    full_token = c["num_key_value_heads"] * (c["head_dim"] + c["v_head_dim"]) * BF16
    swa_token = c["swa_num_key_value_heads"] * (c["swa_head_dim"] + c["swa_v_head_dim"]) * BF16
    num_swa = c["num_hidden_layers"] - len(full)
    spec = load_model_spec("mimo-v2-flash")
    assert spec.kv_bytes_per_token() == len(full) * full_token
    assert spec.state_bytes(1 << 20) == num_swa * swa_token * c["sliding_window"]
    assert spec.state_bytes(100) == num_swa * swa_token * 100


def gdn_layer_bytes(c: dict[str, Any], state_bytes: int) -> int:
    hk, hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    recurrent = hv * dk * dv * state_bytes
    conv = (2 * hk * dk + hv * dv) * (c["linear_conv_kernel_dim"] - 1) * BF16
    return int(recurrent + conv)


def test_gated_deltanet_qwen3_next_every_fourth_layer_full() -> None:
    c = raw_config("qwen3-next-80b")
    full = [i for i in range(c["num_hidden_layers"]) if (i + 1) % 4 == 0]
    assert indices("qwen3-next-80b", LayerKind.FULL_ATTENTION) == full
    num_linear = c["num_hidden_layers"] - len(full)
    spec = load_model_spec("qwen3-next-80b")
    assert spec.kv_bytes_per_token() == len(full) * c["num_key_value_heads"] * 256 * 2 * BF16
    assert spec.state_bytes(10) == num_linear * gdn_layer_bytes(c, FP32)
    assert spec.state_bytes(10, state_dtype="bfloat16") == num_linear * gdn_layer_bytes(c, BF16)


def test_gated_deltanet_qwen35_vlm_wrapper_layer_types() -> None:
    c = raw_config("qwen3.5-397b")["text_config"]
    full = [i for i, t in enumerate(c["layer_types"]) if t == "full_attention"]
    assert full == list(range(3, 60, 4))
    assert indices("qwen3.5-397b", LayerKind.FULL_ATTENTION) == full
    spec = load_model_spec("qwen3.5-397b")
    assert spec.recurrent_state_dtype == c["mamba_ssm_dtype"] == "float32"
    assert spec.state_bytes(1) == (60 - len(full)) * gdn_layer_bytes(c, FP32)


def test_kda_kimi_linear_one_based_layer_lists() -> None:
    c = raw_config("kimi-linear-48b")
    lin = c["linear_attn_config"]
    assert indices("kimi-linear-48b", LayerKind.MLA) == [i - 1 for i in lin["full_attn_layers"]]
    width = lin["num_heads"] * lin["head_dim"]
    kda = lin["num_heads"] * lin["head_dim"] ** 2 * FP32
    kda += 3 * width * (lin["short_conv_kernel_size"] - 1) * BF16  # q, k and v short convs
    mla = (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * BF16
    spec = load_model_spec("kimi-linear-48b")
    assert (
        spec.kv_bytes(1000)
        == len(lin["full_attn_layers"]) * mla * 1000 + len(lin["kda_layers"]) * kda
    )


def test_lightning_ring_every_eighth_layer_mla_no_conv() -> None:
    c = raw_config("ring-2.5-1t")
    group = c["layer_group_size"]
    mla = [i for i in range(c["num_hidden_layers"]) if (i + 1) % group == 0]
    assert indices("ring-2.5-1t", LayerKind.MLA) == mla
    lightning = c["num_attention_heads"] * c["head_dim"] ** 2 * FP32
    spec = load_model_spec("ring-2.5-1t")
    assert spec.state_bytes(5) == (c["num_hidden_layers"] - len(mla)) * lightning
    assert spec.model_type == "bailing_moe_v2_5"
    assert "ASSUMED" in spec.provenance


def test_mamba2_nemotron_h_pattern_and_cache_dtype() -> None:
    c = raw_config("nemotron-3-nano")
    pattern = c["hybrid_override_pattern"]
    assert indices("nemotron-3-nano", LayerKind.MAMBA) == [
        i for i, ch in enumerate(pattern) if ch == "M"
    ]
    assert indices("nemotron-3-nano", LayerKind.MLP_ONLY) == [
        i for i, ch in enumerate(pattern) if ch == "E"
    ]
    inner = c["mamba_num_heads"] * c["mamba_head_dim"]
    ssm = c["mamba_num_heads"] * c["mamba_head_dim"] * c["ssm_state_size"] * FP32
    conv = (inner + 2 * c["n_groups"] * c["ssm_state_size"]) * (c["conv_kernel"] - 1) * BF16
    attn = c["num_key_value_heads"] * c["head_dim"] * 2 * BF16
    spec = load_model_spec("nemotron-3-nano")
    assert spec.kv_bytes(2048) == pattern.count("*") * attn * 2048 + pattern.count("M") * (
        ssm + conv
    )


def test_nemotron_h_56b_uses_attention_head_dim() -> None:
    c = raw_config("nemotron-h-56b")
    pattern = c["hybrid_override_pattern"]
    attn = c["num_key_value_heads"] * c["attention_head_dim"] * 2 * BF16
    assert load_model_spec("nemotron-h-56b").kv_bytes_per_token() == pattern.count("*") * attn
    assert indices("nemotron-h-56b", LayerKind.FULL_ATTENTION)[:2] == [7, 18]


def test_mamba1_from_dict() -> None:
    config = {
        "model_type": "falcon_mamba",
        "hidden_size": 64,
        "intermediate_size": 128,
        "state_size": 16,
        "conv_kernel": 4,
        "num_hidden_layers": 3,
        "vocab_size": 100,
    }
    spec = load_model_spec(config)
    assert [layer.kind for layer in spec.layers] == [LayerKind.MAMBA] * 3
    per_layer = 128 * 16 * FP32 + 128 * (4 - 1) * BF16
    assert spec.kv_bytes_per_token() == 0
    assert spec.kv_bytes(999) == 3 * per_layer


def test_jamba_mamba1_with_attention_every_period() -> None:
    config = {
        "model_type": "jamba",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 8,
        "attn_layer_period": 4,
        "attn_layer_offset": 2,
        "mamba_expand": 2,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "intermediate_size": 256,
        "num_experts": 1,
        "num_experts_per_tok": 1,
        "vocab_size": 100,
    }
    spec = load_model_spec(config)
    assert [layer.index for layer in spec.layers if layer.kind is LayerKind.FULL_ATTENTION] == [
        2,
        6,
    ]
    inner = 2 * 64
    mamba = inner * 8 * FP32 + inner * 3 * BF16
    assert spec.kv_bytes(10) == 2 * 2 * 16 * 2 * BF16 * 10 + 6 * mamba


def test_short_conv_lfm2_from_dict() -> None:
    config = {
        "model_type": "lfm2",
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 4,
        "layer_types": ["conv", "conv", "full_attention", "conv"],
        "conv_L_cache": 3,
        "intermediate_size": 64,
        "vocab_size": 10,
    }
    spec = load_model_spec(config)
    assert spec.num_layers_of(LayerKind.SHORT_CONV) == 3
    assert spec.state_bytes(7) == 3 * 32 * (3 - 1) * BF16
    assert spec.kv_bytes_per_token() == 2 * 8 * 2 * BF16


def test_minimax_text01_lightning_from_attn_type_list() -> None:
    config = {
        "model_type": "minimax",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 4,
        "attn_type_list": [0, 0, 0, 1],
        "intermediate_size": 32,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 10,
    }
    spec = load_model_spec(config)
    assert spec.state_bytes(3) == 3 * 4 * 16 * 16 * FP32
    assert spec.kv_bytes_per_token() == 2 * 16 * 2 * BF16
    assert all(layer.is_moe for layer in spec.layers)


def test_layer_spec_state_of_mlp_only_layer_is_zero() -> None:
    layer = LayerSpec(0, LayerKind.MLP_ONLY)
    assert layer.state_bytes(10_000) == 0
    assert layer.kv_bytes_per_token() == 0


def test_fp8_kv_and_state_dtypes() -> None:
    spec = load_model_spec("qwen3-next-80b")
    assert spec.kv_bytes_per_token("fp8") * 2 == spec.kv_bytes_per_token("bfloat16")
    recurrent_fp32 = spec.state_bytes(1, state_dtype="float32")
    recurrent_bf16 = spec.state_bytes(1, state_dtype="bfloat16")
    assert recurrent_fp32 > recurrent_bf16 > 0


@pytest.mark.parametrize("tokens", [-1])
def test_negative_length_is_rejected(tokens: int) -> None:
    with pytest.raises(ValueError):
        load_model_spec("llama-3.1-70b").kv_bytes(tokens)
