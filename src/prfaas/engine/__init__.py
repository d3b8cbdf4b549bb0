"""The only torch package: the engine interface (`protocol.ServingEngine`), the torch engine and
an emulated one, KV export/import, sampling, and tiny checkpoints on disk.

Names are imported lazily, so `import prfaas.engine.presets` stays light:
`from prfaas.engine import Engine, load_model` loads torch and transformers on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from prfaas.errors import UserError

ENGINE_EXTRA_HINT = "pip install 'prfaas[engine]'"

_EXPORTS: dict[str, str] = {
    "Engine": "prfaas.engine.runner",
    "RequestState": "prfaas.engine.model_runner",
    "LayerCallback": "prfaas.engine.protocol",
    "ServingEngine": "prfaas.engine.protocol",
    "RequestView": "prfaas.engine.protocol",
    "LoadedModel": "prfaas.engine.loading",
    "load_model": "prfaas.engine.loading",
    "weights_checksum": "prfaas.engine.loading",
    "ExportedState": "prfaas.engine.protocol",
    "LayerState": "prfaas.engine.protocol",
    "ManifestMismatch": "prfaas.engine.validation",
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


def torch_installed() -> bool:
    """Whether the torch engine's extra is installed (the emulated engine needs no torch)."""
    return importlib.util.find_spec("torch") is not None


def require_torch(what: str) -> None:
    """UserError in one line naming the extra to install when torch is not installed: `what`
    (a command, an instance) runs the torch engine."""
    if not torch_installed():
        raise UserError(f"{what} needs the torch engine (not installed): {ENGINE_EXTRA_HINT}")
