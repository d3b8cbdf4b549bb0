"""Starting services: one plain function per process, and `prfaas up`'s child-process launcher.

`serve_instance(topology, name)` and `serve_router(topology)` each run one service until it is
stopped; a subprocess launcher calls them today and a Ray actor can call them later. `Launcher`
starts a topology's router and instances as child processes of this one (each child dies with its
parent: PR_SET_PDEATHSIG) under a deployment id of its own (`$PRFAAS_DEPLOYMENT_ID`), waits until
the router reports every cluster ready with that id (another deployment answering on the same
address does not count), and stops them all on `stop()` (SIGTERM, then SIGKILL after a grace
period). `check_router_port` refuses a router address that is already taken;
`embedded_topology` writes the default deployment of `prfaas up`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prfaas import topology as topo
from prfaas.errors import UserError
from prfaas.topology import Topology

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 10.0  # past the services' own drain time, a child still running is killed


def serve_instance(topology: Topology, name: str) -> None:
    """Run instance `name` of the topology (prefill or decode) until SIGINT/SIGTERM."""
    from prfaas.service.http import serve_app

    instance = topology.instance(name)
    drain_s = topology.policy.drain_s
    if topology.is_convertible(instance):
        from prfaas.instance.pd import build_pd_app

        serve_app(build_pd_app(topology, instance), instance.http, name, drain_s)
    elif instance.role == "prefill":
        from prfaas.instance.prefill import build_prefill_app

        serve_app(build_prefill_app(topology, instance), instance.http, name, drain_s)
    else:
        from prfaas.instance.decode import build_decode_app

        serve_app(build_decode_app(topology, instance), instance.http, name, drain_s)


def serve_router(topology: Topology) -> None:
    """Run the topology's router until SIGINT/SIGTERM."""
    from prfaas.router.app import build_router_app
    from prfaas.service.http import serve_app

    serve_app(build_router_app(topology), topology.router.http, "router", topology.policy.drain_s)


