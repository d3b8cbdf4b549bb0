"""Model specs from Hugging Face config.json: layer kinds, KV bytes per token, fixed state bytes.

Layer 1: standard library only. `load_model_spec("qwen3.5-397b").kv_bytes(32768)` is S_kv(32K).
"""

from prfaas.models.families import known_model_types
from prfaas.models.hf_config import spec_from_config
from prfaas.models.presets import PRESET_FILES, list_presets, load_model_spec
from prfaas.models.spec import KVFootprint, LayerSpec, ModelSpec

__all__ = [
    "PRESET_FILES",
    "KVFootprint",
    "LayerSpec",
    "ModelSpec",
    "known_model_types",
    "list_presets",
    "load_model_spec",
    "spec_from_config",
]
