"""The record a local `prfaas up` keeps while it runs, so that a plain `prfaas status` finds it.

One JSON file per running `prfaas up` (`up-PID.json`) in a per-user run directory:
`$PRFAAS_RUN_DIR`, else `$XDG_RUNTIME_DIR/prfaas`, else `~/.cache/prfaas`. It has the format of
the Ray deployment record (`prfaas.launch.ray_placement.read_deployment` reads it: router URL,
members, topology path for the token) plus the pid of `prfaas up` and of every child. It is
written once the deployment is ready and removed when `prfaas up` stops; a record whose `prfaas up`
is gone (killed with SIGKILL) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from prfaas.errors import UserError
from prfaas.launch.ray_placement import DEPLOYMENT_FORMAT, members_of
from prfaas.topology import Topology

RUN_DIR_ENV = "PRFAAS_RUN_DIR"


def run_dir() -> Path:
    """Where running local deployments are recorded (per user)."""
    override = os.environ.get(RUN_DIR_ENV)
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "prfaas"
    return Path.home() / ".cache" / "prfaas"


def local_record(
    topology: Topology, config_path: Path, pids: Mapping[str, int]
) -> dict[str, object]:
    """The record of a local deployment (no secrets: the token stays in the topology file)."""
    host = topology.router.http.rpartition(":")[0].strip("[]")
    return {
        "format": DEPLOYMENT_FORMAT,
        "config": str(config_path),
        "up_pid": os.getpid(),
        "pids": dict(pids),
        "router": {"url": f"http://{topology.router.http}", "node": host},
        "instances": [m.to_dict() for m in members_of(topology)],
    }


@contextlib.contextmanager
def recorded(record: Mapping[str, object]) -> Iterator[Path]:
    """Write `record` to the run directory for as long as the block runs; yield its path."""
    directory = run_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {directory}: {exc.strerror}") from None
    path = directory / f"up-{os.getpid()}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def running_record() -> Path:
    """The record of the one running local deployment; UserError when none or several run."""
    records = [p for p in sorted(run_dir().glob("up-*.json")) if _up_is_running(p)]
    if not records:
        raise UserError(
            f"no local deployment is running (none recorded in {run_dir()}); "
            "start one with `prfaas up`, or pass --config or --deployment"
        )
    if len(records) > 1:
        names = ", ".join(str(p) for p in records)
        raise UserError(
            f"{len(records)} local deployments are running; pick one: --deployment {names}"
        )
    return records[0]


def _up_is_running(record: Path) -> bool:
    """Whether the `prfaas up` that wrote `record` (pid in its name) is still alive."""
    try:
        pid = int(record.stem.removeprefix("up-"))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
