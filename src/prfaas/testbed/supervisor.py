"""The supervisor of a testbed's services, and the stopping of what a testbed started.

Run as `python -m prfaas.testbed.supervisor RUN_DIR` (detached by `up`, in its own session, so
it outlives `up`), or in the foreground by `up --foreground`: it runs the topology's `Launcher`
with every service inside its cluster's namespace, records pids and its phase in the state
file, waits until the router answers `/ready` from the client namespace, and on SIGTERM or
SIGINT stops the services (they drain). `stop_supervisor` and `kill_all` are `down`'s side:
SIGTERM, then SIGKILL past a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.launch.local import Launcher, router_is_ready
from prfaas.testbed import netns
from prfaas.testbed.layout import TestbedLayout
from prfaas.testbed.state import (
    TOPOLOGY_FILE,
    is_alive,
    process_record,
    read_state,
    update_state,
)

READY_POLL_S = 0.25
SUPERVISOR_GRACE_S = 15.0  # past the services' drain time
_KILL_GRACE_S = 5.0  # namespace stragglers: SIGTERM, then SIGKILL after this


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def supervise(run_dir: Path, on_ready: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the testbed's services until SIGTERM/SIGINT, recording pids and phase; 0 when it was
    ready and stopped on a signal, 1 when it failed."""
    state = read_state(run_dir)
    if state is None:
        raise UserError(f"no testbed state in {run_dir}")
    layout = TestbedLayout(state["name"])
    launcher = _launcher(run_dir, layout)
    previous = _install_stop_handlers()
    update_state(run_dir, supervisor=process_record(os.getpid()))
    try:
        launcher.start()
        services = {name: process_record(p.pid) for name, p in launcher.procs.items()}
        update_state(run_dir, services=services)
        _wait_ready(launcher, layout.client_ns, float(state["ready_timeout_s"]))
        ready = update_state(run_dir, phase="ready")
        if on_ready is not None:
            on_ready(ready)
        while True:
            time.sleep(0.5)
    except _Stop:
        update_state(run_dir, phase="stopping")
        return 0
    except Exception as exc:
        update_state(run_dir, phase="failed", error=" ".join(str(exc).split()))
        return 1
    finally:
        launcher.stop()
        _restore_handlers(previous)


def _launcher(run_dir: Path, layout: TestbedLayout) -> Launcher:
    """The run directory's topology, each service run inside its cluster's namespace (the
    router in the PD cluster's)."""
    from prfaas.topology import load_topology

    config = run_dir / TOPOLOGY_FILE
    topology = load_topology(config)
    prefixes = {
        i.name: netns.exec_prefix(layout.namespace_of_cluster(i.cluster))
        for i in topology.instances
    }
    prefixes["router"] = netns.exec_prefix(layout.pd_ns)
    return Launcher(config, topology, run_dir / "logs", command_prefix=prefixes)


def _wait_ready(launcher: Launcher, client_ns: str, timeout_s: float) -> None:
    """Until the router answers /ready to a request sent from the client namespace."""
    deadline = time.monotonic() + timeout_s
    url = launcher.router_url
    while time.monotonic() < deadline:
        for name, proc in launcher.procs.items():
            if proc.poll() is not None:
                raise UserError(f"{name} exited with status {proc.returncode} while starting")
        if netns.call_in_netns(client_ns, lambda: router_is_ready(url)):
            return
        time.sleep(READY_POLL_S)
    raise UserError(f"the router was not ready within {timeout_s:g} s")


def _install_stop_handlers() -> dict[int, Any]:
    def stop(signum: int, frame: object) -> None:
        raise _Stop()

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def stop_supervisor(state: dict[str, Any] | None) -> bool:
    """SIGTERM the supervisor (its services drain), SIGKILL it past the grace period."""
    record = (state or {}).get("supervisor")
    if not is_alive(record) or record is None or int(record["pid"]) == os.getpid():
        return False
    pid = int(record["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float((state or {}).get("drain_s", 5)) + SUPERVISOR_GRACE_S
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def kill_all(pids: list[int]) -> int:
    """SIGTERM these processes, SIGKILL the ones left after the grace period; how many."""
    records = [process_record(pid) for pid in pids if pid != os.getpid()]
    for record in records:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + _KILL_GRACE_S
    while any(is_alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
    for record in records:
        if is_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
    return len(records)


def main(argv: list[str]) -> int:
    """The detached supervisor's entry point: `python -m prfaas.testbed.supervisor RUN_DIR`."""
    if len(argv) != 1:
        print("usage: python -m prfaas.testbed.supervisor RUN_DIR", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
