"""Tiny random-weight presets: a real architecture's layer pattern on shrunk widths.

Each preset names a transformers `model_type` and, where the project holds one, the real HF config
the layer pattern is derived from (`data/model-configs`). The derived pattern keeps the real ratio
of the minority layer kind (full attention among linear/SWA/Mamba layers) on `NUM_TINY_LAYERS`
layers, placed evenly with the last minority layer at the end of the stack. Widths follow one base
(hidden 128, 4 query / 2 KV heads of 32, 4 experts, SWA window 64) and `initializer_range=0.2`, so
random greedy outputs vary. The vocabulary is the byte tokenizer's (256 bytes + specials).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prfaas.errors import UserError

NUM_TINY_LAYERS = 8
TINY_VOCAB_SIZE = 264  # 256 byte tokens + BOS, EOS, PAD, 5 unused specials (multiple of 8)
TINY_WINDOW = 64  # sliding window of SWA layers, small enough to evict at a few hundred tokens
TINY_INIT_RANGE = 0.2  # large enough that random-weight greedy outputs vary

_BASE: dict[str, Any] = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 65536,
    "initializer_range": TINY_INIT_RANGE,
    "tie_word_embeddings": False,
    "bos_token_id": 256,
    "eos_token_id": 257,
    "pad_token_id": 258,
}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 64}
# Gated DeltaNet widths shared by the Qwen3-Next and Qwen3.5 tiny presets
_GDN = {
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
}
_MLA = {"kv_lora_rank": 32, "q_lora_rank": None, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32}
_MAMBA2 = {"mamba_n_heads": 8, "mamba_d_head": 32, "mamba_d_state": 16, "mamba_n_groups": 1}


@dataclass(frozen=True)
class TinyPreset:
    """How to build one tiny model: its model_type, pattern source and width overrides."""

    name: str  # preset name, also the `arch` reported by verify
    model_type: str  # transformers model_type passed to AutoConfig.for_model
    real_config: str | None  # file in data/model-configs whose layer pattern is shrunk, if any
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields beyond _BASE
    is_chunk_exact: bool = True  # chunked prefill gives the one-shot result in transformers 5.24
    pattern: Callable[[list[str]], dict[str, Any]] | None = None  # layer kinds -> config fields


def _types(kinds: list[str]) -> dict[str, Any]:
    return {"layer_types": kinds}


def _nemotron(kinds: list[str]) -> dict[str, Any]:
    return {"hybrid_override_pattern": "".join(kinds)}


def _attn_indices(kinds: list[str]) -> dict[str, Any]:
    return {"attn_layer_indices": [i for i, k in enumerate(kinds) if k == "full_attention"]}


def _period_pattern(period: int, minority: str, majority: str) -> list[str]:
    return [minority if (i + 1) % period == 0 else majority for i in range(NUM_TINY_LAYERS)]


PRESETS: dict[str, TinyPreset] = {
    p.name: p
    for p in (
        TinyPreset(
            "qwen3_next",
            "qwen3_next",
            "Qwen__Qwen3-Next-80B-A3B-Thinking.json",
            {
                **_MOE,
                "num_experts": 4,
                "shared_expert_intermediate_size": 64,
                **_GDN,
            },
            pattern=_types,
        ),
        TinyPreset(
            "qwen3_5_text",
            "qwen3_5_text",
            "Qwen__Qwen3.5-397B-A17B.json",
            dict(_GDN),
            pattern=_types,
        ),
        TinyPreset(
            "kimi_linear",
            "kimi_linear",
            "moonshotai__Kimi-Linear-48B-A3B-Instruct.reconstructed.json",
            {
                **_MOE,
                **_MLA,
                "v_head_dim": 32,
                "num_local_experts": 4,
                "n_shared_experts": 1,
                "linear_num_heads": 4,
                "linear_head_dim": 32,
            },
            pattern=_types,
        ),
        TinyPreset(
            "mimo_v2_flash",
            "mimo_v2_flash",
            "XiaomiMiMo__MiMo-V2-Flash.json",
            {**_MOE, "n_routed_experts": 4, "v_head_dim": 32, "sliding_window": TINY_WINDOW},
            pattern=lambda kinds: {
                "layer_types": kinds,
                "mlp_layer_types": ["dense"] + ["sparse"] * (len(kinds) - 1),
            },
        ),
        TinyPreset(
            "minimax",
            "minimax",
            None,
            {
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "block_size": 64,
                "layer_types": _period_pattern(4, "full_attention", "linear_attention"),
            },
            is_chunk_exact=False,
        ),
        TinyPreset("llama", "llama", "meta-llama__Meta-Llama-3.1-70B.json"),
        TinyPreset("qwen3", "qwen3", "Qwen__Qwen3-235B-A22B.json"),
        TinyPreset(
            "deepseek_v3",
            "deepseek_v3",
            "deepseek-ai__DeepSeek-V3.json",
            {
                **_MOE,
                **_MLA,
                "v_head_dim": 32,
                "n_routed_experts": 4,
                "n_shared_experts": 1,
                "n_group": 1,
                "topk_group": 1,
                "first_k_dense_replace": 1,
            },
        ),
        TinyPreset(
            "gemma3_text",
            "gemma3_text",
            "google__gemma-3-27b-it.reconstructed.json",
            {"sliding_window": TINY_WINDOW, "query_pre_attn_scalar": 32},
            pattern=_types,
        ),
        TinyPreset(
            "gpt_oss",
            "gpt_oss",
            "openai__gpt-oss-120b.json",
            {
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "sliding_window": TINY_WINDOW,
                "intermediate_size": 128,
                "max_position_embeddings": 131072,
            },
            pattern=_types,
        ),
        TinyPreset(
            "jamba",
            "jamba",
            None,
            {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "mamba_d_state": 16,
                "attn_layer_period": 8,
                "attn_layer_offset": 4,
                "use_mamba_kernels": False,
            },
            is_chunk_exact=False,
        ),
        TinyPreset(
            "bamba",
            "bamba",
            None,
            {**_MAMBA2, "mamba_chunk_size": 64, "attn_layer_indices": [3, 7]},
        ),
        TinyPreset(
            "nemotron_h",
            "nemotron_h",
            "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json",
            {
                "mamba_num_heads": 8,
                "mamba_head_dim": 32,
                "ssm_state_size": 16,
                "n_groups": 1,
                "chunk_size": 64,
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 64,
                "moe_shared_expert_intermediate_size": 64,
            },
            pattern=_nemotron,
        ),
        TinyPreset(
            "falcon_h1",
            "falcon_h1",
            None,
            {**_MAMBA2, "mamba_d_ssm": 256, "mamba_chunk_size": 64},
        ),
        TinyPreset(
            "lfm2",
            "lfm2",
            None,
            {"full_attn_idxs": [2, 5, 7], "block_auto_adjust_ff_dim": False},
        ),
    )
}


def shrink_pattern(real_kinds: list[str], num_layers: int = NUM_TINY_LAYERS) -> list[str]:
    """Shrink a real per-layer kind list to num_layers, keeping the minority kind's ratio.

    The minority kind (fewest layers) gets max(1, round(ratio * num_layers)) layers, evenly
    spaced with the last one at the top; the other slots follow the real order of the rest.
    """
    counts = {k: real_kinds.count(k) for k in dict.fromkeys(real_kinds)}
    if len(counts) < 2:
        return [real_kinds[0]] * num_layers
    minority = min(counts, key=lambda k: (counts[k], k != real_kinds[-1]))
    num_minority = max(1, round(counts[minority] * num_layers / len(real_kinds)))
    rest = iter([k for k in real_kinds if k != minority])
    positions = {round((j + 1) * num_layers / num_minority) - 1 for j in range(num_minority)}
    return [minority if i in positions else next(rest) for i in range(num_layers)]


def real_layer_kinds(config: dict[str, Any]) -> list[str]:
    """Per-layer kind names of a real HF config, in the names its transformers class uses."""
    cfg = config.get("text_config", config)
    num_layers = int(cfg["num_hidden_layers"])
    if "layer_types" in cfg:
        return list(cfg["layer_types"])
    if "hybrid_override_pattern" in cfg:
        return list(cfg["hybrid_override_pattern"])
    if "hybrid_layer_pattern" in cfg:  # MiMo: 0 = full, 1 = sliding
        return ["sliding_attention" if x else "full_attention" for x in cfg["hybrid_layer_pattern"]]
    if "full_attention_interval" in cfg:
        period = int(cfg["full_attention_interval"])
        full, lin = "full_attention", "linear_attention"
        return [full if (i + 1) % period == 0 else lin for i in range(num_layers)]
    if "sliding_window_pattern" in cfg:
        period = int(cfg["sliding_window_pattern"])
        full, swa = "full_attention", "sliding_attention"
        return [full if (i + 1) % period == 0 else swa for i in range(num_layers)]
    linear_cfg = cfg.get("linear_attn_config") or {}
    if "full_attn_layers" in linear_cfg:  # Kimi: 1-based indices
        full_1based = set(linear_cfg["full_attn_layers"])
        return [
            "full_attention" if i + 1 in full_1based else "linear_attention"
            for i in range(num_layers)
        ]
    return ["full_attention"] * num_layers


def model_configs_dir() -> Path | None:
    """The real HF configs: the package copy if present, else ../shared/data beside the repo."""
    here = Path(__file__).resolve()
    candidates = [
        here.parents[1] / "models" / "configs",
        here.parents[3].parent / "shared" / "data" / "model-configs",
    ]
    return next((c for c in candidates if c.is_dir()), None)


def _real_config(filename: str) -> dict[str, Any] | None:
    directory = model_configs_dir()
    if directory is None or not (directory / filename).is_file():
        return None
    data: dict[str, Any] = json.loads((directory / filename).read_text())
    return data


def get_preset(name: str) -> TinyPreset:
    if name not in PRESETS:
        raise UserError(f"unknown tiny preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def tiny_config_kwargs(name: str) -> dict[str, Any]:
    """Config fields of a tiny preset: base widths, family overrides and the shrunk pattern."""
    preset = get_preset(name)
    kwargs: dict[str, Any] = {**_BASE, "num_hidden_layers": NUM_TINY_LAYERS, **preset.overrides}
    if "kv_lora_rank" in kwargs:  # MLA: head_dim is derived from qk_rope_head_dim
        del kwargs["head_dim"]
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    real = _real_config(preset.real_config) if preset.real_config else None
    if real is not None and preset.pattern is not None:
        kwargs.update(preset.pattern(shrink_pattern(real_layer_kinds(real))))
    elif preset.pattern is not None:
        kwargs.update(preset.pattern(_fallback_pattern(preset.model_type)))
    return kwargs


def _fallback_pattern(model_type: str) -> list[str]:
    """Pattern used when the real config file is absent: the family's usual ratio."""
    fallback: dict[str, list[str]] = {
        "mimo_v2_flash": _period_pattern(4, "full_attention", "sliding_attention"),
        "gemma3_text": _period_pattern(6, "full_attention", "sliding_attention"),
        "gpt_oss": _period_pattern(2, "full_attention", "sliding_attention"),
        "nemotron_h": list("MEMEMEM*"),
    }
    return fallback.get(model_type, _period_pattern(4, "full_attention", "linear_attention"))
