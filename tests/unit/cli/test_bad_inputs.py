"""A table of bad inputs over every subcommand: each is refused with ONE line on stderr that starts
with `prfaas <command>` and states the reason, exit status 2, no traceback, and nothing started
(no server, no benchmark, no model load, no deployment: those entry points are made to fail).

Most cases run in-process through `prfaas.cli.main`; a closed stdout and special files go through a
real subprocess. A closed stdout is not an error: the reader took what it wanted (`prfaas plan |
head -1`), so the command exits quietly with status 0, as `head`'s upstream commands do by
convention. The bounds tested here are documented in docs/reliability.md ("Command line").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.cli import main
from prfaas.cli._args import MAX_LENGTH_TOKENS, bounded_int, float_in
from prfaas.cli.bench import parse_size_bytes
from prfaas.cli.kv import parse_lengths
from prfaas.errors import UserError

Capsys = pytest.CaptureFixture[str]
REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "local-tiny.toml"
NOT_UTF8 = b"\xff\xfe not UTF-8 \xc3\x28\n"
BIG = str(10**12)
TOKEN_LINE = 'token = "local-tiny-example-token-replace-me"'
SUBCOMMANDS = ("kv", "plan", "sim", "verify", "bench", "router", "prefill", "decode", "up", "demo")
TLS_LINES = 'tls_cert = "cert.pem"\ntls_key = "key.pem"\ntls_ca = "ca.pem"'


def _topology(directory: Path, name: str, old: str, new: str) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert old in text, old
    (directory / name).write_text(text.replace(old, new, 1), encoding="utf-8")


def _write_files(d: Path) -> None:
    """Every file a case below names as {d}/NAME."""
    for name in ("config.json", "trace.jsonl", "profile.csv"):
        (d / name).write_bytes(NOT_UTF8)
    (d / "bad.toml").write_bytes(b"a = 1\n" + NOT_UTF8)
    (d / "notjson.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "notoml.toml").write_text("this is = = not toml [[\n")
    (d / "blocker").write_text("")
    os.mkfifo(d / "fifo.json")
    (d / "arch").mkdir()
    (d / "arch" / "config.json").write_bytes(NOT_UTF8)
    field = '"' + "1" * 200_000 + '"'
    azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,{},5\n"
    (d / "bigfield.csv").write_text(azure.format(field))
    (d / "bigprofile.csv").write_text(f"tokens,latency_s\n1024,{field}\n")
    rows = [{"timestamp": ms, "input_length": 1000, "output_length": 10} for ms in (0, 10**300)]
    (d / "late.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, text in {
        "nan.plan.toml": "link_gbps = nan\n",
        "unknown.plan.toml": "no_such = 1\n",
        "pd.plan.toml": "pd_gpus = 8000000000\n",
        "homogeneous.plan.toml": "homogeneous_gpus = 1000000\n",
        "bs.plan.toml": f"bs_max = {BIG}\n",
    }.items():
        (d / name).write_text(text)
    for name in ("cert.pem", "key.pem", "ca.pem", "token.bin"):
        (d / name).write_text("garbage\n")
    (d / "token.bin").write_bytes(NOT_UTF8)
    (d / "tls").mkdir()
    for name in ("ca.crt", "node.crt", "node.key"):
        (d / "tls" / name).write_text("garbage\n")
    for name, old, new in [
        ("unknown.toml", "gbps = 100", "gbps = 100\nspeed = 3"),
        ("wrongtype.toml", 'http = "127.0.0.1:18000"', "http = 18000"),
        ("negative.toml", "gbps = 100", "gbps = -5"),
        ("nan.toml", "gbps = 100", "gbps = nan"),
        ("inf.toml", "threshold = 64", "threshold = inf"),
        ("duplicate.toml", '"127.0.0.1:18201"', '"127.0.0.1:18101"'),
        ("overflow.toml", "seed = 0", "seed = 99999999999999999999"),
        ("connections.toml", TOKEN_LINE, TOKEN_LINE + "\nnum_connections = 1000000"),
        ("gpus.toml", 'engine = "torch"', 'engine = "torch"\nnum_gpus = 1000000000'),
        ("tokenfile.toml", TOKEN_LINE, 'token_file = "token.bin"'),
        ("tlsmissing.toml", TOKEN_LINE, TLS_LINES.replace('= "', '= "missing-')),
        ("tlsgarbage.toml", TOKEN_LINE, TLS_LINES),
    ]:
        _topology(d, name, old, new)
    head = EXAMPLE.read_text(encoding="utf-8").split("[[clusters]]")[0]
    (d / "noinstances.toml").write_text(head, encoding="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    _write_files(d)
    return d


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A bad input accepted by mistake must fail the test, not start a service or a run."""
    import prfaas.bench.transport
    import prfaas.cli.verify
    import prfaas.launch.local

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad input was accepted and something started")

    for name in ("serve_router", "serve_instance", "Launcher"):
        monkeypatch.setattr(prfaas.launch.local, name, refuse)
    monkeypatch.setattr(prfaas.bench.transport, "run_bench", refuse)
    monkeypatch.setattr(prfaas.cli.verify, "quiet_transformers", refuse)
    monkeypatch.delenv("PRFAAS_TRANSPORT_TOKEN", raising=False)
    yield


