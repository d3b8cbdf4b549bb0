"""Every command README.md and docs/*.md print runs as printed (or shortened by the documented
rules of scripts/walk_doc_commands.py) from a scratch copy of this tree, or is listed as not run
with its reason: the whole walk, servers stopped with Ctrl-C included, and the tree is left as
it was found.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WALK_TIMEOUT_S = 1500  # a generous bound for a loaded two-core machine


def _tree_state() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.mark.slow
def test_every_doc_command_runs_or_is_listed_with_a_reason() -> None:
    before = _tree_state()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "walk_doc_commands.py"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=WALK_TIMEOUT_S,
    )  # fmt: skip
    failures = [line for line in done.stderr.splitlines() if line.startswith("FAILED ")]
    assert done.returncode == 0 and not failures, "\n".join(failures) or done.stderr[-3000:]
    outcomes = json.loads(done.stdout)
    by_status: dict[str, list[str]] = {}
    for outcome in outcomes:
        by_status.setdefault(outcome["status"], []).append(outcome["where"])
    assert set(by_status) <= {"ran", "shortened", "not run", "same"}
    ran = {o["command"].split()[0] + " " + o["command"].split()[1] for o in outcomes if o["ran"]}
    assert {"make demo", "prfaas kv", "prfaas plan", "prfaas sim", "prfaas up"} <= ran
    assert all(o["why"] for o in outcomes if o["status"] == "not run")
    assert _tree_state() == before, "the walk left files in the tree"
