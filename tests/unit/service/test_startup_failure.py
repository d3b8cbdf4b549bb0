"""A service that cannot start says why in one line: an app whose start-up raises is reported with
the exception's message (not as "address in use"), an address another process serves is reported
as in use; uvicorn's traceback goes to stderr only when stderr is a file (a log)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

CAUSE = "no tokenizer files in /ckpt/tiny"

# A service whose app fails at start-up, run like `prfaas router`: one line on stderr, exit 2.
_SERVE = f"""
import contextlib, sys
from fastapi import FastAPI
from prfaas.errors import UserError
from prfaas.service.http import serve_app

@contextlib.asynccontextmanager
async def lifespan(app):
    if sys.argv[2] == "fail":
        raise OSError({CAUSE!r})
    yield

try:
    serve_app(FastAPI(lifespan=lifespan), sys.argv[1], "router")
except UserError as exc:
    print(f"prfaas router: error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture
def taken_address() -> Iterator[str]:
    """HOST:PORT another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _serve(address: str, mode: str, stderr: int | IO[str]) -> subprocess.CompletedProcess[str]:
    """Run the service of `_SERVE` on `address`; `mode` "fail" makes its start-up raise."""
    cmd = [sys.executable, "-c", _SERVE, address, mode]
    return subprocess.run(cmd, stderr=stderr, text=True, timeout=120, check=False)


def test_a_failed_start_is_one_line_with_its_cause() -> None:
    done = _serve(_free_address(), "fail", subprocess.PIPE)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines == [f"prfaas router: error: router: cannot start: OSError: {CAUSE}"], done.stderr


def test_a_failed_start_keeps_its_traceback_in_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    with log.open("w") as out:
        done = _serve(_free_address(), "fail", out)
    text = log.read_text()
    assert done.returncode == 2
    assert "Traceback" in text and CAUSE in text
    assert text.splitlines()[-1].endswith(f"cannot start: OSError: {CAUSE}")


def test_an_address_in_use_is_named_as_such(taken_address: str) -> None:
    done = _serve(taken_address, "serve", subprocess.PIPE)
    assert done.returncode == 2
    expected = (
        f"prfaas router: error: router: cannot serve on {taken_address}: address already in use"
    )
    assert done.stderr.splitlines() == [expected], done.stderr
