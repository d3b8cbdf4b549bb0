"""Run every command README.md and docs/*.md print, as printed, from a scratch copy of the clone.

Commands are the `$ ` (user) and `# ` (root) lines of ```console blocks, with their `\\`
continuation lines and heredoc bodies (a `HOST$ ` prompt names another machine), and every
non-comment line of ```bash blocks. Each one matches a row of RULES, first match wins: it runs
as printed, runs with the row's documented edits (shorter runs, free ports, a private testbed
name), starts as a server whose block's later commands run against it until it is stopped with
Ctrl-C (SIGINT to its process group, which must end it cleanly), or is listed as not run with
the row's reason. A command no row matches fails the walk, so a new doc command cannot go
unchecked. Where the docs show a command's output, the row's `check` pattern must appear in it.

The copy holds the tree's tracked and untracked-but-not-ignored files; its `.venv` links to the
virtual environment in use (`--venv`, default the clone's `.venv`, else this Python's) with a
fresh install stamp, so `make demo` starts at once; `PYTHONPATH` is the copy's `src/`;
`PRFAAS_RUN_DIR` is private, so `prfaas status` finds only the walk's own `prfaas up`. Nothing
is written to the clone. Every command has a timeout; every server, testbed and process group
the walk started is stopped at the end, failed or not.

    .venv/bin/python scripts/walk_doc_commands.py [--json] [--only FILE ...] [--venv DIR]

Exit status 0 when every command ran or is listed as not run, 1 otherwise (one line a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONSOLE_LANGS = frozenset({"console", "shell-session"})
SHELL_LANGS = frozenset({"bash", "sh", "shell"})
FENCE = re.compile(r"^\s*```(\S*)")
PROMPT = re.compile(r"^(?P<host>[\w.-]*)(?P<sign>[$#]) (?P<body>\S.*)$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
TRAILING_COMMENT = re.compile(r"\s+#\s.*$")
DEFAULT_TIMEOUT_S = 240.0
SERVE_READY_TIMEOUT_S = 240.0
SERVE_STOP_TIMEOUT_S = 90.0
STDERR_TAIL_CHARS = 300
BANNER = re.compile(r"PrfaaS is up: http://[\w.\[\]]+:(\d+)/v1")


@dataclass(frozen=True)
class DocCommand:
    """One command as a doc prints it (prompt removed; continuations and heredoc kept)."""

    path: str
    line: int
    text: str
    root: bool = False
    host: str = ""
    block: int = 0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runnable(self) -> str:
        """The text less the first line's trailing comment (edits then append at the end)."""
        first, newline, rest = self.text.partition("\n")
        return TRAILING_COMMENT.sub("", first) + newline + rest

    @property
    def head(self) -> str:
        """The first line less its trailing comment and `\\`, spaces squeezed: what rules match."""
        first = TRAILING_COMMENT.sub("", self.text.splitlines()[0]).rstrip().removesuffix("\\")
        return " ".join(first.split())


def extract_commands(markdown: str, path: str) -> list[DocCommand]:
    """Every command of the ```console and ```bash blocks of one Markdown file, in order."""
    lines = markdown.splitlines()
    commands: list[DocCommand] = []
    lang: str | None = None
    block = -1
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence:
            lang, block = (fence.group(1), block + 1) if lang is None else (None, block)
            index += 1
            continue
        found = _command_at(lines, index, lang)
        if found is None:
            index += 1
            continue
        command, num_lines = found
        commands.append(DocCommand(path=path, line=index + 1, block=block, **command))
        index += num_lines
    return commands


def _command_at(
    lines: list[str], index: int, lang: str | None
) -> tuple[dict[str, Any], int] | None:
    """The command starting at `lines[index]` in a block of `lang` and its line count, or None."""
    line = lines[index]
    if lang in CONSOLE_LANGS:
        prompt = PROMPT.match(line)
        if prompt is None or (prompt["sign"] == "#" and prompt["host"]):
            return None
        first = prompt["body"]
        fields = {"root": prompt["sign"] == "#", "host": prompt["host"]}
    elif lang in SHELL_LANGS:
        first = line.strip()
        if not first or first.startswith("#"):
            return None
        fields = {"root": False, "host": ""}
    else:
        return None
    body = _command_lines(lines, index, first)
    return {"text": "\n".join(body), **fields}, len(body)


