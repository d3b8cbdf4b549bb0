"""`prfaas up --ray [ADDRESS]`: the deployment as Ray actors (`prfaas.launch.ray_launcher`).

Without ADDRESS a local Ray instance starts whose one node offers every cluster's resource and
the services bind 127.0.0.1; with ADDRESS (a running cluster: "auto", "HOST:6379", "ray://...")
each service binds its Ray node's IP. Once the router is ready, the deployment record for
`prfaas status --deployment FILE` is written to the log directory (or a temporary one), the
URL is printed, and the command supervises: it reports each actor Ray restarts and stops the
deployment when one has died for good (restarts used up). Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prfaas.cli._output import print_json
from prfaas.cli._signals import stop_at_exit, stop_on_sigterm
from prfaas.errors import UserError
from prfaas.topology import Topology

_LOCAL_HOST = "127.0.0.1"
_CHECK_PERIOD_S = 2.0


def run_up_on_ray(
    args: argparse.Namespace, config_path: Path, topology: Topology, state_dir: Path
) -> int:
    """Start `topology` on Ray, print where it is, supervise until Ctrl-C / SIGTERM."""
    try:
        from prfaas.launch.ray_launcher import RayLauncher, RayOptions
    except ImportError as exc:
        raise UserError(f"--ray needs Ray: pip install 'prfaas[ray]' ({exc})") from None
    address = args.ray or None
    options = RayOptions(address=address, host=None if address else _LOCAL_HOST)
    launcher = RayLauncher(topology, options, config_path)
    with stop_at_exit(launcher):
        launcher.start()
        stop_on_sigterm()  # again: starting Ray installed its own handler
        launcher.wait_ready(args.ready_timeout)
        record = state_dir / "deployment.json"
        launcher.write_deployment(record)
        _print_banner(args, launcher, record)
        _supervise(launcher)
    return 0


def _supervise(launcher: Any) -> None:
    """Report restarts (a new pid); stop when an actor is dead for good."""
    pids = dict(launcher.check().pids)
    while True:
        time.sleep(_CHECK_PERIOD_S)
        check = launcher.check()
        if check.dead:
            raise UserError(f"{', '.join(check.dead)} died for good (restarts used up); stopping")
        for name, pid in check.pids.items():
            if name in pids and pids[name] != pid:
                print(f"prfaas up: Ray restarted {name} (pid {pid})", file=sys.stderr, flush=True)
            pids[name] = pid


def _print_banner(args: argparse.Namespace, launcher: Any, record: Path) -> None:
    topology = launcher.topology
    deployment = launcher.deployment()
    nodes = {m["name"]: m["node"] for m in deployment["instances"]}
    url = launcher.router_url
    model = topology.model.served_name
    if args.json:
        print_json(
            {
                "url": f"{url}/v1",
                "model": model,
                "threshold_tokens": topology.policy.threshold_tokens,
                "ray_address": launcher.ray_address,
                "deployment_file": str(record),
                "router_node": deployment["router"]["node"],
                "instances": {
                    i.name: {"http": i.http, "node": nodes[i.name]} for i in topology.instances
                },
            }
        )
        sys.stdout.flush()
        return
    print(f"PrfaaS is up on Ray ({launcher.ray_address}): {url}/v1  (model {model!r})")
    print(
        f"  {'router':>8} {'':>7}  {'router':<20} {topology.router.http:<22} "
        f"{deployment['router']['node']}"
    )
    for inst in topology.instances:
        print(
            f"  {inst.cluster:>8} {inst.role:>7}  {inst.name:<20} {inst.http:<22} "
            f"{nodes[inst.name]}"
        )
    print(f"Status: prfaas status --deployment {record}")
    print("Ctrl-C stops everything.", flush=True)
