"""`prfaas doctor`: this host's TCP settings against the link the KV transport must fill.

The link (rate, RTT, connections, congestion control) comes from a topology (`--config`) or from
flags; a flag overrides the file. Each check prints what the host has, what the link needs and
the `sysctl` line that fixes it. Exit status 0 when nothing limits the link, 1 when something
does (so a deployment script can stop on it), 2 for a user error.
"""

from __future__ import annotations

import argparse
from typing import Any

from prfaas.cli._args import MAX_LINK_MS, bounded_int, float_in, link_gbps, loss_percent
from prfaas.cli._output import add_json_flag, format_table, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this host's TCP settings against the inter-datacenter link",
        description="Check the kernel's socket buffers, window scaling, slow start after idle "
        "and congestion control against the link's bandwidth-delay product, and print the "
        "sysctl lines that fix what limits it. Exit 1 when something limits the link.",
    )
    parser.add_argument("--config", help="topology file: the link, and the [transport] table")
    parser.add_argument(
        "--gbps",
        type=link_gbps,
        help="link rate (default: the topology's)",
    )
    parser.add_argument(
        "--rtt-ms",
        type=float_in(0, MAX_LINK_MS),
        help="round-trip time of the link (default: the topology's, else 0)",
    )
    parser.add_argument(
        "--connections",
        type=bounded_int(1, 1024),
        help="TCP connections per destination (default: the topology's [transport])",
    )
    parser.add_argument(
        "--loss-pct",
        type=loss_percent,
        help="packet loss on the link, percent (default: the topology's, else 0)",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def link_need(args: argparse.Namespace) -> Any:
    """The link to check: the topology's, with the flags over it."""
    from prfaas.transport.host_tcp import LinkNeed

    gbps, rtt_ms, loss_pct, connections, congestion = 100.0, 0.0, 0.0, 2, None
    if args.config is not None:
        from prfaas.topology import load_topology

        topology = load_topology(args.config)
        gbps, rtt_ms, loss_pct = topology.link.gbps, topology.link.rtt_ms, topology.link.loss_pct
        connections = topology.transport.num_connections
        congestion = topology.transport.congestion_control
    return LinkNeed(
        gbps=args.gbps if args.gbps is not None else gbps,
        rtt_s=(args.rtt_ms if args.rtt_ms is not None else rtt_ms) / 1e3,
        num_connections=args.connections if args.connections is not None else connections,
        congestion_control=congestion,
        loss=(args.loss_pct if args.loss_pct is not None else loss_pct) / 100,
    )


def run(args: argparse.Namespace) -> int:
    from prfaas.transport.host_tcp import ceiling_gbps, check_host_tcp, read_host_tcp

    need = link_need(args)
    host = read_host_tcp()
    findings = check_host_tcp(host, need)
    ok = all(f.ok for f in findings)
    if args.json:
        print_json(
            {
                "ok": ok,
                "link": {
                    "gbps": need.gbps,
                    "rtt_ms": need.rtt_s * 1e3,
                    "num_connections": need.num_connections,
                    "loss_pct": need.loss * 100,
                    "bdp_bytes": need.bdp_bytes,
                },
                "ceiling_gbps": ceiling_gbps(host, need),
                "findings": [f.to_dict() for f in findings],
            }
        )
        return 0 if ok else 1
    print(
        f"link: {need.gbps:g} Gbit/s, RTT {need.rtt_s * 1e3:g} ms, {need.num_connections} "
        f"connection(s), loss {need.loss * 100:g}%: bandwidth-delay product "
        f"{need.bdp_bytes / (1 << 20):.1f} MiB"
    )
    rows = [("ok" if f.ok else "CHANGE", f.check, f.now, f.needed) for f in findings]
    print(format_table(["", "check", "now", "needed"], rows))
    fixes = [f.fix for f in findings if f.fix]
    if fixes:
        print("\nto fix (as root; persist in /etc/sysctl.d/ and the topology):")
        for fix in fixes:
            print(f"  {fix}")
    else:
        print("\nnothing here limits the link")
    return 0 if ok else 1
