"""`prfaas bench KIND`: benchmarks. `transport` moves KV-shaped buffers between two processes with
the project's transport and with a plain socket loop over the same connections, in the same run."""

from __future__ import annotations

import argparse
import re
from typing import Any

from prfaas.cli._args import bounded_int, positive_float, positive_int
from prfaas.cli._output import add_json_flag, format_table, print_json
from prfaas.errors import UserError

_SIZE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6,
               "gb": 10**9}  # fmt: skip
_MAX_SIZE_BYTES = 64 * 2**30


def parse_size_bytes(text: str) -> int:
    """'256MiB', '1GiB', '1048576' -> bytes; UserError on anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise UserError(f"bad size {text!r}: use a number with an optional unit (KiB, MiB, GiB)")
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if not 4096 <= size <= _MAX_SIZE_BYTES:
        raise UserError(f"size must be between 4 KiB and 64 GiB, got {text!r}")
    return size


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (transport, ...)")
    kinds = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    t = kinds.add_parser(
        "transport",
        help="KV transport goodput vs a raw socket loop, two processes",
        description="Move SIZE bytes of KV-shaped buffers sender -> receiver (two processes), "
        "once with prfaas.transport and once with plain sendall/recv_into over the same number "
        "of connections. With --link-gbps, run over a veth pair between two network namespaces "
        "shaped by `tc tbf` (needs root).",
    )
    t.add_argument("--size", default="256MiB", help="payload per transfer (default 256MiB)")
    t.add_argument(
        "--connections", type=bounded_int(1, 64), default=4, help="TCP connections (default 4)"
    )
    t.add_argument("--frame-bytes", default="4MiB", help="payload bytes per frame (default 4MiB)")
    t.add_argument(
        "--repeats", type=positive_int, default=3, help="timed transfers per round (default 3)"
    )
    t.add_argument(
        "--rounds", type=positive_int, default=2, help="alternating kv/raw rounds (default 2)"
    )
    t.add_argument(
        "--link-gbps", type=positive_float, default=None, help="shape the link to R Gbit/s"
    )
    t.add_argument("--tls-dir", default=None, help="dir with ca.crt, node.crt, node.key: use TLS")
    t.add_argument(
        "--no-payload-checksum",
        action="store_true",
        help="with --tls-dir: skip payload CRC-32C (TLS authenticates every record)",
    )
    t.add_argument("--io-threads", action="store_true", help="transport sends/receives on threads")
    t.add_argument("--only", choices=["kv", "raw"], default=None, help="run one mode only")
    add_json_flag(t)
    t.set_defaults(handler=_run_transport)


def _run_transport(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prfaas.transport.bench import BenchSpec, run_bench

    if not 1 <= args.connections <= 64:
        raise UserError(f"--connections must be in [1, 64], got {args.connections}")
    if args.repeats < 1 or args.rounds < 1:
        raise UserError(f"--repeats and --rounds must be >= 1, got {args.repeats}, {args.rounds}")
    if args.link_gbps is not None:
        _check_link(args.link_gbps)
    tls = None
    if args.tls_dir is not None:
        d = Path(args.tls_dir)
        files = (d / "node.crt", d / "node.key", d / "ca.crt")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"--tls-dir lacks {', '.join(missing)}")
        tls = (str(files[0]), str(files[1]), str(files[2]))
    if args.no_payload_checksum and tls is None:
        raise UserError("--no-payload-checksum needs --tls-dir (TLS then protects the payload)")
    spec = BenchSpec(
        size_bytes=parse_size_bytes(args.size),
        connections=args.connections,
        frame_bytes=parse_size_bytes(args.frame_bytes),
        repeats=args.repeats,
        rounds=args.rounds,
        link_gbps=args.link_gbps,
        tls=tls,
        modes=(args.only,) if args.only else ("kv", "raw"),
        payload_checksum=not args.no_payload_checksum,
        io_threads=args.io_threads,
    )
    result = run_bench(spec)
    print_json(result) if args.json else print(_table(result))
    return 0


def _check_link(link_gbps: float) -> None:
    from prfaas.transport.netns import netns_unavailable_reason

    if not 0.01 <= link_gbps <= 400:
        raise UserError(f"--link-gbps must be in [0.01, 400], got {link_gbps}")
    reason = netns_unavailable_reason()
    if reason is not None:
        raise UserError(f"--link-gbps needs network namespaces: {reason}")


def _table(r: dict[str, Any]) -> str:
    rows: list[list[object]] = [["size_bytes", r["size_bytes"]], ["connections", r["connections"]]]
    keys = ("goodput_gbps", "raw_socket_gbps", "ratio", "ratio_best", "link_gbps",
            "goodput_over_link", "tx_cpu_s_per_transfer", "rx_cpu_s_per_transfer",
            "raw_tx_cpu_s_per_transfer", "raw_rx_cpu_s_per_transfer")  # fmt: skip
    for key in keys:
        if key in r:
            rows.append([key, f"{r[key]:.3f}"])
    return format_table(["metric", "value"], rows)