_handed_out_ports: set[int] = set()
_FREE_PORT_TRIES = 256


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port the kernel had free a moment ago (the caller binds it soon after).

    The kernel may hand out a just-released port again, so this never returns a port it
    returned before in this process, nor one in `avoid` (ports another process picked but
    has not bound yet, e.g. the router port `prfaas up` was given)."""
    for _ in range(_FREE_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out_ports and port not in avoid:
            _handed_out_ports.add(port)
            return port
    raise OSError(f"no free port on {host} after {_FREE_PORT_TRIES} tries")


@dataclass(frozen=True)
class EmbeddedOptions:
    """What `prfaas up` without --config can change about the embedded deployment."""

    model: str = "qwen3_next"
    router_port: int = 8000
    threshold_tokens: int = 128
    engine: str = "torch"
    failure: str = "recompute"
    transfer_deadline_s: float = 30.0
    host: str = "127.0.0.1"
    api_keys: tuple[str, ...] = ()  # required Bearer keys; empty: open
    pd_prefill: bool = True  # False: the PD decode instance prefills local requests itself
    time_scale: float = 1.0  # emulated engines: multiple of the predicted durations slept
    emulate: str = "paper-1t"  # the model preset emulated engines time and size
    prefix_block_tokens: int | None = None  # every instance keeps a prefix cache of such blocks
    prefix_budget_bytes: int = 256 << 20  # bytes per instance's prefix cache
    decode_kv: str | None = None  # the decode instance's `kv` (default: a free port of host)
    decode_kv_listen: str | None = None  # where it binds instead (e.g. behind a proxy)
    receive_pool_bytes: int | None = None  # [transport] receive_pool_bytes (None: the default)


def descendant_pids(pid: int) -> list[int]:
    """Every process under `pid` (from /proc's parent links), children before grandchildren:
    what outlives a killed parent (a vLLM server's engine core and workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def embedded_topology(directory: Path, options: EmbeddedOptions) -> Path:
    """Write the default deployment: router, PrfaaS prefill, PD prefill, PD decode; one token,
    in a file of its own beside the topology (both readable by their owner only)."""
    token = secrets.token_hex(16)
    topology = _embedded(options, token)  # a bad --model is refused before anything is written
    token_file = directory / "transport.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    return topo.write_topology(
        directory / "topology.toml",
        topology,
        token_file=token_file,
        comment="prfaas up: the embedded deployment (one machine, loopback link)",
    )


def _model_reference(name: str) -> str:
    """A tiny preset name as is; anything else is a checkpoint directory, made absolute against
    the working directory (the topology file is written to a folder of its own, and a relative
    name in it would be looked up there). A directory without a config.json is a UserError that
    names the user's path."""
    from prfaas.engine.presets import PRESETS

    if name in PRESETS:
        return name
    directory = Path(name).expanduser().resolve()
    if not (directory / "config.json").is_file():
        raise UserError(
            f"model {name!r} is neither a tiny preset ({', '.join(PRESETS)}) nor a directory "
            f"with a config.json ({directory})"
        )
    return str(directory)


def _embedded(options: EmbeddedOptions, token: str) -> Topology:
    model = _model_reference(options.model)
    prfaas = [_embedded_instance("prfaas-prefill-0", "prfaas", "prefill", "h200", options)]
    pd: list[topo.InstanceConfig] = []
    if options.pd_prefill:
        pd.append(_embedded_instance("pd-prefill-0", "pd", "prefill", "h20", options))
    decode = _embedded_instance("pd-decode-0", "pd", "decode", "h20", options)
    kv = options.decode_kv or _free_address(options)
    pd.append(dataclasses.replace(decode, kv=kv, kv_listen=options.decode_kv_listen))
    transport = topo.SecurityConfig(token=token)
    if options.receive_pool_bytes is not None:
        transport = dataclasses.replace(transport, receive_pool_bytes=options.receive_pool_bytes)
    prefix_cache = None
    if options.prefix_block_tokens is not None:
        prefix_cache = topo.PrefixCacheConfig(
            options.prefix_block_tokens, options.prefix_budget_bytes
        )
    return Topology(
        model=topo.ModelConfig(model, time_scale=options.time_scale, emulate=options.emulate),
        clusters=(
            topo.ClusterConfig("prfaas", "prfaas", tuple(prfaas)),
            topo.ClusterConfig("pd", "pd", tuple(pd)),
        ),
        policy=topo.PolicyConfig(
            float(options.threshold_tokens),
            failure=options.failure,
            transfer_deadline_s=options.transfer_deadline_s,
        ),
        router=topo.RouterConfig(
            http=f"{options.host}:{options.router_port}", api_keys=options.api_keys
        ),
        link=topo.LinkConfig(gbps=10.0),
        transport=transport,
        prefix_cache=prefix_cache,
    )


def _free_address(options: EmbeddedOptions) -> str:
    """HOST:PORT on a free port of the deployment's host other than the router's."""
    return f"{options.host}:{free_port(options.host, avoid={options.router_port})}"


def _embedded_instance(
    name: str, cluster: str, role: str, hardware: str, options: EmbeddedOptions
) -> topo.InstanceConfig:
    """One instance on a free address (the decode instance's KV address is the caller's)."""
    return topo.InstanceConfig(
        name, cluster, role, _free_address(options), engine=options.engine, hardware=hardware
    )


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the launcher dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    """Child processes for a topology's router and instances.

    `command_prefix` maps a service name ("router" or an instance name) to an argv prefix its
    command runs under, e.g. `["ip", "netns", "exec", NS]` to start it inside a namespace (the
    testbed); services without one run as plain children."""

    def __init__(
        self,
        config_path: Path,
        topology: Topology,
        log_dir: Path | None = None,
        command_prefix: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config_path = config_path
        self.topology = topology
        self.log_dir = log_dir
        self.command_prefix = {name: list(p) for name, p in (command_prefix or {}).items()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._service_cmds: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.deployment_id = secrets.token_hex(8)  # the router's /ready returns it

    def start(self) -> None:
        for inst in self.topology.instances:
            if inst.engine == "vllm":
                self._spawn_vllm(inst)
            else:
                self._spawn(inst.name, [inst.role, "--instance", inst.name])
        self._spawn("router", ["router"])

    def _spawn(self, name: str, args: list[str]) -> None:
        """A `prfaas` service of this topology: the router or one instance."""
        cmd = [sys.executable, "-m", "prfaas", *args, "--config", str(self.config_path)]
        self._start(name, cmd, {})

    def _spawn_vllm(self, instance: topo.InstanceConfig) -> None:
        """A `vllm serve` with the PrfaaS connector for an `engine = "vllm"` instance."""
        from prfaas.launch.vllm_serve import VLLM_TOKEN_ENV, serve_args, vllm_command
        from prfaas.service.http import TOKEN_ENV

        token = os.environ.get(TOKEN_ENV) or self.topology.transport.token or ""
        cmd = [*vllm_command(), *serve_args(self.topology, instance)]
        self._start(instance.name, cmd, {VLLM_TOKEN_ENV: token})

    def _start(self, name: str, cmd: list[str], extra_env: Mapping[str, str]) -> None:
        self._service_cmds[name] = (list(cmd), dict(extra_env))
        cmd = [*self.command_prefix.get(name, []), *cmd]
        out = None
        if self.log_dir is not None:
            out = (self.log_dir / f"{name}.log").open("ab")
        from prfaas.service.http import DEPLOYMENT_ID_ENV

        env = {**os.environ, **extra_env, DEPLOYMENT_ID_ENV: self.deployment_id}
        self.procs[name] = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )

    @property
    def router_url(self) -> str:
        return f"http://{self.topology.router.http}"

    def wait_ready(self, timeout_s: float) -> None:
        """Until the router's /ready answers 200 with this deployment's id; UserError if a child
        exits (with the last line of its log, when there is one) or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise UserError(self._exit_message(name, proc.returncode))
            if router_is_ready(self.router_url, self.deployment_id):
                return
            time.sleep(0.25)
        raise UserError(f"the deployment was not ready within {timeout_s:g} s")

    def _exit_message(self, name: str, status: int) -> str:
        message = f"{name} exited with status {status} while starting"
        if self.log_dir is None:
            return message  # its own error line went to this terminal
        log = self.log_dir / f"{name}.log"
        return f"{message}: {_last_line(log)} (log: {log})"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.topology.policy.drain_s + _STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL one child (fault tests)."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def restart(self, name: str) -> None:
        """Start child `name` again with its original command (fault tests, `up` supervision)."""
        old = self.procs[name]
        if old.poll() is None:
            self.kill(name)
        self._start(name, *self._service_cmds[name])

    def __enter__(self) -> Launcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file ("" if none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def check_engines_installed(topology: Topology) -> None:
    """UserError before anything starts when instances of `topology` run the torch engine and
    torch is not installed (emulated instances need none), or run vLLM and no vLLM is found."""
    from prfaas.engine import ENGINE_EXTRA_HINT, torch_installed

    if any(i.engine == "vllm" for i in topology.instances):
        from prfaas.launch.vllm_serve import vllm_command

        vllm_command()  # UserError naming how to get vLLM
    torch_instances = [i.name for i in topology.instances if i.engine == "torch"]
    if torch_instances and not torch_installed():
        raise UserError(
            f"instances {', '.join(torch_instances)} run the torch engine, which is not "
            f'installed: {ENGINE_EXTRA_HINT} (or emulate them: engine = "emulated" in the '
            "topology, prfaas up --engine emulated)"
        )


def check_router_port(topology: Topology) -> None:
    """UserError naming the router's address when it cannot be bound now (e.g. another
    deployment serves there): checked before anything starts."""
    from prfaas.service.http import bind_refusal
    from prfaas.transport.sender import parse_address

    address = topology.router.http
    host, port = parse_address(address)
    reason = bind_refusal(host, port)
    if reason is not None:
        raise UserError(f"the router's port {port} ({address}) cannot be used: {reason}")


def router_is_ready(url: str, deployment_id: str | None = None) -> bool:
    """Whether the router at `url` answers 200 on /ready (and, given `deployment_id`, is the
    router of that deployment)."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as reply:
            if reply.status != 200:
                return False
            return deployment_id is None or _deployment_of(reply.read()) == deployment_id
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _deployment_of(body: bytes) -> object:
    """The "deployment" of a /ready body (None when absent or not JSON)."""
    data = json.loads(body)
    return data.get("deployment") if isinstance(data, dict) else None
