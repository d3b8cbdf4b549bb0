"""`prfaas bench KIND`: benchmarks. `transport` moves KV-shaped buffers between two processes with
the project's transport and with a plain socket loop over the same connections, in the same run.
`system` lives in `prfaas.cli.bench_system`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from prfaas.bench.transport import MODES
from prfaas.cli._args import bounded_int, finite_float, nonnegative_float, positive_float
from prfaas.cli._output import (
    add_json_flag,
    format_table,
    print_json,
)
from prfaas.cli.bench_system import register_system
from prfaas.errors import UserError

_SIZE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6,
               "gb": 10**9}  # fmt: skip
_MAX_SIZE_BYTES = 64 * 2**30
_MAX_FRAME_BYTES = 64 * 2**20  # the transport's own bound (TransportConfig)
MAX_REPEATS = 100  # timed transfers per round
MAX_ROUNDS = 20  # alternating kv/raw rounds


def parse_size_bytes(text: str, max_bytes: int = _MAX_SIZE_BYTES, flag: str = "--size") -> int:
    """'256MiB', '1GiB', '1048576' -> bytes in [4 KiB, max_bytes]; UserError on anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise UserError(
            f"{flag}: bad size {text!r}: use a number with an optional unit (KiB, MiB, GiB)"
        )
    size = float(m.group(1)) * _SIZE_UNITS[unit]  # inf for a number of hundreds of digits
    if not 4096 <= size <= max_bytes:
        limit = f"{max_bytes // 2**30} GiB" if max_bytes >= 2**30 else f"{max_bytes // 2**20} MiB"
        raise UserError(f"{flag} must be between 4 KiB and {limit}, got {text!r}")
    return int(size)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (transport, ...)")
    kinds = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    t = kinds.add_parser(
        "transport",
        help="KV transport goodput vs a raw socket loop, two processes",
        description="Move SIZE bytes of KV-shaped buffers sender -> receiver (two processes), "
        "once with prfaas.transport and once with plain sendall/recv_into over the same number "
        "of connections. With --link-gbps, run over a veth pair between two network namespaces "
        "shaped by `tc tbf` (needs root); --delay-ms / --loss-pct put a delay line between them "
        "and compare the transport's defaults, its old fixed settings and a raw socket tuned by "
        "hand.",
    )
    t.add_argument("--size", default="256MiB", help="payload per transfer (default 256MiB)")
    t.add_argument(
        "--connections", type=bounded_int(1, 64), default=4, help="TCP connections (default 4)"
    )
    t.add_argument("--frame-bytes", default="4MiB", help="payload bytes per frame (default 4MiB)")
    t.add_argument(
        "--repeats",
        type=bounded_int(1, MAX_REPEATS),
        default=3,
        help=f"timed transfers per round (default 3, at most {MAX_REPEATS})",
    )
    t.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        default=2,
        help=f"alternating kv/raw rounds (default 2, at most {MAX_ROUNDS})",
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
    t.add_argument(
        "--delay-ms",
        type=finite_float,
        default=None,
        help="with --link-gbps: one-way delay of a delay line in the link (RTT = 2 x this)",
    )
    t.add_argument(
        "--loss-pct",
        type=finite_float,
        default=0.0,
        help="with --link-gbps: packets the delay line drops, per direction, in [0, 100)",
    )
    t.add_argument(
        "--congestion-control",
        default=None,
        help="every sender's TCP congestion control (e.g. cubic, bbr); default: the kernel's",
    )
    t.add_argument(
        "--idle-s",
        type=nonnegative_float,
        default=0.0,
        help="the connections sit idle this long before each timed transfer (default 0)",
    )
    t.add_argument(
        "--only",
        choices=list(MODES),
        action="append",
        default=None,
        help="run this mode (repeatable); default kv and raw, or over a delay line kv, "
        "kv-fixed and raw-tuned",
    )
    add_json_flag(t)
    t.set_defaults(handler=_run_transport)
    register_system(kinds)


def _run_transport(args: argparse.Namespace) -> int:
    from prfaas.bench.transport import WAN_MODES, BenchSpec, run_bench

    if not 1 <= args.connections <= 64:
        raise UserError(f"--connections must be in [1, 64], got {args.connections}")
    if args.repeats < 1 or args.rounds < 1:
        raise UserError(f"--repeats and --rounds must be >= 1, got {args.repeats}, {args.rounds}")
    has_delay_line = _check_delay_line(args)
    if args.link_gbps is not None:
        _check_link(args.link_gbps)
    if args.congestion_control is not None:
        _check_congestion_control(args.congestion_control)
    tls = None if args.tls_dir is None else _tls_files(Path(args.tls_dir))
    if args.no_payload_checksum and tls is None:
        raise UserError("--no-payload-checksum needs --tls-dir (TLS then protects the payload)")
    spec = BenchSpec(
        size_bytes=parse_size_bytes(args.size),
        connections=args.connections,
        frame_bytes=parse_size_bytes(args.frame_bytes, _MAX_FRAME_BYTES, "--frame-bytes"),
        repeats=args.repeats,
        rounds=args.rounds,
        link_gbps=args.link_gbps,
        tls=tls,
        modes=tuple(args.only) if args.only else (WAN_MODES if has_delay_line else ("kv", "raw")),
        payload_checksum=not args.no_payload_checksum,
        io_threads=args.io_threads,
        delay_ms=args.delay_ms,
        loss_pct=args.loss_pct,
        congestion_control=args.congestion_control,
        idle_s=args.idle_s,
    )
    result = run_bench(spec)
    print_json(result) if args.json else print(_table(result))
    return 0


