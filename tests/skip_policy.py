"""Skips in CI: with $PRFAAS_CI_STRICT_SKIPS set (`.ci/run` sets it), a skipped test fails the run
unless its node id is on the allow-list `tests/ci_skips.txt`, each entry with the reason the test
cannot run on a clean CI machine. Outside CI a skip stays a skip.

Allow-list lines: `<node id> # <why>`; blank lines and lines starting with `#` are comments. A
module skipped as a whole is listed by its path (`tests/e2e/test_x.py`). Registered by
`tests/conftest.py` (`register_strict_skips`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STRICT_ENV = "PRFAAS_CI_STRICT_SKIPS"
ALLOW_LIST_PATH = Path(__file__).with_name("ci_skips.txt")


def read_allow_list(path: Path) -> dict[str, str]:
    """Node id -> why, from the allow-list file; an entry without a reason is a usage error."""
    allowed: dict[str, str] = {}
    for line_number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        node_id, _, why = line.partition(" # ")
        if not why.strip():
            raise pytest.UsageError(f"{path}:{line_number}: `{line}` needs ` # <why>`")
        allowed[node_id.strip()] = why.strip()
    return allowed


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line number, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def register_strict_skips(config: pytest.Config, allow_list_path: Path = ALLOW_LIST_PATH) -> None:
    """Register `StrictSkips` when $PRFAAS_CI_STRICT_SKIPS is set to anything but empty or 0."""
    if os.environ.get(STRICT_ENV, "") in ("", "0"):
        return
    config.pluginmanager.register(StrictSkips(read_allow_list(allow_list_path)), "strict-skips")


class StrictSkips:
    """Records every skip; at the end, fails the session for the ones not on the allow-list."""

    def __init__(self, allowed: dict[str, str]) -> None:
        self.allowed = allowed
        self.skipped: dict[str, str] = {}  # node id -> skip reason

    def unlisted(self) -> dict[str, str]:
        return {node: why for node, why in self.skipped.items() if node not in self.allowed}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # xfail is not a skip
            self.skipped[report.nodeid] = _skip_reason(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a whole module skipped (allow_module_level, importorskip)
            self.skipped[report.nodeid] = _skip_reason(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unlisted() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        unlisted = self.unlisted()
        if not unlisted:
            return
        terminalreporter.section(f"skips not allowed in CI (${STRICT_ENV})", red=True)
        for node_id, why in sorted(unlisted.items()):
            terminalreporter.write_line(f"{node_id}: {why}")
        terminalreporter.write_line(
            f"{len(unlisted)} skipped test(s) fail this run: make them run here, or list each "
            f"in {ALLOW_LIST_PATH.name} as `<node id> # <why it cannot run on a CI machine>`."
        )