def _command_lines(lines: list[str], index: int, first: str) -> list[str]:
    """`first` plus the lines that continue it: after a trailing `\\`, and a heredoc's body."""
    body = [first]
    while body[-1].rstrip().endswith("\\") and index + len(body) < len(lines):
        body.append(lines[index + len(body)])
    heredoc = HEREDOC.search(first)
    if heredoc:
        while index + len(body) < len(lines):
            body.append(lines[index + len(body)])
            if body[-1].strip() == heredoc.group(2):
                break
    return body


@dataclass(frozen=True)
class Rule:
    """What the walk does with the commands whose head matches `pattern` (re.fullmatch).

    action: "run" (as printed, or with `edits`), "serve" (a server: the block's later commands
    run against it, then Ctrl-C) or "skip" (not run; `why` says why). `edits` are (regex,
    replacement) pairs applied to the whole command; a replacement may name {port} (the serving
    command's free port), {testbed} (the walk's testbed name) and {state_dir}. `check`: a regex
    (multiline) its stdout must contain. `needs`: "root" (root with ip and tc) or an executable.
    `once`: a later identical command is reported as the same as the first.
    """

    pattern: str
    action: str
    why: str = ""
    edits: tuple[tuple[str, str], ...] = ()
    check: str = ""
    needs: str = ""
    once: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    exit_codes: tuple[int, ...] = (0,)  # the statuses that are not a failure


