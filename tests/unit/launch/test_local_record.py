"""The record of a local `prfaas up`: `prfaas status` with no flags finds the one running, reads it
like a Ray deployment record, and says in one line when none is running; the record goes away
when `up` stops, and one left by a `prfaas up` that is gone is ignored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.launch.local import EmbeddedOptions, embedded_topology
from prfaas.launch.local_record import RUN_DIR_ENV, local_record, recorded, running_record
from prfaas.launch.ray_placement import read_deployment
from prfaas.topology import load_topology


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    return tmp_path / "run"


def _record(config: Path) -> dict[str, object]:
    """The record of an embedded deployment on router port 18000, its topology file `config`."""
    config.parent.mkdir(parents=True, exist_ok=True)
    options = EmbeddedOptions(router_port=18000, engine="emulated")
    topology = load_topology(embedded_topology(config.parent, options))
    return local_record(topology, config, {"router": 4242})


def test_status_finds_the_running_deployment_until_it_stops(run_dir: Path) -> None:
    config = run_dir.parent / "up" / "topology.toml"
    with recorded(_record(config)) as path:
        assert running_record() == path
        deployment = read_deployment(path)
        assert deployment.router_url == "http://127.0.0.1:18000"
        assert deployment.config_path == str(config)
        assert {m.name for m in deployment.members} == {
            "prfaas-prefill-0",
            "pd-prefill-0",
            "pd-decode-0",
        }
    assert not path.exists()
    with pytest.raises(UserError, match="no local deployment is running"):
        running_record()


def test_a_record_of_a_gone_up_is_ignored(run_dir: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    run_dir.mkdir()
    (run_dir / f"up-{int(gone.stdout)}.json").write_text(
        json.dumps(_record(run_dir.parent / "up" / "topology.toml"))
    )
    with pytest.raises(UserError, match="no local deployment is running"):
        running_record()


def test_plain_status_without_a_deployment_is_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prfaas status: error: no local deployment is running"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
