"""Model loading: a local checkpoint directory, or a tiny random-weight preset built offline.

Tiny presets are deterministic: the same preset, dtype and seed give bit-identical weights in any
process, so a second instance rebuilds the model instead of receiving a checkpoint; the weight
checksum proves it. Nothing is downloaded: local paths load with `local_files_only=True`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prfaas.engine.presets import PRESETS, get_preset, tiny_config_kwargs
from prfaas.engine.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from prfaas.errors import UserError

_AUTO_MODEL: Any = AutoModelForCausalLM  # untyped in transformers

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A causal LM ready to serve, with its tokenizer and identity."""

    name: str  # preset name or checkpoint directory
    arch: str  # transformers model_type
    model: Any  # transformers PreTrainedModel in eval mode
    tokenizer: Tokenizer
    dtype: torch.dtype
    is_chunk_exact: bool  # chunked prefill equals one-shot prefill for this architecture

    @property
    def config(self) -> Any:
        return self.model.config

    @functools.cached_property
    def fingerprint(self) -> str:
        """The weights' identity (`weights_checksum`), hashed on first use and kept."""
        return weights_checksum(self.model)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: token ids must lie in [0, vocab_size)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def max_positions(self) -> int | None:
        """The config's `max_position_embeddings`, or None when it states none."""
        text_config = self.config.get_text_config(decoder=True)
        limit = getattr(text_config, "max_position_embeddings", None)
        return None if limit is None else int(limit)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use fp32 or bf16")
    return DTYPES[name]


def load_model(name_or_path: str, dtype: str = "fp32", seed: int = 0) -> LoadedModel:
    """A tiny preset by name, or a local directory holding config.json, weights and tokenizer."""
    torch_dtype = parse_dtype(dtype)
    if name_or_path in PRESETS:
        return _load_tiny(name_or_path, torch_dtype, seed)
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        known = ", ".join(PRESETS)
        raise UserError(
            f"{name_or_path!r} is neither a tiny preset ({known}) nor a model directory"
        )
    return _load_local(path, torch_dtype)


def _load_tiny(name: str, dtype: torch.dtype, seed: int) -> LoadedModel:
    preset = get_preset(name)
    config = AutoConfig.for_model(preset.model_type, **tiny_config_kwargs(name))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _AUTO_MODEL.from_config(config, dtype=dtype)
    model.eval()
    tokenizer = ByteTokenizer(config.bos_token_id, config.eos_token_id, config.pad_token_id)
    return LoadedModel(name, preset.model_type, model, tokenizer, dtype, preset.is_chunk_exact)


def _load_local(path: Path, dtype: torch.dtype) -> LoadedModel:
    try:
        model = _AUTO_MODEL.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model weights from {path}: {exc}") from exc
    try:
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"no usable tokenizer files in {path}: {exc}") from exc
    arch = str(model.config.model_type)
    is_chunk_exact = arch not in {"jamba", "minimax"}
    return LoadedModel(str(path), arch, model, tokenizer, dtype, is_chunk_exact)


def weights_checksum(model: Any) -> str:
    """sha256 over every parameter and buffer, in name order: equal iff the weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().contiguous().reshape(-1)  # [num_elements]
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
