"""Static purity check of policy/: no clock reads, no global RNG, no environment, no I/O.

Complements import-linter (which sees only imports): this scans the AST for calls and attribute
uses that import-linter cannot see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prfaas.policy

POLICY_DIR = Path(prfaas.policy.__file__).parent
FORBIDDEN_MODULES = {"time", "datetime", "os", "socket", "asyncio", "threading", "subprocess"}
FORBIDDEN_CALLS = {"open", "print", "input"}


def _called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _violations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"import {n}" for n in names if n and n.split(".")[0] in FORBIDDEN_MODULES]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "random" and node.attr != "Random":
                found.append(f"random.{node.attr} (global RNG)")
            if node.value.id in FORBIDDEN_MODULES:
                found.append(f"{node.value.id}.{node.attr}")
        if _called_name(node) in FORBIDDEN_CALLS:
            found.append(f"{_called_name(node)}()")
    return found


def test_policy_sources_are_pure() -> None:
    files = sorted(POLICY_DIR.rglob("*.py"))
    assert files
    problems = {
        str(f.relative_to(POLICY_DIR)): v
        for f in files
        if (v := _violations(ast.parse(f.read_text(), filename=str(f))))
    }
    assert problems == {}


def test_scanner_catches_impure_code() -> None:
    bad = "import time\nimport random\nx = random.random()\nt = time.monotonic()\nopen('f')\n"
    found = _violations(ast.parse(bad))
    assert "import time" in found
    assert "random.random (global RNG)" in found
    assert "time.monotonic" in found
    assert "open()" in found
    assert _violations(ast.parse("import random\nr = random.Random(3)\n")) == []