def _check_delay_line(args: argparse.Namespace) -> bool:
    """Whether a delay line goes into the link; UserError for a delay or loss it cannot make."""
    from prfaas.testbed.delay_schedule import MAX_DELAY_MS
    from prfaas.testbed.layout import MAX_DELAY_LINE_GBPS

    if args.delay_ms is None and args.loss_pct == 0:
        return False
    if args.link_gbps is None:
        raise UserError("--delay-ms and --loss-pct need --link-gbps (a link between namespaces)")
    if args.delay_ms is not None and not 0 <= args.delay_ms <= MAX_DELAY_MS:
        raise UserError(f"--delay-ms must be in [0, {MAX_DELAY_MS:g}], got {args.delay_ms:g}")
    if not 0 <= args.loss_pct < 100:
        raise UserError(f"--loss-pct must be in [0, 100), got {args.loss_pct:g}")
    if args.link_gbps > MAX_DELAY_LINE_GBPS:
        raise UserError(
            f"--link-gbps {args.link_gbps:g} with a delay line: at most "
            f"{MAX_DELAY_LINE_GBPS:g} Gbit/s, what the delay line carries faithfully"
        )
    return True


def _check_congestion_control(name: str) -> None:
    from prfaas.transport.channel import check_congestion_control
    from prfaas.transport.config import is_congestion_control_name

    if not is_congestion_control_name(name):
        raise UserError(f"--congestion-control {name!r} is not a kernel algorithm name")
    try:
        check_congestion_control(name)
    except ValueError as exc:
        raise UserError(f"--congestion-control: {exc}") from None


def _tls_files(directory: Path) -> tuple[str, str, str]:
    """(cert, key, CA) of `--tls-dir`, loaded once here so that a broken file is one error line
    now rather than a failed child process later."""
    import ssl

    from prfaas.transport.channel import client_tls_context, server_tls_context

    files = (directory / "node.crt", directory / "node.key", directory / "ca.crt")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"--tls-dir lacks {', '.join(missing)}")
    cert, key, ca = (str(f) for f in files)
    try:
        client_tls_context(cert, key, ca)
        server_tls_context(cert, key, ca)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise UserError(f"--tls-dir {directory}: cannot load its TLS files: {reason}") from None
    return cert, key, ca


def _check_link(link_gbps: float) -> None:
    from prfaas.testbed.netns import netns_unavailable_reason

    if not 0.01 <= link_gbps <= 400:
        raise UserError(f"--link-gbps must be in [0.01, 400], got {link_gbps}")
    reason = netns_unavailable_reason()
    if reason is not None:
        raise UserError(f"--link-gbps needs network namespaces: {reason}")


def _table(r: dict[str, Any]) -> str:
    rows: list[list[object]] = [["size_bytes", r["size_bytes"]], ["connections", r["connections"]]]
    keys = ("goodput_gbps", "raw_socket_gbps", "ratio", "ratio_best", "link_gbps",
            "goodput_over_link", "tx_cpu_s_per_transfer", "rx_cpu_s_per_transfer",
            "raw_tx_cpu_s_per_transfer", "raw_rx_cpu_s_per_transfer", "delay_ms", "loss_pct",
            "kv_over_tuned_raw", "kv_fixed_over_tuned_raw")  # fmt: skip
    for key in keys:
        if key in r:
            rows.append([key, f"{r[key]:.3f}"])
    text = format_table(["metric", "value"], rows)
    modes = r.get("modes") or {}
    if len(modes) > 1 or set(modes) - {"kv", "raw"}:
        text += "\n\n" + _modes_table(modes)
    return text


def _modes_table(modes: dict[str, dict[str, Any]]) -> str:
    """One row per mode: goodput, cold and warm transfer, connections, buffers, CPU per GB."""
    header = ["mode", "gbps", "cold_s", "warm_s", "conns", "buffer_MiB", "tx_cpu_s/GB",
              "rx_cpu_s/GB"]  # fmt: skip
    rows: list[list[object]] = []
    for mode, m in modes.items():
        buffer = m.get("socket_buffer_bytes")
        rows.append([mode, f"{m['gbps']:.3f}", f"{m['cold_s']:.3f}", f"{m['warm_s']:.3f}",
                     m.get("num_connections", "-"),
                     "auto" if not buffer else f"{buffer / 2**20:g}",
                     f"{m.get('tx_cpu_s_per_gb', 0):.3f}",
                     f"{m.get('rx_cpu_s_per_gb', 0):.3f}"])  # fmt: skip
    return format_table(header, rows)
