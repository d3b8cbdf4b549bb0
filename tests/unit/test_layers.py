"""The pure layers stay pure at run time: importing them loads no torch, numpy or asyncio.

import-linter checks the static import graph (`make test` runs it); this checks what a real
import pulls in, including lazy imports done at module import time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_MODULES = [
    "prfaas.types",
    "prfaas.errors",
    "prfaas.messages",
    "prfaas.models",
    "prfaas.perf",
    "prfaas.policy",
    "prfaas.prefix_cache",
    "prfaas.workload",
    "prfaas.casestudy",
]
HEAVY = ["torch", "numpy", "asyncio", "transformers"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_nothing_heavy(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulled in {out.stdout.strip()}"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from prfaas.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
