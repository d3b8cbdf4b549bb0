"""The testbed's I/O: namespaces and links, the supervisor of its services, and its state file.

`up` makes the namespaces and veth links of a `TestbedLayout` (tbf on the WAN), writes the
topology and a transport token into the run directory `<state root>/<name>/`, and starts a
supervisor process (its own session, so it outlives `up`) that runs the topology's `Launcher`
with every service inside its cluster's namespace and records pids and its phase in
`state.json`. `up` returns once the router answers `/ready` from the client namespace. `down`
stops the supervisor (SIGTERM: the services drain), kills whatever still runs inside the
namespaces, deletes them and the state; it also cleans a half-made testbed and is a no-op for a
missing one. `status` and `change_link` read and change a running one; a new WAN rate is also
told to the router (`POST /internal/control/link` from the client namespace, with the
deployment token), so that its link view keeps matching the wire.

Run as `python -m prfaas.testbed.run RUN_DIR`, this module is the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.launch.local import Launcher, router_is_ready
from prfaas.service.auth import bearer
from prfaas.testbed import netns
from prfaas.testbed.layout import (
    TestbedLayout,
    TestbedScale,
    TestbedSpec,
    check_name,
    resolve_threshold,
    tbf_burst_bytes,
    topology_text,
)

STATE_FILE = "state.json"
_READY_POLL_S = 0.25
_KILL_GRACE_S = 5.0  # namespace stragglers: SIGTERM, then SIGKILL after this
_SUPERVISOR_GRACE_S = 15.0  # past the services' drain time
TOKEN_FILE = "transport.token"
_FILES = (STATE_FILE, "topology.toml", TOKEN_FILE)
_ROUTER_TIMEOUT_S = 5.0  # telling the router a new link capacity


# ---- state ----------------------------------------------------------------------------------


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


def _record(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start_ticks": process_start_ticks(pid)}


# ---- network ----------------------------------------------------------------------------------


def require_netns() -> None:
    reason = netns.netns_unavailable_reason()
    if reason is not None:
        raise UserError(f"the testbed needs network namespaces: {reason}")


def create_network(layout: TestbedLayout, wire_gbps: float, delay_ms: float) -> None:
    """The three namespaces, both veth pairs and the WAN's tbf; everything made is removed again
    when a step fails (NetnsError becomes a UserError)."""
    try:
        for ns in layout.namespaces:
            netns.add_namespace(ns)
        netns.add_veth(layout.wan_prfaas, layout.wan_pd)
        netns.add_veth(layout.client_pd, layout.client)
        wan = layout.wan_prfaas
        netns.set_tbf(wan.ns, wan.dev, wire_gbps, tbf_burst_bytes(wire_gbps), delay_ms=delay_ms)
    except netns.NetnsError as exc:
        delete_network(layout)
        raise UserError(f"could not build the testbed's network: {exc}") from None


def delete_network(layout: TestbedLayout) -> list[str]:
    """Delete whichever of the namespaces exist (their veths go with them); names deleted."""
    return [ns for ns in layout.namespaces if netns.delete_namespace(ns)]


def existing_namespaces(layout: TestbedLayout) -> list[str]:
    present = set(netns.list_namespaces())
    return [ns for ns in layout.namespaces if ns in present]


# ---- up -------------------------------------------------------------------------------------


def up(spec: TestbedSpec, state_root: Path, ready_timeout_s: float) -> dict[str, Any]:
    """Build testbed `spec.name` and start its services detached; its state once ready."""
    started = time.monotonic()
    run_dir = prepare(spec, state_root, ready_timeout_s)
    with (run_dir / "logs" / "supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "prfaas.testbed.run", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `up`, and Ctrl-C in `up`'s terminal
        )
    try:
        _wait_for_phase(run_dir, supervisor, ready_timeout_s + _SUPERVISOR_GRACE_S)
    except BaseException:
        down(spec.name, state_root)
        raise
    return update_state(run_dir, up_s=round(time.monotonic() - started, 2))


def prepare(spec: TestbedSpec, state_root: Path, ready_timeout_s: float) -> Path:
    """Refuse an existing testbed, then make the network, token, topology and first state."""
    require_netns()
    layout = TestbedLayout(spec.name)
    run_dir = run_dir_of(state_root, spec.name)
    refuse_existing(layout, run_dir)
    threshold = resolve_threshold(spec)
    wire_gbps = spec.scale.wire_gbps
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    token_file = run_dir / TOKEN_FILE
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    text = topology_text(spec, layout, token_file, threshold[0], wire_gbps)
    (run_dir / "topology.toml").write_text(text)
    try:
        create_network(layout, wire_gbps, spec.delay_ms)
    except UserError:
        _remove_files(run_dir)
        raise
    write_state(run_dir, _initial_state(spec, layout, threshold, ready_timeout_s))
    return run_dir


def refuse_existing(layout: TestbedLayout, run_dir: Path) -> None:
    present = existing_namespaces(layout)
    if (run_dir / STATE_FILE).exists() or present:
        what = ", ".join(present) if present else f"state in {run_dir}"
        raise UserError(
            f"testbed {layout.name!r} already exists ({what}); "
            f"`prfaas testbed down --name {layout.name}` first"
        )


def _initial_state(
    spec: TestbedSpec,
    layout: TestbedLayout,
    threshold: tuple[float | None, str],
    ready_timeout_s: float,
) -> dict[str, Any]:
    wan = layout.wan_prfaas
    return {
        "name": spec.name,
        "phase": "starting",
        "error": None,
        "engine": spec.engine,
        "deployment": spec.deployment,
        "controller": spec.controller,
        "namespaces": {"prfaas": layout.prfaas_ns, "pd": layout.pd_ns, "client": layout.client_ns},
        "wan": {"ns": wan.ns, "dev": wan.dev, "delay_ms": spec.delay_ms},
        "scale": asdict(spec.scale),
        "wire_gbps": spec.scale.wire_gbps,
        "threshold_tokens": threshold[0],
        "threshold": threshold[1],
        "router_url": f"http://{layout.router_address(spec.router_port)}",
        "client_exec": netns.exec_prefix(layout.client_ns),
        "drain_s": spec.drain_s,
        "ready_timeout_s": ready_timeout_s,
        "services": {},
        "supervisor": None,
    }


def _wait_for_phase(
    run_dir: Path, supervisor: subprocess.Popen[bytes], timeout_s: float
) -> dict[str, Any]:
    """Until the supervisor reports ready; UserError when it fails, exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    logs = run_dir / "logs"
    while time.monotonic() < deadline:
        state = read_state(run_dir) or {}
        if state.get("phase") == "ready":
            return state
        if state.get("phase") == "failed" or supervisor.poll() is not None:
            supervisor.wait()
            why = state.get("error") or f"the supervisor exited ({supervisor.returncode})"
            raise UserError(f"the testbed did not start: {why}; logs in {logs}")
        time.sleep(_READY_POLL_S)
    raise UserError(f"the testbed was not ready within {timeout_s:g} s; logs in {logs}")


