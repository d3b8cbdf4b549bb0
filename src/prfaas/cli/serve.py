"""`prfaas router | prefill | decode | up`: the live services.

`router`, `prefill` and `decode` each run one process of a topology file (`--config`); the
instances are named with `--instance`. `up` starts a whole topology as child processes of this
one (the embedded default when no `--config` is given: a router, one PrfaaS prefill instance, one
PD prefill and one PD decode instance on localhost with a tiny Qwen3-Next model), after checking
that the router's port is free; once its own router is ready it records the deployment for
`prfaas status` (`prfaas.launch.local_record`), prints how to reach it, and stops every child on
Ctrl-C or SIGTERM; with `--ray [ADDRESS]` it starts them as Ray actors instead
(`prfaas.cli._ray_up`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prfaas.cli._args import MAX_LENGTH_TOKENS, bounded_int, positive_float
from prfaas.cli._output import add_json_flag, prepare_output_dir, print_json
from prfaas.cli._signals import stop_at_exit
from prfaas.errors import UserError

_READY_TIMEOUT_S = 300.0


def register(subparsers: Any) -> None:
    for role, what in (("prefill", "a prefill instance"), ("decode", "a decode instance")):
        p = subparsers.add_parser(
            role,
            help=f"run {what} of a topology",
            description=f"Run {what} of a topology file until SIGTERM.",
        )
        p.add_argument("--config", required=True, help="topology TOML file")
        p.add_argument("--instance", required=True, help="instance name in the topology")
        p.set_defaults(handler=_run_instance)
    p = subparsers.add_parser(
        "router",
        help="run the OpenAI-compatible router of a topology",
        description="Run the router (OpenAI API, routing policy, token relay) until SIGTERM.",
    )
    p.add_argument("--config", required=True, help="topology TOML file")
    p.set_defaults(handler=_run_router)
    _register_up(subparsers)


def _register_up(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "up",
        help="start a whole deployment on this machine (embedded default or --config)",
        description="Start the router and every instance as child processes, wait until ready, "
        "print the URL, and stop everything on Ctrl-C / SIGTERM. Without --config: a router, a "
        "PrfaaS prefill instance, a PD prefill and a PD decode instance on 127.0.0.1 serving a "
        "tiny Qwen3-Next model; prompts longer than --threshold tokens are offloaded.",
    )
    p.add_argument("--config", default=None, help="topology TOML file (default: embedded)")
    p.add_argument("--model", default="qwen3_next", help="tiny preset or checkpoint directory")
    p.add_argument(
        "--port", type=bounded_int(1, 65535), default=8000, help="router port (embedded topology)"
    )
    p.add_argument(
        "--threshold",
        type=bounded_int(0, MAX_LENGTH_TOKENS),
        default=128,
        help="offload threshold t, tokens",
    )
    p.add_argument("--engine", choices=["torch", "emulated"], default="torch")
    p.add_argument("--failure", choices=["recompute", "fail"], default="recompute")
    p.add_argument("--log-dir", default=None, help="write each child's log to DIR/NAME.log")
    p.add_argument("--ready-timeout", type=positive_float, default=_READY_TIMEOUT_S, help="seconds")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run every service as a Ray actor, placed by cluster resource (prfaas-cluster-NAME) "
        "on the Ray cluster at ADDRESS, or on a local Ray instance when no ADDRESS is given "
        "(needs prfaas[ray]; docs/deploy.md)",
    )
    add_json_flag(p)
    p.set_defaults(handler=_run_up)


def _load(path: str) -> Any:
    from prfaas.topology import load_topology

    return load_topology(path)


def _check_transport(topology: Any) -> None:
    """Fail before serving when the topology's TLS files do not load (a service would only
    find out inside its HTTP server's startup)."""
    from prfaas.service.http import transport_config

    if topology.transport.tls_cert is not None:
        transport_config(topology)


def _run_instance(args: argparse.Namespace) -> int:
    from prfaas.launch.local import serve_instance

    topology = _load(args.config)
    _check_transport(topology)
    instance = topology.instance(args.instance)
    if instance.role != args.command:
        raise UserError(
            f"instance {args.instance!r} is a {instance.role} instance, not {args.command}"
        )
    serve_instance(topology, args.instance)
    return 0


