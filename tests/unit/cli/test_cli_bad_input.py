"""Bad input to any subcommand: one line on stderr, starting with `prfaas`, exit status 2, and no
traceback; `--help` still prints help; a closed stdout ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prfaas.cli import main

Capsys = pytest.CaptureFixture[str]
REPO_ROOT = Path(__file__).resolve().parents[3]
NOT_UTF8 = b"\xff\xfe not UTF-8 \xc3\x28\n"


def one_error_line(capsys: Capsys, *argv: str) -> str:
    """Run `prfaas ARGV`; assert exit 2 and a single `prfaas ...` line on stderr; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prfaas"), err
    return lines[0]


# ---- argparse errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["plan", "--no-such-flag"], "prfaas plan: error: unrecognized arguments: --no-such-flag"),
        (["kv", "--model", "paper-1t", "--bogus", "1"], "prfaas kv: error: unrecognized"),
        (["sim", "--rate"], "prfaas sim: error: argument --rate: expected one argument"),
        (["bench", "transport", "--x"], "prfaas bench transport: error: unrecognized"),
        (["router", "--config", "t.toml", "--y"], "prfaas router: error: unrecognized"),
        (["--bogus"], "prfaas: error:"),
    ],
)
def test_usage_errors_are_one_line_naming_the_subcommand(
    capsys: Capsys, argv: list[str], prefix: str
) -> None:
    assert one_error_line(capsys, *argv).startswith(prefix)


def test_help_still_prints_help(capsys: Capsys) -> None:
    assert main(["sim", "--help"]) == 0
    assert "usage: prfaas sim" in capsys.readouterr().out


# ---- unreadable, special and non-UTF-8 files ----------------------------------------------------


def test_non_utf8_model_config(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(NOT_UTF8)
    line = one_error_line(capsys, "kv", "--model", str(path))
    assert str(path) in line and "not UTF-8" in line


def test_special_file_as_model_is_refused(capsys: Capsys) -> None:
    assert "not a regular file" in one_error_line(capsys, "kv", "--model", "/dev/zero")


def test_non_utf8_trace(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_bytes(NOT_UTF8)
    line = one_error_line(capsys, "sim", "--trace", str(path), "--num-requests", "10")
    assert str(path) in line and "not UTF-8" in line


@pytest.mark.parametrize("command", [["router"], ["up"], ["plan"]])
def test_non_utf8_config(capsys: Capsys, tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"a = 1\n" + NOT_UTF8)
    line = one_error_line(capsys, *command, "--config", str(path))
    assert "bad.toml" in line and "not UTF-8" in line


def test_special_file_as_topology_is_refused(capsys: Capsys) -> None:
    assert "not a regular file" in one_error_line(capsys, "router", "--config", "/dev/zero")


# ---- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plan", "--homogeneous-gpus", "0"], "--homogeneous-gpus: must be >= 1"),
        (["plan", "--prfaas-gpus", "-8"], "--prfaas-gpus: must be >= 1"),
        (["plan", "--link-gbps", "1e999"], "--link-gbps: expected a finite number"),
        (["plan", "--mu", "nan"], "--mu: expected a finite number"),
        (["plan", "--t-decode-ms", "inf"], "--t-decode-ms: expected a finite number"),
        (["plan", "--price", "h200=inf,h20=1"], "finite PRICE"),
        (["sim", "--duration-s", "nan"], "--duration-s: expected a finite number"),
        (["sim", "--slo-ttft-s", "-1"], "--slo-ttft-s: must be > 0"),
        (["sim", "--drain-s", "inf"], "--drain-s: expected a finite number"),
        (["sim", "--load", "0"], "--load: must be > 0"),
        (["kv", "--model", "paper-1t", "--gpus", "0"], "--gpus: must be >= 1"),
        (["bench", "transport", "--link-gbps", "nan"], "--link-gbps: expected a finite number"),
        (["bench", "transport", "--connections", "65"], "--connections: must be <= 64"),
        (["up", "--ready-timeout", "nan"], "--ready-timeout: expected a finite number"),
        (["up", "--port", "70000"], "--port: must be <= 65,535"),
        (["demo", "--max-tokens", "0"], "--max-tokens: must be >= 1"),
    ],
)
def test_bad_numbers_are_refused_with_a_reason(
    capsys: Capsys, argv: list[str], fragment: str
) -> None:
    assert fragment in one_error_line(capsys, *argv)


def test_zero_homogeneous_gpus_in_a_plan_config_is_refused(capsys: Capsys, tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("homogeneous_gpus = 0\n")
    assert "GPU counts must be > 0" in one_error_line(capsys, "plan", "--config", str(path))


# ---- unbounded grids and request lists ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plan", "--threshold-step", "0.001"], "at most 100,000"),
        (["sim", "--num-requests", "10000001"], "must be <= 10,000,000"),
        (["sim", "--rate", "1e6", "--duration-s", "3600"], "at most 10,000,000"),
        (["sim", "--duration-s", "1e9"], "--duration-s must be <="),
        (["sim", "--link-fluctuation", "0.5:1e-6"], "over 1,000,000 capacity steps"),
    ],
)
def test_unbounded_inputs_state_the_bound(capsys: Capsys, argv: list[str], fragment: str) -> None:
    assert fragment in one_error_line(capsys, *argv)


# ---- output paths ------------------------------------------------------------------------------


def test_unwritable_plot_dir_fails_before_the_run(capsys: Capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    plot = str(blocker / "sub" / "x.png")
    line = one_error_line(capsys, "sim", "--num-requests", "10", "--plot", plot)
    assert "--plot" in line


def test_missing_timeline_dir_fails_before_the_run(capsys: Capsys, tmp_path: Path) -> None:
    timeline = str(tmp_path / "missing" / "t.json")
    assert "--timeline" in one_error_line(
        capsys, "sim", "--num-requests", "10", "--timeline", timeline
    )


# ---- closed stdout -----------------------------------------------------------------------------


def test_closed_stdout_exits_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "prfaas", "plan", "--preset", "paper-case-study"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 0


# ---- broken TLS files --------------------------------------------------------------------------


def _topology_with_bad_tls(tmp_path: Path) -> Path:
    text = (REPO_ROOT / "examples" / "local-tiny.toml").read_text(encoding="utf-8")
    token_line = next(line for line in text.splitlines() if line.startswith("token ="))
    tls = 'tls_cert = "cert.pem"\ntls_key = "key.pem"\ntls_ca = "ca.pem"'
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not a PEM file\n")
    path = tmp_path / "topology.toml"
    path.write_text(text.replace(token_line, tls), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "command",
    [["router"], ["prefill", "--instance", "prfaas-p0"], ["decode", "--instance", "pd-d0"]],
)
def test_broken_tls_files_are_one_line(
    capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.delenv("PRFAAS_TRANSPORT_TOKEN", raising=False)
    config = str(_topology_with_bad_tls(tmp_path))
    line = one_error_line(capsys, command[0], "--config", config, *command[1:])
    assert "TLS" in line


def test_up_missing_model_names_the_users_path(
    capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative --model is looked up in the working directory, not in the temporary folder the
    embedded topology is written to, and the error names that path."""
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, "up", "--model", "mymodel")
    assert str(tmp_path / "mymodel") in line and "prfaas-up-" not in line, line
