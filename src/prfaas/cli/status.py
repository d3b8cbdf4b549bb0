"""`prfaas status`: every instance of a running deployment with its node, role, health, queue
depth and the KV links it measured, and the router's readiness.

The deployment is named by its topology file (`--config`, for services started by hand) or by
the record `prfaas up` writes (`--deployment`: the addresses, for Ray the nodes the actors found,
and the topology file's path, read for the token). With neither, the one local `prfaas up`
running now is found by its record in the run directory (`prfaas.launch.local_record`).
Exit status 0 when the router and every instance are ready, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prfaas.cli._args import positive_float
from prfaas.cli._output import add_json_flag, format_table, print_json

_TIMEOUT_S = 3.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="show a running deployment: instances, nodes, health, queues, links",
        description="Ask the router (/ready) and every instance (/internal/stats, with the "
        "deployment token) how the deployment is doing. Exit status 0 when all are ready.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", help="the deployment's topology TOML file")
    source.add_argument(
        "--deployment",
        help="the record `prfaas up` wrote (default: that of the local `prfaas up` running now)",
    )
    p.add_argument("--url", default=None, help="router URL (default: from the file)")
    p.add_argument("--timeout", type=positive_float, default=_TIMEOUT_S, help="seconds per query")
    add_json_flag(p)
    p.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from prfaas.launch.ray_placement import members_of, read_deployment
    from prfaas.launch.status import collect_status
    from prfaas.service.auth import deployment_token
    from prfaas.topology import load_topology

    if args.config is None:
        record = read_deployment(_deployment_file(args.deployment))
        topology = None if record.config_path is None else load_topology(record.config_path)
        members, router_url = list(record.members), record.router_url
    else:
        topology = load_topology(args.config)
        members, router_url = members_of(topology), f"http://{topology.router.http}"
    token = None if topology is None else deployment_token(topology)
    capacity = 0.0 if topology is None else topology.link.bytes_per_s
    offload = () if topology is None else [c.name for c in topology.clusters_of_kind("prfaas")]
    report = collect_status(args.url or router_url, members, token, capacity, offload, args.timeout)
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0 if report["all_ready"] else 1


def _deployment_file(given: str | None) -> Path:
    """The record named with --deployment, else that of the local `prfaas up` running now."""
    from prfaas.launch.local_record import running_record

    return running_record() if given is None else Path(given)


def _print_report(report: dict[str, Any]) -> None:
    router = report["router"]
    print(f"router {router['url']}: {router['state']}")
    rows = []
    for inst in report["instances"]:
        queue = inst["queue"] or {}
        rows.append(
            [
                inst["name"],
                inst["cluster"],
                inst["node"],
                inst["role"],
                inst["health"],
                queue.get("num_requests_waiting", "-"),
                queue.get("num_requests_running", "-"),
                queue.get("num_queued_tokens", "-"),
            ]
        )
    headers = ["instance", "cluster", "node", "role", "health", "waiting", "running", "queued tok"]
    print(format_table(headers, rows))
    links = [(i["name"], link) for i in report["instances"] for link in i["links"]]
    if links:
        print()
        print(format_table(_LINK_HEADERS, [_link_row(name, link) for name, link in links]))
    if report["offload_link"] is not None:
        view = report["offload_link"]
        print(
            f"\nPrfaaS -> PD link (the router's view): utilization {view['utilization']:.2f}, "
            f"backlog {view['backlog_bytes'] / 2**20:.1f} MiB, RTT {view['rtt_s'] * 1e3:.2f} ms"
        )
    sys.stdout.flush()


_LINK_HEADERS = ["from", "to", "conns", "RTT ms", "util", "backlog MiB", "retrans", "transfers"]


def _link_row(name: str, link: dict[str, Any]) -> list[object]:
    return [
        name,
        link["dest"],
        link["num_connections"],
        f"{link['rtt_s'] * 1e3:.2f}",
        f"{link['utilization']:.2f}",
        f"{link['backlog_bytes'] / 2**20:.1f}",
        f"{link['retransmit_rate']:.3f}",
        f"{link['num_transfers']} ({link['num_failures']} failed)",
    ]