def _run_router(args: argparse.Namespace) -> int:
    from prfaas.launch.local import serve_router

    topology = _load(args.config)
    _check_transport(topology)
    serve_router(topology)
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from prfaas.launch.local import (
        EmbeddedOptions,
        Launcher,
        check_engines_installed,
        check_router_port,
        embedded_topology,
    )
    from prfaas.launch.local_record import local_record, recorded

    if args.log_dir:
        prepare_output_dir(args.log_dir, "--log-dir")  # before any process starts
    with tempfile.TemporaryDirectory(prefix="prfaas-up-") as tmp:
        if args.config is None:
            if not 1 <= args.port <= 65535:
                raise UserError(f"--port must be in 1..65535, got {args.port}")
            if args.threshold < 0:
                raise UserError(f"--threshold must be >= 0, got {args.threshold}")
            options = EmbeddedOptions(
                model=args.model,
                router_port=args.port,
                threshold_tokens=args.threshold,
                engine=args.engine,
                failure=args.failure,
            )
            config_path = embedded_topology(Path(tmp), options)
        else:
            config_path = Path(args.config).resolve()
        topology = _load(str(config_path))
        _check_transport(topology)
        check_engines_installed(topology)
        log_dir = Path(args.log_dir) if args.log_dir else None
        if args.ray is not None:
            from prfaas.cli._ray_up import run_up_on_ray

            return run_up_on_ray(args, config_path, topology, log_dir or Path(tmp))
        check_router_port(topology)
        launcher = Launcher(config_path, topology, log_dir)
        with stop_at_exit(launcher):
            launcher.start()
            launcher.wait_ready(args.ready_timeout)
            pids = {name: p.pid for name, p in launcher.procs.items()}
            with recorded(local_record(topology, config_path, pids)) as record:
                _print_banner(args, topology, launcher, record)
                _supervise(launcher)
    return 0


def _supervise(launcher: Any) -> None:
    """Wait; if a child dies, say so and stop the deployment."""
    while True:
        for name, proc in launcher.procs.items():
            if proc.poll() is not None:
                raise UserError(f"{name} exited with status {proc.returncode}; stopping")
        time.sleep(0.5)


def _print_banner(args: argparse.Namespace, topology: Any, launcher: Any, record: Path) -> None:
    from prfaas.policy.route import threshold_text

    url = launcher.router_url
    model = topology.model.served_name
    t = topology.policy.threshold_tokens
    info = {
        "url": f"{url}/v1",
        "model": model,
        "threshold_tokens": t,
        "instances": {i.name: i.http for i in topology.instances},
        "pids": {name: p.pid for name, p in launcher.procs.items()},
        "deployment_file": str(record),
    }
    if args.json:
        print_json(info)
        sys.stdout.flush()
        return
    print(f"PrfaaS is up: {url}/v1  (model {model!r})")
    for inst in topology.instances:
        print(f"  {inst.cluster:>8} {inst.role:>7}  {inst.name:<20} {inst.http}")
    print(
        f"Routing: prompts longer than t = {threshold_text(t)} tokens prefill on the PrfaaS "
        "cluster and stream their KV to the PD decode instance; shorter ones prefill locally."
    )
    _print_curl_hint(url, model, needs_key=bool(topology.router.api_keys))
    print(f"Status: prfaas status  (this deployment: prfaas status --deployment {record})")
    print("Ctrl-C stops everything.", flush=True)


def _print_curl_hint(url: str, model: str, needs_key: bool) -> None:
    """A request to try; with API keys configured it sends one from $PRFAAS_API_KEY (the keys
    themselves are not printed)."""
    print("Try:")
    if needs_key:
        print("  export PRFAAS_API_KEY=...  # one of the topology's router API keys")
    print(f"  curl -s {url}/v1/completions -H 'Content-Type: application/json' \\")
    if needs_key:
        print('       -H "Authorization: Bearer $PRFAAS_API_KEY" \\')
    print(f'       -d \'{{"model": "{model}", "prompt": "Hello", "max_tokens": 16}}\'')
