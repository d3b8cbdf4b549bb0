"""Tiny random checkpoints for the vLLM tests, made locally with `save_pretrained` (nothing is
downloaded): the project's tiny presets with head dims of 64, which vLLM's CPU kernels accept
(they refuse 32). The prompts are token ids (`skip_tokenizer_init`), so no tokenizer is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prfaas.engine.presets import tiny_config_kwargs

HEAD_DIMS_64 = {
    "llama": {"head_dim": 64},
    "gemma3_text": {"head_dim": 64, "query_pre_attn_scalar": 64},
    "qwen3_next": {"head_dim": 64, "linear_key_head_dim": 64, "linear_value_head_dim": 64},
}


def save_checkpoint(preset: str, directory: Path, seed: int = 0) -> Path:
    """Save the preset's tiny model (seeded random weights, bf16) to `directory`."""
    kwargs: dict[str, Any] = {**tiny_config_kwargs(preset), **HEAD_DIMS_64[preset]}
    config = AutoConfig.for_model(preset, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    return directory
