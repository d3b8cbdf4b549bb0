"""scripts/walk_doc_commands.py without running the docs: how commands are read out of Markdown
(prompts, root prompts, another host's prompt, continuations, heredocs, bash blocks, output
lines), that every command the docs print now has a rule, that a command with no rule fails the
walk instead of passing unchecked, and how a rule's documented edits rewrite a command.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "walk_doc_commands.py"

SNIPPET = """\
Prose with `$ prfaas kv` inline is not a command.

```console
$ prfaas up                                  # router :8000
$ python - <<'PY'
import openai
print("$ not a command inside a heredoc")
PY
prfaas 696320
$ prfaas bench system --rate 2 \\
      --link-drop 40:90:10 --output drop.json
  deployment  rate
# prfaas testbed up --prfaas 1               # root
pd-10$ ray start --head
```

```bash
make demo   # creates .venv
            # a comment line continuing the one above
make test
```

```
$ a plain block is output, not commands
```

```toml
# a TOML comment
```
"""


@pytest.fixture(scope="module")
def walker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("walk_doc_commands", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_prompts_continuations_heredocs_and_bash_lines_parse_into_commands(
    walker: ModuleType,
) -> None:
    commands = walker.extract_commands(SNIPPET, "SNIPPET.md")
    assert [(c.line, c.root, c.host, c.block) for c in commands] == [
        (4, False, "", 0),
        (5, False, "", 0),
        (10, False, "", 0),
        (13, True, "", 0),
        (14, False, "pd-10", 0),
        (18, False, "", 1),
        (20, False, "", 1),
    ]
    assert [c.head for c in commands] == [
        "prfaas up",
        "python - <<'PY'",
        "prfaas bench system --rate 2",
        "prfaas testbed up --prfaas 1",
        "ray start --head",
        "make demo",
        "make test",
    ]
    heredoc = commands[1].text
    assert heredoc.splitlines() == [
        "python - <<'PY'",
        "import openai",
        'print("$ not a command inside a heredoc")',
        "PY",
    ]
    assert commands[2].text.endswith("--link-drop 40:90:10 --output drop.json")


def test_every_command_the_docs_print_has_a_rule(walker: ModuleType) -> None:
    unmatched = [
        command.where
        for name in walker.doc_files(REPO)
        for command in walker.extract_commands((REPO / name).read_text(), name)
        if walker.rule_for(command) is None
    ]
    assert unmatched == [], "add a row to RULES in scripts/walk_doc_commands.py"


def test_a_command_neither_run_nor_listed_as_not_run_fails_the_walk(
    walker: ModuleType, tmp_path: Path
) -> None:
    new = walker.DocCommand(path="README.md", line=7, text="prfaas frobnicate --now")
    assert walker.rule_for(new) is None
    outcome = walker.Walk(tmp_path, tmp_path).outcome_of(new)
    assert outcome.status == "failed"
    assert "no rule" in outcome.problem
    assert walker.failure_line(outcome).startswith("FAILED README.md:7: prfaas frobnicate --now:")


def test_a_skipped_command_is_listed_with_its_reason(walker: ModuleType, tmp_path: Path) -> None:
    docker = walker.DocCommand(path="README.md", line=17, text="docker build -t prfaas .  # x")
    outcome = walker.Walk(tmp_path, tmp_path).outcome_of(docker)
    assert (outcome.status, outcome.why, outcome.ran) == ("not run", "needs a Docker daemon", "")


def test_edits_shorten_a_testbed_command_and_name_the_walks_testbed(
    walker: ModuleType, tmp_path: Path
) -> None:
    printed = (
        "prfaas bench system --testbed prfaas-tb --rates 2.25,2.9,4.5 --num-requests 200 "
        "--output-tokens 128"
    )
    command = walker.DocCommand(path="README.md", line=130, text=printed)
    session = walker.Walk(tmp_path, tmp_path)
    edited = session._edited(printed, walker.rule_for(command))
    name, state_dir = session.context["testbed"], session.context["state_dir"]
    assert edited == (
        f"prfaas bench system --testbed {name} --state-dir {state_dir} --rates 2.25 "
        "--num-requests 5 --output-tokens 16"
    )


def test_the_serving_commands_port_reaches_the_follow_up_snippet(
    walker: ModuleType, tmp_path: Path
) -> None:
    session = walker.Walk(tmp_path, tmp_path)
    up = walker.DocCommand(path="README.md", line=66, text="prfaas up   # router :8000")
    served = session._edited(up.runnable, walker.rule_for(up))
    port = session.context["port"]
    assert served == f"prfaas up --port {port}"
    snippet = walker.DocCommand(
        path="README.md", line=67, text="python - <<'PY'\nurl = 'http://127.0.0.1:8000/v1'\nPY"
    )
    assert f"127.0.0.1:{port}/v1" in session._edited(snippet.text, walker.rule_for(snippet))


def test_flags_go_before_a_printed_comment(walker: ModuleType, tmp_path: Path) -> None:
    up = walker.DocCommand(path="docs/testbed.md", line=10, text="prfaas testbed up   # emulated")
    session = walker.Walk(tmp_path, tmp_path)
    name, state_dir = session.context["testbed"], session.context["state_dir"]
    edited = session._edited(up.runnable, walker.rule_for(up))
    assert edited == f"prfaas testbed up --name {name} --state-dir {state_dir}"


SERVER = "echo 'PrfaaS is up: http://127.0.0.1:{port}/v1'; while :; do sleep 0.05; done"


@pytest.fixture
def toy_servers(walker: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two serving rules around a shell loop: `polite` exits on Ctrl-C, `stubborn` ignores it."""
    monkeypatch.setattr(walker, "SERVE_STOP_TIMEOUT_S", 3.0)
    monkeypatch.setattr(walker, "RULES", (
        walker.Rule("polite", "serve", edits=((r".*", "trap 'exit 0' INT; " + SERVER),)),
        walker.Rule("stubborn", "serve", edits=((r".*", "trap '' INT; " + SERVER),)),
    ))  # fmt: skip


@pytest.mark.usefixtures("toy_servers")
def test_a_second_server_in_a_block_stops_the_first_with_ctrl_c(
    walker: ModuleType, tmp_path: Path
) -> None:
    session = walker.Walk(tmp_path, tmp_path)
    first = session.outcome_of(walker.DocCommand(path="X.md", line=1, text="polite"))
    first_pid = session.server.proc.pid
    try:
        second = session.outcome_of(walker.DocCommand(path="X.md", line=2, text="polite"))
        first_alive = walker.group_alive(first_pid)
    finally:
        walker.kill_group(first_pid)
        session.stop_server()
    assert not first_alive
    assert (first.status, first.problem) == ("shortened", "")
    assert (second.status, second.problem) == ("shortened", "")


@pytest.mark.usefixtures("toy_servers")
def test_a_server_that_ignores_ctrl_c_fails_and_is_killed(
    walker: ModuleType, tmp_path: Path
) -> None:
    session = walker.Walk(tmp_path, tmp_path)
    outcome = session.outcome_of(walker.DocCommand(path="X.md", line=1, text="stubborn"))
    pid = session.server.proc.pid
    session.stop_server()
    assert outcome.status == "failed"
    assert outcome.problem.startswith("Ctrl-C: exit status None")
    assert walker.poll_until(lambda: not walker.group_alive(pid), 30.0), "group not killed"