# ---- the supervisor ---------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def supervise(run_dir: Path, on_ready: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the testbed's services until SIGTERM/SIGINT, recording pids and phase; 0 when it was
    ready and stopped on a signal, 1 when it failed."""
    from prfaas.topology import load_topology

    state = read_state(run_dir)
    if state is None:
        raise UserError(f"no testbed state in {run_dir}")
    layout = TestbedLayout(state["name"])
    config = run_dir / "topology.toml"
    topology = load_topology(config)
    prefixes = {
        i.name: netns.exec_prefix(layout.namespace_of_cluster(i.cluster))
        for i in topology.instances
    }
    prefixes["router"] = netns.exec_prefix(layout.pd_ns)
    launcher = Launcher(config, topology, run_dir / "logs", command_prefix=prefixes)
    previous = _install_stop_handlers()
    update_state(run_dir, supervisor=_record(os.getpid()))
    try:
        launcher.start()
        services = {name: _record(p.pid) for name, p in launcher.procs.items()}
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
        time.sleep(_READY_POLL_S)
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


def run_foreground(
    spec: TestbedSpec,
    state_root: Path,
    ready_timeout_s: float,
    on_ready: Callable[[dict[str, Any]], None],
) -> int:
    """`up --foreground`: the supervisor in this process until Ctrl-C, then `down`."""
    run_dir = prepare(spec, state_root, ready_timeout_s)
    try:
        return supervise(run_dir, on_ready)
    finally:
        down(spec.name, state_root)


# ---- down -----------------------------------------------------------------------------------


def down(name: str, state_root: Path) -> dict[str, Any]:
    """Stop and delete testbed `name`, whatever state it is in; what was done."""
    require_netns()
    started = time.monotonic()
    layout = TestbedLayout(name)
    run_dir = run_dir_of(state_root, name)
    state = read_state(run_dir)
    present = existing_namespaces(layout)
    if state is None and not present:
        return {"name": name, "existed": False, "message": f"no testbed {name!r}: nothing to do"}
    stopped_supervisor = _stop_supervisor(state)
    num_killed = sum(_kill_all(netns.namespace_pids(ns)) for ns in present)
    for record in (state or {}).get("services", {}).values():
        if is_alive(record):
            _kill_all([int(record["pid"])])
            num_killed += 1
    deleted = delete_network(layout)
    _remove_files(run_dir)
    return {
        "name": name,
        "existed": True,
        "stopped_supervisor": stopped_supervisor,
        "num_killed": num_killed,
        "deleted_namespaces": deleted,
        "down_s": round(time.monotonic() - started, 2),
        "logs": str(run_dir / "logs"),
        "message": f"testbed {name!r} is down",
    }


def _remove_files(run_dir: Path) -> None:
    """The state, topology and token of a run directory (its logs stay)."""
    for file in _FILES:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / file).unlink()


def _stop_supervisor(state: dict[str, Any] | None) -> bool:
    """SIGTERM the supervisor (its services drain), SIGKILL it past the grace period."""
    record = (state or {}).get("supervisor")
    if not is_alive(record) or record is None or int(record["pid"]) == os.getpid():
        return False
    pid = int(record["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float((state or {}).get("drain_s", 5)) + _SUPERVISOR_GRACE_S
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _kill_all(pids: list[int]) -> int:
    """SIGTERM these processes, SIGKILL the ones left after the grace period; how many."""
    records = [_record(pid) for pid in pids if pid != os.getpid()]
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


# ---- status and link ------------------------------------------------------------------------


def status(name: str, state_root: Path) -> dict[str, Any]:
    """What runs of testbed `name`: namespaces, processes, router readiness, the WAN's qdisc."""
    require_netns()
    layout = TestbedLayout(name)
    state = read_state(run_dir_of(state_root, name))
    present = set(existing_namespaces(layout))
    report: dict[str, Any] = {
        "name": name,
        "exists": state is not None or bool(present),
        "namespaces": {ns: ns in present for ns in layout.namespaces},
    }
    if state is None:
        return report | {"all_up": False, "phase": None}
    services = {
        svc: {"pid": rec["pid"], "alive": is_alive(rec)} for svc, rec in state["services"].items()
    }
    url = state["router_url"]
    ready = layout.client_ns in present and netns.call_in_netns(
        layout.client_ns, lambda: router_is_ready(url)
    )
    link = _link_report(state, layout) if layout.prfaas_ns in present else None
    all_up = (
        all(report["namespaces"].values())
        and bool(services)
        and all(s["alive"] for s in services.values())
        and ready
        and link is not None
        and link["up"]
    )
    keys = (
        "phase",
        "error",
        "engine",
        "deployment",
        "controller",
        "scale",
        "wire_gbps",
        "threshold_tokens",
        "router_url",
    )
    return (
        report
        | {k: state.get(k) for k in keys}
        | {
            "client_exec": state["client_exec"],
            "supervisor_alive": is_alive(state.get("supervisor")),
            "services": services,
            "router_ready": ready,
            "link": link,
            "all_up": all_up,
        }
    )