TESTBED_FLAGS = " --name {testbed} --state-dir {state_dir}"
TESTBED_WHY = "a private testbed name and state directory, next to any testbed a user runs"
PLAN_TABLE = r"Λ_max \(req/s\)"
SIM_TABLE = r"deployment\s+split\s+t\s+rate\s+Λ_max\s+thru\s+goodput\s+TTFT p50"
KV_TABLE = r"tokens\s+S_kv MiB\s+KV B/token\s+state B\s+T_prefill s\s+Phi_kv Gbps"
NOT_HERE_TESTBED = "12 instances (the equal-hardware comparison); tests/e2e/test_testbed.py "
RULES: tuple[Rule, ...] = (
    Rule(
        "make demo",
        "run",
        check=r"request\s+prompt tok\s+route\s+TTFT s\s+decode tok/s\s+"
        r"KV bytes moved[\s\S]*^pd_prefill: [\s\S]*^prfaas: ",
        once=True,
    ),
    Rule(
        "make test",
        "skip",
        "the test suite itself, which runs this walk (tests/e2e/test_doc_commands.py)",
    ),
    Rule(
        r"pip install -c requirements\.lock \.",
        "skip",
        "tests/e2e/test_lean_install.py installs it in a throwaway venv",
    ),
    Rule(
        r"pip install .*",
        "skip",
        "downloads torch and the pinned packages (minutes); make "
        "install runs the same pip lines with every extra, tests/unit/test_packaging.py "
        "compares them with the Dockerfile's",
    ),
    Rule(r"docker build .*", "skip", "needs a Docker daemon"),
    Rule(
        r"(\.venv/bin/)?prfaas up",
        "serve",
        "a free port instead of :8000",
        edits=((r"prfaas up", "prfaas up --port {port}"),),
    ),
    Rule(
        r"prfaas up --config examples/emulated-1t\.toml",
        "serve",
        "the copy's examples/emulated-1t.toml listens on free ports instead of 18500-18812",
    ),
    Rule(
        r"python - <<'PY'",
        "run",
        "the serving command's free port instead of :8000",
        edits=((r"127\.0\.0\.1:8000", "127.0.0.1:{port}"),),
        check=r"^(prfaas|pd_prefill) \d+$",
    ),
    Rule(
        r"\.venv/bin/prfaas status",
        "run",
        check=r"^router http://\S+: ready\n\s+instance\s+"
        r"cluster\s+node\s+role\s+health",
    ),
    Rule(
        r"prfaas status --deployment /tmp/prfaas-up-XXXX/deployment\.json",
        "skip",
        "XXXX stands for a running `prfaas up --ray`'s directory",
    ),
    Rule(
        r"prfaas up --ray.*",
        "skip",
        "starts Ray (tests/e2e/test_ray.py runs prfaas up --ray and prfaas status on one machine)",
    ),
    Rule(
        r"prfaas up --engine torch --port 8300 --threshold 512 &",
        "skip",
        "the server of the GuideLLM run next to it",
    ),
    Rule(
        r"prfaas profile --url .*",
        "skip",
        "measures a server the reader runs; tests/e2e/test_profile_command.py runs it against a "
        "live deployment and reads its file with kv and plan",
    ),
    Rule(
        r"prfaas (plan .*profile:h200\.json|kv --profile h200\.json)",
        "skip",
        "reads the file the prfaas profile line above writes (tests/e2e/test_profile_command.py)",
    ),
    Rule(
        r"prfaas doctor .*",
        "run",
        "exit 1 means this host limits the link: the walk checks the report, not the host",
        check=r"^link: .* bandwidth-delay product[\s\S]*net\.ipv4\.tcp_wmem",
        exit_codes=(0, 1),
    ),
    Rule(r"prfaas kv --model \S+ --lengths 32K --json", "run", check=r'"s_kv_mib": 7936\.0'),
    Rule(r"prfaas kv .*", "run", check=KV_TABLE),
    Rule(r"prfaas plan .*--json", "run", check=r'"homogeneous": \{'),
    Rule(r"prfaas plan .*--plot \S+", "run", check=r"^wrote \S+fig5_threshold\.png"),
    Rule(r"prfaas plan .*--ttft-slo-s", "run", check=r"^cheapest of \d+ splits meeting it"),
    Rule(
        r"prfaas plan .*",
        "run",
        check=r"PrfaaS-PD\s+homogeneous PD\s+naive heterogeneous"
        r"[\s\S]*" + PLAN_TABLE,
    ),
    Rule(
        r"prfaas sim .*--find-max-rate",
        "run",
        "each rate probe simulates 300 requests instead of an hour of arrivals",
        edits=((r"--find-max-rate", "--find-max-rate --num-requests 300"),),
        check=r"max rate \(req/s\)\s+model Λ_max",
    ),
    Rule(
        r"prfaas sim --topology .*",
        "run",
        check=SIM_TABLE + r"[\s\S]*provider\s+hardware\s+instances\s+requests\s+share",
    ),
    Rule(r"prfaas sim .*", "run", check=SIM_TABLE),
    Rule(r"xz -dk tests/data/traces/\S+", "run"),
    Rule(
        r"prfaas verify --json",
        "run",
        "one architecture instead of all 15; tests/e2e/test_verify.py runs the required ones",
        edits=((r"--json", "--json --arch qwen3_next"),),
        check=r'"identical": true',
    ),
    Rule(
        r"prfaas bench transport",
        "run",
        "16 MiB, one repeat and one round instead of 256 MiB x 3 x 2",
        edits=((r"transport", "transport --size 16MiB --repeats 1 --rounds 1"),),
        check=r"goodput_gbps[\s\S]*raw_socket_gbps[\s\S]*ratio",
    ),
    Rule(
        r"prfaas bench system --config examples/emulated-two-providers-bench\.toml --rate \S+",
        "run",
        "4 requests instead of 240: the two-provider deployment starts, routes and reports the "
        "per-provider split next to the simulator's",
        edits=((r"--num-requests \d+", "--num-requests 4"),),
        check=r"provider\s+requests live",
    ),
    Rule(
        r"prfaas bench system --config topology\.toml.*",
        "skip",
        "topology.toml (and HOST) "
        "stand for the user's deployment; tests/e2e/test_bench_system.py runs these",
    ),
    Rule(
        r"prfaas testbed up --paper-curves --prfaas 4 --pd-prefill 3 --pd-decode 5 "
        r"--payload-scale 0\.002",
        "run",
        "1 instance per role instead of 4/3/5; " + TESTBED_WHY,
        edits=(
            (r"--prfaas 4 --pd-prefill 3 --pd-decode 5", "--prfaas 1 --pd-prefill 1 --pd-decode 1"),
            (r"$", TESTBED_FLAGS),
        ),
        check=r"is up in",
        needs="root",
    ),
    Rule(
        r"prfaas testbed up --delay-ms 25 --jitter-ms 2 --jitter-distribution normal "
        r"--loss-pct 0\.1",
        "run",
        TESTBED_WHY,
        edits=((r"$", TESTBED_FLAGS),),
        check=r"WAN delay line: delay 25 ms one way",
        needs="root",
    ),
    Rule(
        r"prfaas testbed up",
        "run",
        TESTBED_WHY,
        edits=((r"$", TESTBED_FLAGS),),
        check=r"is up in",
        needs="root",
    ),
    Rule(
        r"prfaas testbed up .*(\.\.\.|--pd-decode [24]\b.*)",
        "skip",
        NOT_HERE_TESTBED + "starts the homogeneous deployment",
    ),
    Rule(
        r"prfaas bench system --testbed prfaas-tb --rates \S+ --num-requests \d+ "
        r"--output-tokens \d+",
        "run",
        "one rate, 5 requests of 16 output tokens; " + TESTBED_WHY,
        edits=(
            (r"--testbed prfaas-tb", "--testbed {testbed} --state-dir {state_dir}"),
            (r"--rates \S+", "--rates 2.25"),
            (r"--num-requests \d+", "--num-requests 5"),
            (r"--output-tokens \d+", "--output-tokens 16"),
        ),
        check=r"TTFT",
        needs="root",
    ),
    Rule(
        r"prfaas bench system --testbed prfaas-tb --rate 2\.7 .*",
        "skip",
        "on the 12-instance testbed above; tests/e2e/test_testbed.py runs bench system with a link "
        "drop",
    ),
    Rule(
        r"prfaas testbed status \[--json\]",
        "run",
        "`[--json]` is optional; " + TESTBED_WHY,
        edits=((r" \[--json\]", TESTBED_FLAGS),),
        needs="root",
    ),
    Rule(
        r"prfaas testbed link --gbps 10",
        "run",
        TESTBED_WHY,
        edits=((r"$", TESTBED_FLAGS),),
        needs="root",
    ),
    Rule(
        r"prfaas testbed link --delay-ms \d+( --loss-pct \d+)?",
        "run",
        TESTBED_WHY,
        edits=((r"$", TESTBED_FLAGS),),
        check=r"delay \d+ ms one way",
        needs="root",
    ),
    Rule(
        r"prfaas testbed status --json",
        "run",
        TESTBED_WHY,
        edits=((r"$", TESTBED_FLAGS),),
        check=r'"delay"',
        needs="root",
    ),
    Rule(
        r"prfaas testbed link --down \| --up",
        "run",
        "both, one after the other; " + TESTBED_WHY,
        edits=(
            (
                r"--down \| --up",
                "--down" + TESTBED_FLAGS + " && prfaas testbed link --up" + TESTBED_FLAGS,
            ),
        ),
        needs="root",
    ),
    Rule(r"prfaas testbed down", "run", TESTBED_WHY, edits=((r"$", TESTBED_FLAGS),), needs="root"),
    Rule(
        r"ip netns exec prfaas-tb-client python my_client\.py .*",
        "skip",
        "my_client.py stands for the user's own client",
    ),
    Rule(
        r"(TRACES=\S+ )?scripts/testbed_results\.sh .*",
        "skip",
        "every testbed scenario of docs/results.md: about an hour",
    ),
    Rule(
        r"\.venv/bin/python scripts/testbed_report\.py .*",
        "skip",
        "reads the JSON files scripts/testbed_results.sh writes",
    ),
    Rule(
        r"(python -m venv /tmp/glvenv|/tmp/glvenv/).*",
        "skip",
        "installs GuideLLM from PyPI and a tokenizer from Hugging Face",
    ),
    Rule(
        r"PYTHONPATH=src \.venv/bin/python scripts/train_tiny_hybrid\.py.*",
        "skip",
        "trains for about 25 minutes on 2 cores; its result ships in data/tiny-trained/",
    ),
    Rule(
        r"PYTHONPATH=src \.venv/bin/python scripts/kv_codec_quality\.py.*",
        "run",
        "one short window of the shipped model and one preset",
        edits=((r"$", " --windows 1 --prefix-len 64 --positions 8 --proxy-presets qwen3_next"),),
        check=r"next-token agreement",
    ),
    Rule(r"ray start .*", "skip", "on the machines of two datacenters"),
    Rule(r"kubectl .*", "skip", "needs a Kubernetes cluster with the KubeRay operator"),
    Rule(r"promtool check config \S+", "run", needs="promtool"),
    Rule(r"prometheus --config\.file=\S+", "skip", "a Prometheus server: runs until stopped"),
)


