"""The testbed's commands: `up`, `down`, `status` and `change_link` (what `prfaas testbed` calls).

`up` makes the namespaces and veth links of a `TestbedLayout` (tbf on the WAN), starts the WAN's
delay line (`prfaas.testbed.delayline`), writes the topology and a transport token into the run
directory `<state root>/<name>/`, and starts the supervisor (`prfaas.testbed.supervisor`) in its
own session, so it outlives `up`; `up` returns once the supervisor reports the router ready.
`down` stops the supervisor (SIGTERM: the services drain), kills whatever still runs inside the
namespaces (the delay line included), deletes them and the state; it also cleans a half-made
testbed and is a no-op for a missing one. `status` and `change_link` read and change a running
one (rate, up/down, delay, jitter, loss, reordering); a new WAN rate is also told to the router,
so that its link view keeps matching the wire. The state file is `prfaas.testbed.state`'s, the
network `prfaas.testbed.network`'s.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.launch.local import router_is_ready
from prfaas.testbed import netns
from prfaas.testbed.delay_schedule import DelaySettings, DelaySettingsError
from prfaas.testbed.layout import (
    TestbedLayout,
    TestbedScale,
    TestbedSpec,
    resolve_threshold,
    topology_text,
)
from prfaas.testbed.network import (
    create_network,
    delay_report,
    delete_network,
    existing_namespaces,
    inform_router,
    link_report,
    require_netns,
    set_delay,
    set_delay_path,
    set_wan_rate,
    start_delay_line,
)
from prfaas.testbed.state import (
    STATE_FILE,
    TOKEN_FILE,
    TOPOLOGY_FILE,
    is_alive,
    read_state,
    remove_files,
    run_dir_of,
    update_state,
    write_state,
)
from prfaas.testbed.supervisor import (
    READY_POLL_S,
    SUPERVISOR_GRACE_S,
    kill_all,
    stop_supervisor,
    supervise,
)

_STATUS_KEYS = (
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

# ---- up -------------------------------------------------------------------------------------


def up(spec: TestbedSpec, state_root: Path, ready_timeout_s: float) -> dict[str, Any]:
    """Build testbed `spec.name` and start its services detached; its state once ready."""
    started = time.monotonic()
    run_dir = prepare(spec, state_root, ready_timeout_s)
    with (run_dir / "logs" / "supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "prfaas.testbed.supervisor", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `up`, and Ctrl-C in `up`'s terminal
        )
    try:
        _wait_for_phase(run_dir, supervisor, ready_timeout_s + SUPERVISOR_GRACE_S)
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
    wire_gbps = spec.scale.check_delay_line_rate().wire_gbps
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    token_file = run_dir / TOKEN_FILE
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    text = topology_text(spec, layout, token_file, threshold[0], wire_gbps)
    (run_dir / TOPOLOGY_FILE).write_text(text)
    try:
        create_network(layout, wire_gbps)
        try:
            line = start_delay_line(layout, run_dir, spec.delay, spec.delay_seed)
            set_delay_path(layout, spec.delay.holds_packets)
        except UserError:
            delete_network(layout)
            raise
    except UserError:
        remove_files(run_dir)
        raise
    state = _initial_state(spec, layout, threshold, ready_timeout_s)
    write_state(run_dir, state | {"delay_line": line})
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
        "namespaces": {
            "prfaas": layout.prfaas_ns,
            "pd": layout.pd_ns,
            "client": layout.client_ns,
            "wan": layout.wan_ns,
        },
        "wan": {"ns": wan.ns, "dev": wan.dev},
        "delay": spec.delay.to_dict(),
        "delay_seed": spec.delay_seed,
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
        time.sleep(READY_POLL_S)
    raise UserError(f"the testbed was not ready within {timeout_s:g} s; logs in {logs}")


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
    stopped_supervisor = stop_supervisor(state)
    num_killed = sum(kill_all(netns.namespace_pids(ns)) for ns in present)
    records = [*(state or {}).get("services", {}).values(), (state or {}).get("delay_line")]
    for record in records:
        if is_alive(record):
            kill_all([int(record["pid"])])
            num_killed += 1
    deleted = delete_network(layout)
    remove_files(run_dir)
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
    link = link_report(layout) if layout.prfaas_ns in present else None
    delay = _delay_status(run_dir_of(state_root, name), state)
    all_up = (
        all(report["namespaces"].values())
        and bool(services)
        and all(s["alive"] for s in services.values())
        and ready
        and link is not None
        and link["up"]
        and delay["alive"]
        and "error" not in delay["line"]
    )
    return (
        report
        | {k: state.get(k) for k in _STATUS_KEYS}
        | {
            "client_exec": state["client_exec"],
            "supervisor_alive": is_alive(state.get("supervisor")),
            "services": services,
            "router_ready": ready,
            "link": link,
            "delay": delay,
            "all_up": all_up,
        }
    )


def _delay_status(run_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The delay settings the state holds, whether the delay line runs, and its own report
    (the settings it applies, its counters per direction)."""
    alive = is_alive(state.get("delay_line"))
    line = delay_report(run_dir) if alive else {"error": "the delay line is not running"}
    return {"settings": state.get("delay"), "alive": alive, "line": line}


def change_link(
    name: str,
    state_root: Path,
    *,
    nominal_gbps: float | None = None,
    is_up: bool | None = None,
    delay_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Change the WAN of a running testbed: its nominal rate (scaled like at `up`, and told to
    the router), whether it is up, and/or the delay line's settings (`delay_changes`: the
    `DelaySettings` fields to change, None values kept); the new link settings, and whether the
    router took the new rate (`inform_router`'s keys; `router_informed` is None when the rate
    did not change, False with `router_reason` when the router could not be told: reported, not
    raised)."""
    require_netns()
    layout = TestbedLayout(name)
    run_dir = run_dir_of(state_root, name)
    state = read_state(run_dir)
    if state is None or layout.prfaas_ns not in existing_namespaces(layout):
        raise UserError(f"no running testbed {name!r}")
    wan = layout.wan_prfaas
    # everything is checked before anything changes
    new_delay = _new_delay(state, delay_changes) if delay_changes else None
    scale = None
    if nominal_gbps is not None:
        scale = TestbedScale(**state["scale"]).with_nominal(nominal_gbps).check_delay_line_rate()
    changes: dict[str, Any] = {}
    if new_delay is not None:
        changes["delay"] = set_delay(run_dir, new_delay)
        set_delay_path(layout, new_delay.holds_packets)
    told: dict[str, Any] = {
        "router_informed": None,
        "router_reason": "the rate did not change",
        "router_link_bytes_per_s": None,
    }
    if scale is not None:
        set_wan_rate(layout, scale.wire_gbps)
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
        "delay": state.get("delay"),
        **told,
    }


def _new_delay(state: dict[str, Any], changes: dict[str, Any]) -> DelaySettings:
    """The state's delay settings with `changes` applied (a bad combination: UserError)."""
    try:
        return DelaySettings.from_dict(state.get("delay", {})).replaced(**changes)
    except DelaySettingsError as exc:
        raise UserError(str(exc)) from None