def _link_report(state: dict[str, Any], layout: TestbedLayout) -> dict[str, Any]:
    wan = layout.wan_prfaas
    try:
        stats = asdict(netns.qdisc_stats(wan.ns, wan.dev))
    except netns.NetnsError as exc:
        stats = {"error": str(exc)}
    return {"ns": wan.ns, "dev": wan.dev, "up": netns.link_is_up(wan.ns, wan.dev), **stats}


def change_link(
    name: str,
    state_root: Path,
    *,
    nominal_gbps: float | None = None,
    is_up: bool | None = None,
) -> dict[str, Any]:
    """Change the WAN of a running testbed: its nominal rate (scaled like at `up`, and told to
    the router) and/or whether it is up; the new link settings, and whether the router took the
    new rate (`inform_router`'s keys; `router_informed` is None when the rate did not change,
    False with `router_reason` when the router could not be told: reported, not raised)."""
    require_netns()
    layout = TestbedLayout(name)
    run_dir = run_dir_of(state_root, name)
    state = read_state(run_dir)
    if state is None or layout.prfaas_ns not in existing_namespaces(layout):
        raise UserError(f"no running testbed {name!r}")
    wan = layout.wan_prfaas
    changes: dict[str, Any] = {}
    told: dict[str, Any] = {
        "router_informed": None,
        "router_reason": "the rate did not change",
        "router_link_bytes_per_s": None,
    }
    if nominal_gbps is not None:
        scale = TestbedScale(**state["scale"]).with_nominal(nominal_gbps)
        delay_ms = float(state["wan"].get("delay_ms", 0.0))
        burst = tbf_burst_bytes(scale.wire_gbps)
        try:
            netns.set_tbf(wan.ns, wan.dev, scale.wire_gbps, burst, delay_ms=delay_ms)
        except netns.NetnsError as exc:
            raise UserError(str(exc)) from None
        changes |= {"scale": asdict(scale), "wire_gbps": scale.wire_gbps}
        told = inform_router(run_dir, state, layout, scale.wire_gbps)
    if is_up is not None:
        netns.set_link_up(wan.ns, wan.dev, is_up)
    state = update_state(run_dir, **changes)
    return {
        "name": name,
        "nominal_gbps": state["scale"]["nominal_gbps"],
        "wire_gbps": state["wire_gbps"],
        "up": netns.link_is_up(wan.ns, wan.dev),
        **told,
    }