def rule_for(command: DocCommand) -> Rule | None:
    """The first rule whose pattern matches the command's head."""
    for rule in RULES:
        if re.fullmatch(rule.pattern, command.head):
            return rule
    return None


def doc_files(repo: Path) -> list[str]:
    """README.md and every docs/*.md, relative to `repo`."""
    return ["README.md", *sorted(p.relative_to(repo).as_posix() for p in repo.glob("docs/*.md"))]


@dataclass
class Outcome:
    """What happened to one command."""

    where: str
    command: str
    status: str  # "ran", "shortened", "not run", "same", "failed"
    why: str = ""
    ran: str = ""
    seconds: float = 0.0
    problem: str = ""


@dataclass
class Server:
    """A serving command started in the background, in its own process group."""

    outcome: Outcome
    proc: subprocess.Popen[str]
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)


class Walk:
    """One walk over the docs in a scratch copy `work` of the tree (its `.venv/bin` on PATH)."""

    def __init__(self, work: Path, scratch: Path) -> None:
        self.work = work
        self.scratch = scratch
        self.env = walk_env(work, scratch)
        self.context = {"port": "", "testbed": f"dw-{os.getpid() % 100000}",
                        "state_dir": str(scratch / "testbed-state")}  # fmt: skip
        self.first_run: dict[str, str] = {}
        self.server: Server | None = None
        self.testbed_started = False
        self.can_root = os.geteuid() == 0 and all(shutil.which(x) for x in ("ip", "tc"))

    def outcome_of(self, command: DocCommand) -> Outcome:
        """Run, serve or list one command; never raises for the command's failure."""
        rule = rule_for(command)
        outcome = Outcome(where=command.where, command=command.text, status="not run")
        if rule is None:
            outcome.status, outcome.problem = "failed", "no rule: neither run nor listed as not run"
            return outcome
        outcome.why = rule.why
        if rule.action == "skip":
            return outcome
        missing = self._missing(rule)
        if missing:
            outcome.why = missing
            return outcome
        text = self._edited(command.runnable, rule)
        outcome.ran = text
        if rule.needs == "root" and self.context["testbed"] not in text:
            outcome.status, outcome.problem = "failed", "a testbed command not named the walk's"
            return outcome
        outcome.status = "ran" if text == command.runnable else "shortened"
        key = DocCommand(command.path, command.line, text).head
        if rule.once and key in self.first_run:
            outcome.status, outcome.why = "same", f"ran at {self.first_run[key]}"
            return outcome
        self.first_run.setdefault(key, command.where)
        if rule.action == "serve":
            self._serve(outcome, rule)
        else:
            self._run(outcome, rule, command)
        return outcome

    def _missing(self, rule: Rule) -> str:
        if rule.needs == "root":
            return "" if self.can_root else "needs root, ip and tc (CI runs as root)"
        if rule.needs and shutil.which(rule.needs, path=self.env["PATH"]) is None:
            return f"{rule.needs} is not installed"
        return ""

    def _edited(self, text: str, rule: Rule) -> str:
        if rule.action == "serve":
            self.context["port"] = str(free_port())
        for pattern, replacement in rule.edits:
            text = re.sub(pattern, replacement.format(**self.context), text, count=1)
        return text

    def _run(self, outcome: Outcome, rule: Rule, command: DocCommand) -> None:
        started = time.monotonic()
        code, stdout, stderr = run_shell(outcome.ran, self.work, self.env, rule.timeout_s)
        outcome.seconds = round(time.monotonic() - started, 2)
        if "testbed up" in command.head and code == 0:
            self.testbed_started = True
        if code not in rule.exit_codes:
            outcome.problem = f"exit status {code}: {tail(stderr or stdout)}"
        elif rule.check and not re.search(rule.check, stdout, re.MULTILINE):
            outcome.problem = f"output lacks /{rule.check}/: {tail(stdout)}"
        if outcome.problem:
            outcome.status = "failed"

    def _serve(self, outcome: Outcome, rule: Rule) -> None:
        self.stop_server()
        started = time.monotonic()
        stderr_path = self.scratch / f"serve-{len(self.first_run)}.stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                ["bash", "-c", outcome.ran], cwd=self.work, env=self.env, text=True,
                stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
                preexec_fn=as_in_a_terminal,
            )  # fmt: skip
        server = self.server = Server(outcome, proc, stderr_path)
        threading.Thread(target=_collect, args=(proc, server.stdout_lines), daemon=True).start()
        poll_until(lambda: bool(_banner(server)) or proc.poll() is not None, SERVE_READY_TIMEOUT_S)
        banner = _banner(server)
        outcome.seconds = round(time.monotonic() - started, 2)
        if banner is None:
            outcome.status = "failed"
            outcome.problem = f"not ready (no `PrfaaS is up`): {tail(stderr_path.read_text())}"
            self.stop_server()
        elif banner.group(1) != self.context["port"] and "--port" in outcome.ran:
            outcome.status, outcome.problem = "failed", f"serves on {banner.group(1)}"

    def stop_server(self) -> None:
        """Ctrl-C the running server's process group; it must exit 0, children and all."""
        server, self.server = self.server, None
        if server is None:
            return
        outcome = server.outcome
        with suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGINT)
        try:
            code = server.proc.wait(timeout=SERVE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        left = not poll_until(lambda: not group_alive(server.proc.pid), SERVE_STOP_TIMEOUT_S)
        kill_group(server.proc.pid)
        with suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=SERVE_STOP_TIMEOUT_S)  # reaped, once killed
        stderr = server.stderr_path.read_text()
        problem = ""
        if code != 0:
            problem = f"Ctrl-C: exit status {code}: {tail(stderr)}"
        elif left:
            problem = "Ctrl-C left processes of its group running"
        if problem and not outcome.problem:
            outcome.status, outcome.problem = "failed", problem

    def stop_testbed(self) -> None:
        """Take down the walk's testbed, if one may still be up."""
        if self.testbed_started:
            down = "prfaas testbed down" + TESTBED_FLAGS.format(**self.context)
            run_shell(down, self.work, self.env, DEFAULT_TIMEOUT_S)


