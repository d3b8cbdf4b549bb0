"""Runs the engine processes of one model's connector test: a reference process with every
prompt, then a consumer (decode) process and a producer (prefill) process joined by the PrfaaS
transport. Each process is `engine_run.py`; this module starts them, feeds them and reads back
their one-line JSON results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
ENGINE_TIMEOUT_S = 900.0  # engine start-ups are ~20 s each on an idle two-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    paths = [str(REPO_ROOT / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _last_json(stdout: str, what: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise AssertionError(f"{what} printed no JSON result")


def _spec_file(directory: Path, name: str, spec: dict[str, Any]) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _command(mode: str, model_dir: Path, spec_path: Path) -> list[str]:
    return [sys.executable, str(HERE / "engine_run.py"), mode, str(model_dir), str(spec_path)]


def run_engine(mode: str, model_dir: Path, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one engine process to completion; its results (fails with its output if it failed)."""
    spec_path = _spec_file(work, mode, spec)
    done = subprocess.run(
        _command(mode, model_dir, spec_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{mode} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return _last_json(done.stdout, mode)


@dataclass
class Consumer:
    """A running consumer process, ready for its one batch of decode requests."""

    process: subprocess.Popen[str]
    stderr_path: Path

    def decode(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        out, _ = self.process.communicate(json.dumps(requests) + "\n", ENGINE_TIMEOUT_S)
        assert self.process.returncode == 0, f"consumer failed:\n{out[-3000:]}\n{self.errors()}"
        return _last_json(out, "consumer")

    def errors(self) -> str:
        return self.stderr_path.read_text()[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def start_consumer(model_dir: Path, spec: dict[str, Any], work: Path) -> Consumer:
    """Start the consumer and return once its engine (and so its KV receiver) is up."""
    spec_path = _spec_file(work, "consumer", spec)
    stderr_path = work / "consumer.stderr"
    with stderr_path.open("w") as stderr:  # a file: a full pipe would stall the engine
        process = subprocess.Popen(
            _command("consumer", model_dir, spec_path),
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    consumer = Consumer(process, stderr_path)
    assert process.stdout is not None
    for line in process.stdout:  # blocks until the engine is up or the process ends
        if line.startswith('{"ready"'):
            return consumer
    consumer.stop()
    raise AssertionError(f"the consumer ended before its engine was ready:\n{consumer.errors()}")


def read_transfer_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
