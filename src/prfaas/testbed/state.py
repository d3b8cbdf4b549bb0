"""A testbed's run directory and state file, and the records of the processes it started.

The run directory `<state root>/<name>/` holds `state.json` (the testbed's phase, settings and
process records, replaced atomically), `topology.toml`, the transport token, the delay line's
control socket and `logs/`. A process record is {pid, start_ticks}: a pid whose start ticks
differ is a recycled, other process.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from prfaas.testbed.layout import check_name

STATE_FILE = "state.json"
TOPOLOGY_FILE = "topology.toml"
TOKEN_FILE = "transport.token"
DELAY_CONTROL_FILE = "delayline.sock"  # the delay line's control socket
_FILES = (STATE_FILE, TOPOLOGY_FILE, TOKEN_FILE, DELAY_CONTROL_FILE)


def run_dir_of(state_root: Path, name: str) -> Path:
    return state_root / check_name(name)


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The state file's content, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (readers never see half a file)."""
    tmp = run_dir / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(run_dir / STATE_FILE)


def update_state(run_dir: Path, **changes: Any) -> dict[str, Any]:
    state = read_state(run_dir) or {}
    state.update(changes)
    write_state(run_dir, state)
    return state


def remove_files(run_dir: Path) -> None:
    """The state, topology and token of a run directory (its logs stay)."""
    for file in _FILES:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / file).unlink()


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), None when there is no such process;
    a pid with other start ticks than recorded is a different, recycled process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return int(fields[19])


def is_alive(record: dict[str, Any] | None) -> bool:
    """Whether a recorded {pid, start_ticks} process still runs (and is the same one)."""
    if not record:
        return False
    ticks = process_start_ticks(int(record["pid"]))
    return ticks is not None and ticks == record.get("start_ticks")


def process_record(pid: int) -> dict[str, Any]:
    """The {pid, start_ticks} record of running process `pid`."""
    return {"pid": pid, "start_ticks": process_start_ticks(pid)}