def inform_router(
    run_dir: Path, state: dict[str, Any], layout: TestbedLayout, wire_gbps: float
) -> dict[str, Any]:
    """POST the new wire rate to the router's `/internal/control/link` from the client
    namespace, with the deployment token (never raises): `router_informed`, `router_reason`
    (None when informed) and `router_link_bytes_per_s`, the capacity the router now uses."""
    try:
        token = (run_dir / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        return _told(f"no deployment token: {exc}")
    url = f"{state['router_url']}/internal/control/link"
    try:
        return netns.call_in_netns(layout.client_ns, lambda: post_link(url, token, wire_gbps))
    except (netns.NetnsError, OSError) as exc:  # the client namespace is gone
        return _told(f"cannot reach the client namespace: {exc}")


def _told(reason: str | None, link_bytes_per_s: float | None = None) -> dict[str, Any]:
    return {
        "router_informed": reason is None,
        "router_reason": reason,
        "router_link_bytes_per_s": link_bytes_per_s,
    }


def post_link(url: str, token: str, gbps: float) -> dict[str, Any]:
    """POST {"gbps": gbps} to `url` as Bearer `token`; whether the router took it (see
    `inform_router`)."""
    body = json.dumps({"gbps": gbps}).encode()
    headers = {"Content-Type": "application/json", **bearer(token)}
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_ROUTER_TIMEOUT_S) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        detail = " ".join(exc.read().decode(errors="replace").split())[:200]
        return _told(f"the router answered {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _told(f"the router did not answer: {exc}")
    capacity = answer.get("link_bytes_per_s") if isinstance(answer, dict) else None
    if not isinstance(capacity, int | float):
        return _told(f"the router answered without link_bytes_per_s: {str(answer)[:200]}")
    return _told(None, float(capacity))


def main(argv: list[str]) -> int:
    """The detached supervisor's entry point: `python -m prfaas.testbed.run RUN_DIR`."""
    if len(argv) != 1:
        print("usage: python -m prfaas.testbed.run RUN_DIR", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
