"""The only torch package: model runner, KV export/import, sampling, an emulated engine, and
tiny checkpoints on disk.

Names are imported lazily, so `import prfaas.engine.presets` stays light:
`from prfaas.engine import Engine, load_model` loads torch and transformers on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Engine": "prfaas.engine.runner",
    "RequestState": "prfaas.engine.runner",
    "LayerCallback": "prfaas.engine.runner",
    "LoadedModel": "prfaas.engine.loading",
    "load_model": "prfaas.engine.loading",
    "weights_checksum": "prfaas.engine.loading",
    "ExportedState": "prfaas.engine.kv_state",
    "LayerState": "prfaas.engine.kv_state",
    "ManifestMismatch": "prfaas.engine.kv_state",
    "InvalidRequest": "prfaas.engine.validation",
    "save_tiny_checkpoint": "prfaas.engine.checkpoint",
    "EmulatedEngine": "prfaas.engine.emulated",
    "make_emulated_engine": "prfaas.engine.emulated",
    "PRESETS": "prfaas.engine.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prfaas.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