# (argv with {d} = the files' directory and {ex} = the example topology, a reason the line states)
CASES: list[tuple[str, str]] = [
    # kv
    ("kv --model {d}/config.json", "not UTF-8"),
    ("kv --model /dev/zero", "not a regular file"),
    ("kv --model {d}/fifo.json", "not a regular file"),
    ("kv --model {d}/missing.json", "unknown model"),
    ("kv --model {d}/notjson.json", "is not valid JSON"),
    ("kv --model {d}/list.json", "must hold a JSON object"),
    ("kv --model paper-1t --lengths 1e309", "bad length"),
    (f"kv --model paper-1t --lengths {10**30}", "at most 1,073,741,824 tokens"),
    ("kv --model paper-1t --lengths " + "9" * 400, "at most 1,073,741,824 tokens"),
    ("kv --model paper-1t --lengths ,", "bad length"),
    ("kv --model paper-1t --kv-dtype bogus", "unknown dtype"),
    ("kv --profile {d}/profile.csv", "not UTF-8"),
    ("kv --profile /dev/zero", "unknown profile"),
    ("kv --model paper-1t --hardware bogus", "unknown hardware"),
    (f"kv --model paper-1t --hardware h200 --gpus {BIG}", "--gpus: must be <= 1,024"),
    ("kv --model paper-1t --bogus", "unrecognized arguments: --bogus"),
    # plan
    ("plan --homogeneous-gpus 0", "--homogeneous-gpus: must be >= 1"),
    ("plan --threshold-step 0.001", "at most 100,000 are allowed"),
    ("plan --link-gbps 1e309", "expected a finite number"),
    ("plan --mu nan", "expected a finite number"),
    ("plan --sigma inf", "expected a finite number"),
    (f"plan --pd-gpus {BIG}", "--pd-gpus: must be <= 1,000,000"),
    ("plan --pd-gpus 800000", "at most 1,000,000 are allowed"),
    (f"plan --gpus-per-instance {BIG}", "--gpus-per-instance: must be <= 1,024"),
    (f"plan --bs-max {BIG}", "--bs-max: must be <= 65,536"),
    ("plan --output-tokens 1e300", "--output-tokens: must be <= 1,073,741,824"),
    ("plan --min-tokens 100000 --max-tokens 10", "log-normal bounds"),
    ("plan --price h200=nan,h20=1", "finite PRICE > 0"),
    ("plan --price h200=1,h20=1e-300", "equal-cost homogeneous cluster would have"),
    ("plan --price-link-gb -1", "--price-link-gb: must be >= 0"),
    ("plan --ttft-slo-s 5", "the cost view needs every price; missing --price-prfaas-gpu-hour"),
    ("plan --config {d}/bad.toml", "not UTF-8"),
    ("plan --config /dev/zero", "not a regular file"),
    ("plan --config {d}", "Is a directory"),
    ("plan --config {d}/nan.plan.toml", "got nan"),
    ("plan --config {d}/unknown.plan.toml", "unknown key 'no_such'"),
    ("plan --config {d}/pd.plan.toml", "pd_gpus (--pd-gpus or the --config key) must be <="),
    ("plan --config {d}/homogeneous.plan.toml", "homogeneous cluster would have 125,000"),
    ("plan --config {d}/bs.plan.toml", "bs_max (--bs-max or the --config key) must be <="),
    ("plan --trace {d}/trace.jsonl", "not UTF-8"),
    ("plan --trace /dev/zero", "not a regular file"),
    ("plan --trace {d}/bigfield.csv", "not a readable CSV trace"),
    ("plan --prfaas-latency quadratic:nan,1,1", "finite coefficients"),
    ("plan --model /dev/zero", "not a regular file"),
    ("plan --plot {d}/blocker/x", "--plot"),
    ("plan --preset bogus", "invalid choice: 'bogus'"),
    ("plan --no-such-flag", "unrecognized arguments: --no-such-flag"),
    # sim
    (f"sim --num-requests {BIG}", "--num-requests: must be <= 10,000,000"),
    ("sim --duration-s nan", "expected a finite number"),
    ("sim --rate inf", "expected a finite number"),
    ("sim --rate 1e6", "at most 10,000,000 are allowed"),
    ("sim --num-requests 10 --plot {d}/blocker/x", "--plot"),
    ("sim --num-requests 10 --timeline {d}/missing/t.json", "--timeline"),
    ("sim --num-requests 10 --link-drop nan:1", "finite numbers"),
    ("sim --link-fluctuation 0.5:1e-9", "capacity steps"),
    ("sim --deployment prfaas --duration-s 10 --window-s 1e-9", "arrival windows"),
    (
        "sim --deployment prfaas --duration-s 10 --controller adaptive --controller-period-s 1e-9",
        "ticks",
    ),
    ("sim --drain-s 1e300", "--drain-s: must be <= 2,592,000"),
    ("sim --deployment prfaas --rate 1e-300 --num-requests 3", "arrivals would span"),
    ("sim --deployment prfaas --load 1e-300 --num-requests 3", "arrivals would span"),
    ("sim --arrival gamma --cv 1e-300", "--cv: must be >= 0.01"),
    ("sim --arrival gamma --cv 1e300", "--cv: must be <= 100"),
    ("sim --trace /dev/zero", "not a regular file"),
    ("sim --deployment prfaas --trace {d}/late.jsonl", "arrivals would span"),
    ("sim --bogus", "unrecognized arguments: --bogus"),
    # verify
    (f"verify --prompt-tokens {BIG}", "--prompt-tokens: must be <= 16,384"),
    (f"verify --decode-tokens {BIG}", "--decode-tokens: must be <= 4,096"),
    ("verify --prompt-tokens nan", "expected an integer"),
    (f"verify --seed {10**30}", "--seed: must be <="),
    ("verify --arch bogus", "unknown arch 'bogus'"),
    ("verify --arch {d}/arch", "not UTF-8"),
    # bench
    ("bench transport --size " + "9" * 400 + "GiB", "--size must be between 4 KiB and 64 GiB"),
    ("bench transport --size 1", "--size must be between"),
    ("bench transport --frame-bytes 1GiB", "--frame-bytes must be between 4 KiB and 64 MiB"),
    (f"bench transport --repeats {BIG}", "--repeats: must be <= 100"),
    (f"bench transport --rounds {BIG}", "--rounds: must be <= 20"),
    ("bench transport --tls-dir {d}/missing", "--tls-dir lacks"),
    ("bench transport --tls-dir {d}/tls", "cannot load its TLS files"),
    ("bench", "required: KIND"),
    ("bench transport --x", "unrecognized arguments: --x"),
    # router, prefill, decode: topology files
    ("router --config {d}/bad.toml", "not UTF-8"),
    ("router --config {d}/notoml.toml", "invalid TOML"),
    ("router --config {d}/unknown.toml", "link.speed: unknown key"),
    ("router --config {d}/noinstances.toml", "clusters: missing required key"),
    ("router --config {d}/wrongtype.toml", 'router.http: must be "host:port"'),
    ("router --config {d}/negative.toml", "link.gbps: must be a finite number > 0"),
    ("router --config {d}/nan.toml", "link.gbps: must be a finite number > 0, got nan"),
    ("router --config {d}/inf.toml", "policy.threshold: must be a finite number"),
    ("router --config {d}/duplicate.toml", "duplicate address"),
    ("router --config {d}/overflow.toml", "model.seed: must be an integer <="),
    ("router --config {d}/connections.toml", "num_connections: must be an integer <= 64"),
    ("router --config {d}/gpus.toml", "num_gpus: must be an integer <= 1,024"),
    ("router --config {d}/tokenfile.toml", "not UTF-8"),
    ("router --config {d}/tlsmissing.toml", "does not exist"),
    ("router --config {d}/tlsgarbage.toml", "cannot load TLS files"),
    ("router --config /dev/zero", "not a regular file"),
    ("router --config {d}", "Is a directory"),
    ("router --config {d}/fifo.json", "not a regular file"),
    ("router", "required: --config"),
    ("router --config {ex} --y", "unrecognized arguments: --y"),
    ("prefill --config {ex} --instance nope", "no instance 'nope'"),
    ("prefill --config {ex} --instance pd-d0", "is a decode instance"),
    ("decode --config {d}/tlsgarbage.toml --instance pd-d0", "cannot load TLS files"),
    ("decode --config {d}/missing.toml --instance pd-d0", "No such file"),
    # up, demo
    ("up --config {d}/bad.toml", "not UTF-8"),
    ("up --config {d}", "Is a directory"),
    ("up --port 0", "--port: must be >= 1"),
    ("up --port 70000", "--port: must be <= 65,535"),
    ("up --ready-timeout nan", "expected a finite number"),
    ("demo --max-tokens 0", "--max-tokens: must be >= 1"),
    (f"demo --max-tokens {BIG}", "--max-tokens: must be <= 4,096"),
    ("demo --log-dir {d}/blocker/logs", "--log-dir"),
    # the top level
    ("", "required: COMMAND"),
    ("bogus", "invalid choice: 'bogus'"),
]

