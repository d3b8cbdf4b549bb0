"""Model presets: short names for the config.json files shipped in `prfaas/models/configs/`.

`load_model_spec` is the one entry point: a preset name, a path to a config.json, or a parsed
dict. Reading files is the only I/O here; every failure becomes a one-line `UserError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.models.hf_config import spec_from_config
from prfaas.models.spec import ModelSpec

# preset name -> file in prfaas/models/configs (Hugging Face "org/name" with "/" -> "__")
PRESET_FILES: dict[str, str] = {
    "kimi-linear-48b": "moonshotai__Kimi-Linear-48B-A3B-Instruct.reconstructed.json",
    "qwen3-next-80b": "Qwen__Qwen3-Next-80B-A3B-Thinking.json",
    "qwen3.5-397b": "Qwen__Qwen3.5-397B-A17B.json",
    "mimo-v2-flash": "XiaomiMiMo__MiMo-V2-Flash.json",
    "minimax-m2.5": "MiniMaxAI__MiniMax-M2.5.json",
    "qwen3-235b": "Qwen__Qwen3-235B-A22B.json",
    "deepseek-v3": "deepseek-ai__DeepSeek-V3.json",
    "kimi-k2": "moonshotai__Kimi-K2-Instruct.json",
    "kimi-k3": "moonshotai__Kimi-K3.json",
    "llama-3.1-70b": "meta-llama__Meta-Llama-3.1-70B.json",
    "gpt-oss-120b": "openai__gpt-oss-120b.json",
    "gemma-3-27b": "google__gemma-3-27b-it.reconstructed.json",
    "nemotron-h-56b": "nvidia__Nemotron-H-56B-Base-8K.json",
    "nemotron-3-nano": "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.json",
    "nemotron-3-super": "nvidia__NVIDIA-Nemotron-3-Super-120B-A12B-FP8.json",
    "ring-2.5-1t": "inclusionAI__Ring-2.5-1T.reconstructed.json",
    "paper-1t": "paper-1t.inferred.json",
}


def list_presets() -> list[str]:
    """Preset names accepted by `load_model_spec`, sorted."""
    return sorted(PRESET_FILES)


def _configs_dir() -> Any:
    return resources.files("prfaas.models").joinpath("configs")


def preset_file_name(name: str) -> str | None:
    """The shipped file of a preset name, a file stem or a HF id ("Qwen/Qwen3-235B-A22B")."""
    key = name.strip().lower()
    if key in PRESET_FILES:
        return PRESET_FILES[key]
    wanted = key.replace("/", "__")
    for file_name in PRESET_FILES.values():
        stem = file_name.removesuffix(".json").removesuffix(".reconstructed")
        if wanted in (stem.lower(), file_name.lower()):
            return file_name
    return None


def _preset_name_of(file_name: str) -> str:
    return next(n for n, f in PRESET_FILES.items() if f == file_name)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config.json; a missing, unreadable, special, oversized, non-UTF-8 or malformed
    file is a UserError."""
    return _parse_json(read_text_file(path), str(path))


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a JSON object, not {type(data).__name__}")
    return data


def load_model_spec(source: str | Path | Mapping[str, Any]) -> ModelSpec:
    """A ModelSpec from a preset name, a path to a config.json, or an already parsed config."""
    if isinstance(source, Mapping):
        name = str(source.get("_name_or_path") or source.get("model_type") or "dict")
        return spec_from_config(source, name=name, source="dict")
    text = str(source)
    file_name = preset_file_name(text) if isinstance(source, str) else None
    if file_name is not None:
        resource = _configs_dir().joinpath(file_name)
        config = _parse_json(resource.read_text(encoding="utf-8"), file_name)
        name = _preset_name_of(file_name)
        return spec_from_config(config, name=name, source=f"preset:{name}")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise UserError(
            f"unknown model {text!r}: not a preset ({', '.join(list_presets())}) and no such file"
        )
    config = read_config_file(path)
    stem = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_config(config, name=stem, source=str(path))