def _collect(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


def _banner(server: Server) -> re.Match[str] | None:
    """The banner line's match once the server has printed it."""
    for line in list(server.stdout_lines):
        match = BANNER.search(line)
        if match:
            return match
    return None


def poll_until(condition: Callable[[], bool], timeout_s: float, period_s: float = 0.1) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` passes (False)."""
    give_up_at = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= give_up_at:
            return False
        time.sleep(period_s)
    return True


def as_in_a_terminal() -> None:
    """In the child, before it runs: Ctrl-C and Ctrl-\\ act as in a user's terminal, also when
    this walk was started where they are ignored (a background job of a shell without job
    control hands that down)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_shell(text: str, cwd: Path, env: dict[str, str], timeout_s: float) -> tuple[int, str, str]:
    """Run `text` with bash in its own process group; kill the group after `timeout_s`."""
    proc = subprocess.Popen(
        ["bash", "-c", text], cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        return 124, stdout, f"{stderr}\ntimed out after {timeout_s:g} s"
    kill_group(proc.pid)
    return proc.returncode, stdout, stderr


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def tail(text: str) -> str:
    """The end of `text` on one line."""
    return " ".join(text.split())[-STDERR_TAIL_CHARS:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def walk_env(work: Path, scratch: Path) -> dict[str, str]:
    """The commands' environment: the venv first on PATH, the copy's code, a private run dir."""
    env = dict(os.environ)
    env["PATH"] = f"{work / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(work / "src")
    env["PRFAAS_RUN_DIR"] = str(scratch / "run")
    env["MPLBACKEND"] = "Agg"
    env.pop("VIRTUAL_ENV", None)
    return env


def copy_tree(repo: Path, work: Path, venv: Path) -> None:
    """The tree's tracked and untracked-not-ignored files into `work`; `.venv` installed."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = repo / name
        if source.is_symlink() or source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name, follow_symlinks=False)
    install_venv(venv, work / ".venv")
    free_example_ports(work / "examples" / "emulated-1t.toml")


def install_venv(venv: Path, target: Path) -> None:
    """`target` as `venv` installed by make: its entries linked, a fresh install stamp (newer
    than the copied pyproject.toml and requirements.lock, so make installs nothing)."""
    target.mkdir()
    for entry in venv.iterdir():
        if entry.name != ".installed-stamp":
            (target / entry.name).symlink_to(entry)
    (target / ".installed-stamp").touch()


def free_example_ports(path: Path) -> None:
    """Give every 127.0.0.1 address of the copy's example topology a free port."""
    ports = iter([free_port() for _ in range(32)])
    path.write_text(re.sub(r"127\.0\.0\.1:\d+", lambda _: f"127.0.0.1:{next(ports)}",
                           path.read_text()))  # fmt: skip


def walk(repo: Path, venv: Path, files: list[str], progress: bool = True) -> list[Outcome]:
    """Every command of `files`, in order, in a scratch copy of `repo`."""
    commands = [c for f in files for c in extract_commands((repo / f).read_text(), f)]
    outcomes: list[Outcome] = []
    with scratch_walk(repo, venv) as session:
        block: tuple[str, int] | None = None
        for number, command in enumerate(commands, 1):
            if (command.path, command.block) != block:
                session.stop_server()
                block = (command.path, command.block)
            outcome = session.outcome_of(command)
            outcomes.append(outcome)
            if progress:
                print(progress_line(number, len(commands), outcome), file=sys.stderr, flush=True)
    return outcomes


@contextmanager
def scratch_walk(repo: Path, venv: Path) -> Iterator[Walk]:
    """A Walk in a fresh scratch copy; its server and testbed are stopped however it ends."""
    with tempfile.TemporaryDirectory(prefix="prfaas-doc-walk-") as tmp:
        scratch = Path(tmp)
        work = scratch / "clone"
        work.mkdir()
        copy_tree(repo, work, venv)
        session = Walk(work, scratch)
        try:
            yield session
        finally:
            session.stop_server()
            session.stop_testbed()


def progress_line(number: int, total: int, outcome: Outcome) -> str:
    head = DocCommand(outcome.where, 0, outcome.command).head
    why = f"  ({outcome.why})" if outcome.why else ""
    status = f"{outcome.status:>9} {outcome.seconds:6.1f} s"
    return f"[{number}/{total}] {status}  {outcome.where}  {head}{why}"


def failure_line(outcome: Outcome) -> str:
    head = DocCommand(outcome.where, 0, outcome.command).head
    return f"FAILED {outcome.where}: {head}: {outcome.problem}"


def default_venv(repo: Path) -> Path:
    """The clone's `.venv` once make has installed it, else the environment of this Python."""
    clone_venv = repo / ".venv"
    return clone_venv.resolve() if (clone_venv / "bin").is_dir() else Path(sys.prefix)


def list_commands(files: list[str]) -> int:
    """Print each command with what the walk would do with it; 1 if any has no rule."""
    unmatched = 0
    for name in files:
        for command in extract_commands((REPO / name).read_text(), name):
            rule = rule_for(command)
            unmatched += rule is None
            action = rule.action if rule else "NO RULE"
            print(f"{command.where:<22} {action:>7}  {command.head}")
    return 1 if unmatched else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print every outcome as JSON")
    parser.add_argument("--only", nargs="+", metavar="FILE", help="these files (default: all)")
    parser.add_argument("--venv", type=Path, help="the installed virtualenv (default: .venv)")
    parser.add_argument("--list", action="store_true", help="each command and its rule; run none")
    args = parser.parse_args(argv)
    if args.list:
        return list_commands(args.only or doc_files(REPO))
    venv = args.venv.resolve() if args.venv else default_venv(REPO)
    files = args.only or doc_files(REPO)
    outcomes = walk(REPO, venv, files, progress=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2, ensure_ascii=False))
    for outcome in failed:
        print(failure_line(outcome), file=sys.stderr)
    counts = {s: sum(o.status == s for o in outcomes) for s in sorted({o.status for o in outcomes})}
    print("doc commands: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