# Fixed outside the command-line package (cli/serve.py, perf/profile.py).
OUTSIDE_CLI: list[tuple[str, str]] = [
    ("up --config {ex} --log-dir {d}/blocker/logs", "--log-dir"),  # cli/serve.py
    ("kv --model paper-1t --profile {d}/bigprofile.csv", "CSV"),  # perf/profile.py
]


def _argv(template: str, files: Path) -> list[str]:
    return [part.format(d=files, ex=EXAMPLE) for part in template.split()]


def one_error_line(capsys: Capsys, argv: list[str]) -> str:
    """Run `prfaas ARGV` in-process: exit 2 and one `prfaas CMD...: error:` line; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    command = f"prfaas {argv[0]}" if argv and argv[0] in SUBCOMMANDS else "prfaas"
    assert lines[0].startswith(command), err
    assert ": error: " in lines[0], err
    return lines[0]


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize(
    ("template", "reason"), CASES + OUTSIDE_CLI, ids=[c[0][:60] for c in CASES + OUTSIDE_CLI]
)
def test_bad_input_is_one_line_with_its_reason(
    capsys: Capsys, files: Path, template: str, reason: str
) -> None:
    assert reason in one_error_line(capsys, _argv(template, files))


def test_the_table_covers_every_subcommand_and_forty_inputs() -> None:
    commands = {template.split()[0] for template, _ in CASES if template}
    assert set(SUBCOMMANDS) <= commands
    assert len(CASES) >= 40


# ---- real processes: a closed stdout, special files ---------------------------------------------


def _prfaas(*argv: str, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prfaas", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("argv", [["plan"], ["kv", "--model", "paper-1t", "--json"]])
def test_closed_stdout_exits_quietly_with_status_0(argv: list[str]) -> None:
    """`prfaas plan | head -1`: the reader has gone; status 0 and nothing on stderr is the
    convention of commands upstream of `head` (documented in the module docstring)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = _prfaas(*argv, stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


def test_head_reads_the_first_line_and_prfaas_exits_quietly() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "prfaas", "plan"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert "PrfaaS-PD" in proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == ""


@pytest.mark.parametrize(
    "argv",
    [["kv", "--model", "/dev/zero"], ["router", "--config", "/dev/zero"]],
    ids=["kv-model", "router-config"],
)
def test_dev_zero_is_refused_at_once(argv: list[str]) -> None:
    done = _prfaas(*argv, stdout=subprocess.DEVNULL)  # a read of /dev/zero would never end
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a regular file" in done.stderr


# ---- properties of the converters ---------------------------------------------------------------


@given(st.text(max_size=40))
def test_bounded_int_returns_a_bounded_value_or_refuses(text: str) -> None:
    try:
        value = bounded_int(1, 1000)(text)
    except argparse.ArgumentTypeError:
        return
    assert 1 <= value <= 1000


@given(st.one_of(st.text(max_size=40), st.floats().map(repr)))
def test_float_in_returns_a_bounded_finite_value_or_refuses(text: str) -> None:
    try:
        value = float_in(0.01, 100.0)(text)
    except argparse.ArgumentTypeError:
        return
    assert 0.01 <= value <= 100.0


@given(st.text(alphabet="0123456789.,kKmMe+- ", max_size=500))
def test_lengths_are_whole_tokens_within_the_bound_or_refused(text: str) -> None:
    try:
        lengths = parse_lengths(text)
    except UserError:
        return
    assert all(1 <= n <= MAX_LENGTH_TOKENS for n in lengths)


@given(st.text(alphabet="0123456789.KMGiBb ", max_size=500))
def test_sizes_are_within_the_bounds_or_refused(text: str) -> None:
    try:
        size = parse_size_bytes(text)
    except UserError:
        return
    assert 4096 <= size <= 64 * 2**30


# ---- `prfaas bench system`: the burst and the testbed flags -------------------------------------

BENCH_SYSTEM_CASES: list[tuple[str, str]] = [
    ("bench system --config {ex} --rate 1 --burst 1:2:3", "--burst must be AT_S:DURATION_S"),
    ("bench system --config {ex} --rate 1 --burst a:1:1:100", "--burst must be AT_S:DURATION_S"),
    ("bench system --config {ex} --rate 1 --burst 1:1:1:1.5", "TOKENS an integer"),
    ("bench system --config {ex} --rate 1 --burst=-1:1:1:100", "a burst needs a finite start"),
    ("bench system --config {ex} --rate 1 --burst 0:1:1:0", "at least one token"),
    ("bench system --config {ex} --rate 1 --link-drop 1:2:3", "give --testbed NAME"),
    ("bench system --config {ex} --rate 1 --state-dir {d}", "give --testbed NAME"),
    ("bench system --testbed x --url http://h:1 --rate 1", "no --url, --config, --deployment"),
    ("bench system --testbed x --config {ex} --rate 1", "no --url, --config, --deployment"),
    ("bench system --rate 1", "give --config TOPOLOGY.toml (or --testbed NAME)"),
]


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize(
    ("template", "reason"), BENCH_SYSTEM_CASES, ids=[c[0][13:73] for c in BENCH_SYSTEM_CASES]
)
def test_bench_system_bad_input_is_one_line_with_its_reason(
    capsys: Capsys, files: Path, template: str, reason: str
) -> None:
    line = one_error_line(capsys, _argv(template, files))
    assert reason in line, line
