"""The CI skip policy (`tests/skip_policy.py`): with $PRFAAS_CI_STRICT_SKIPS set, a skipped test or
module fails the run unless the allow-list names it with a reason; xfail is no skip; without the
variable a skip stays a skip. Each case runs pytest in a fresh process on a small test folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]  # where skip_policy.py lives
STRICT = {"PRFAAS_CI_STRICT_SKIPS": "1"}

CONFTEST = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(TESTS_DIR)!r})
from skip_policy import register_strict_skips

def pytest_configure(config):
    register_strict_skips(config, Path(__file__).with_name("allowed.txt"))
"""
TESTS = """
import pytest

def test_runs():
    pass

def test_needs_a_gpu():
    pytest.skip("no GPU here")

def test_needs_openssl():
    pytest.skip("openssl is missing")

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False
"""
MODULE_SKIP = """
import pytest
pytest.skip("no network namespaces", allow_module_level=True)
"""


def _run(folder: Path, allowed: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (folder / "allowed.txt").write_text(allowed)
    clean = {k: v for k, v in os.environ.items() if k != "PRFAAS_CI_STRICT_SKIPS"}
    clean["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # no third-party plugins: a faster start
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**clean, **env},
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_a.py").write_text(TESTS)
    (tmp_path / "test_netns.py").write_text(MODULE_SKIP)
    return tmp_path


def test_an_unlisted_skip_fails_the_strict_run_and_is_named(folder: Path) -> None:
    allowed = "# comment\n\ntest_a.py::test_needs_a_gpu # the CI machine has no GPU\n"
    result = _run(folder, allowed, STRICT)
    assert result.returncode == 1, result.stdout
    section = result.stdout.split("skips not allowed in CI", 1)[1]
    assert "test_a.py::test_needs_openssl: openssl is missing" in section
    assert "test_netns.py: no network namespaces" in section
    assert "test_needs_a_gpu" not in section and "test_known_bug" not in section
    assert "2 skipped test(s) fail this run" in section


def test_listed_skips_and_non_strict_runs_pass(folder: Path) -> None:
    every = (
        "test_a.py::test_needs_a_gpu # no GPU\n"
        "test_a.py::test_needs_openssl # no openssl\n"
        "test_netns.py # no namespaces\n"
    )
    assert _run(folder, every, STRICT).returncode == 0
    relaxed = _run(folder, "", {"PRFAAS_CI_STRICT_SKIPS": "0"})
    assert relaxed.returncode == 0 and "skips not allowed" not in relaxed.stdout


def test_an_entry_without_a_reason_is_refused(folder: Path) -> None:
    result = _run(folder, "test_a.py::test_needs_a_gpu\n", STRICT)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "allowed.txt:1" in result.stderr and "needs ` # <why>`" in result.stderr


def test_a_failing_run_keeps_its_status(folder: Path) -> None:
    (folder / "test_b.py").write_text("def test_fails():\n    assert False\n")
    assert _run(folder, "", STRICT).returncode == pytest.ExitCode.TESTS_FAILED
