"""The base install, without torch (`pip install -c requirements.lock .`), in a virtual
environment of its own built from this checkout: `prfaas kv`, `plan` and `sim` run, an emulated
`prfaas up` serves a request end to end (its engine compares the received payload byte for byte),
and every command that needs the torch engine answers with one line naming the extra to install,
exit status 2, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from polling import wait_until
from prfaas.topology import load_topology
from topologies import TopologySpec

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 900  # a loaded 2-core machine, wheels from the registry
COMMAND_TIMEOUT_S = 300
ENGINE_HINT = "pip install 'prfaas[engine]'"


@pytest.fixture(scope="module")
def lean_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding this checkout's base install (no extras)."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    pip += ["--disable-pip-version-check", "-c", str(REPO / "requirements.lock"), str(REPO)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return venv / "bin"


def _run(lean_bin: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{lean_bin}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # the installed package, not this checkout's src/
    return subprocess.run(
        [str(lean_bin / "prfaas"), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_the_lean_venv_has_no_torch(lean_bin: Path) -> None:
    """The precondition of every test here (transformers brings numpy and safetensors)."""
    probe = "import importlib.util as u; print(u.find_spec('torch'))"
    done = subprocess.run([str(lean_bin / "python"), "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


@pytest.mark.parametrize(
    "args",
    [
        ("kv", "--profile", "paper-1t-h200", "--json"),
        ("plan", "--preset", "paper-case-study", "--json"),
        ("sim", "--preset", "paper-case-study", "--duration-s", "120", "--json"),
    ],
    ids=["kv", "plan", "sim"],
)
def test_planning_commands_run_without_torch(lean_bin: Path, args: tuple[str, ...]) -> None:
    done = _run(lean_bin, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)


@pytest.mark.parametrize(
    "args",
    [("verify",), ("demo",), ("up",), ("prefill", "--config", "TOPOLOGY", "--instance", "r0")],
    ids=["verify", "demo", "up", "prefill"],
)
def test_torch_commands_name_the_extra_in_one_line(
    lean_bin: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    topology = TopologySpec().write(tmp_path)  # torch instances
    done = _run(lean_bin, *[str(topology) if a == "TOPOLOGY" else a for a in args])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert ENGINE_HINT in lines[0]
    assert "Traceback" not in done.stderr and "is up" not in done.stdout


@pytest.fixture
def emulated_up(lean_bin: Path, tmp_path: Path) -> Iterator[str]:
    """An emulated `prfaas up` from the lean venv; yields the router's URL, stops it with
    Ctrl-C (SIGINT) and asserts it exits cleanly."""
    spec = TopologySpec(engine="emulated", threshold=64, time_scale=0.0, payload_scale=0.01)
    path = spec.write(tmp_path)
    url = f"http://{load_topology(path).router.http}"  # the written file's (free) ports
    env = {**os.environ, "PRFAAS_RUN_DIR": str(tmp_path / "run")}
    env.pop("PYTHONPATH", None)
    up = subprocess.Popen(
        [str(lean_bin / "prfaas"), "up", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(lambda: _ready(url) or up.poll() is not None, 300, "the emulated deployment")
        assert up.poll() is None, up.communicate()[1]
        yield url
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=120)
    assert up.returncode == 0, stderr
    assert "Traceback" not in stderr


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_emulated_deployment_serves_without_torch(emulated_up: str) -> None:
    """A prompt over t prefills on the PrfaaS instance and its (emulated, byte-checked) KV
    crosses to the decode instance; a short one stays local."""
    body = {"model": "qwen3_next", "max_tokens": 4, "temperature": 0}
    long = httpx.post(
        f"{emulated_up}/v1/completions", json={**body, "prompt": "x" * 400}, timeout=120
    )
    assert long.status_code == 200, long.text
    assert long.headers["x-prfaas-route"] == "prfaas"
    assert long.json()["prfaas"]["kv_bytes"] > 0
    assert long.json()["usage"]["completion_tokens"] == 4
    short = httpx.post(f"{emulated_up}/v1/completions", json={**body, "prompt": "hi"}, timeout=120)
    assert short.status_code == 200, short.text
    assert short.headers["x-prfaas-route"] != "prfaas"
