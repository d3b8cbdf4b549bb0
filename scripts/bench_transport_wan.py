"""The KV transport at WAN distance (docs/transport.md, "At WAN distance"): a sweep of one-way
delay x loss x congestion control over a `tc tbf`-shaped link with a delay line in it, each cell
one `prfaas bench transport` run comparing the transport's defaults (`kv`: connections and
buffers sized to the link), its old fixed settings (`kv-fixed`: 4 connections, autotuning, the
namespace's default sysctls) and a raw socket loop tuned by hand (`raw-tuned`: buffers forced
to the bandwidth-delay product's share, autotuning maxima raised). Needs root.

    PYTHONPATH=src python scripts/bench_transport_wan.py [--rtts-ms 0,10,50,100]
        [--losses-pct 0,0.01,0.1] [--congestion-controls cubic,bbr] [--gbps 1] [--size 64MiB]
        [--repeats 2] [--rounds 1] [--json]

Prints a table (one row per cell: goodput of each mode, the two ratios to the tuned raw socket,
the sized connections and buffers, CPU seconds per GB sent) or, with --json, every cell's
whole result.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prfaas.bench.transport import WAN_MODES, BenchSpec, run_bench
from prfaas.cli._output import format_table
from prfaas.cli.bench import parse_size_bytes
from prfaas.testbed.netns import netns_unavailable_reason


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One bench result per (RTT, loss, congestion control) cell, in that order."""
    cells = []
    for rtt_ms in _floats(args.rtts_ms):
        for loss_pct in _floats(args.losses_pct):
            for cc in args.congestion_controls.split(","):
                spec = BenchSpec(parse_size_bytes(args.size), args.connections,
                                 repeats=args.repeats, rounds=args.rounds,
                                 link_gbps=args.gbps, modes=WAN_MODES, delay_ms=rtt_ms / 2,
                                 loss_pct=loss_pct, congestion_control=cc)  # fmt: skip
                result = run_bench(spec)
                result["rtt_ms"] = rtt_ms
                cells.append(result)
                print(" ".join(map(str, _row(result))), file=sys.stderr, flush=True)
    return cells


_HEADER = ["rtt_ms", "loss_pct", "cc", "kv_gbps", "fixed_gbps", "raw_tuned_gbps", "kv/raw",
           "fixed/raw", "kv_conns", "kv_buffer_MiB", "kv_tx_cpu_s/GB", "raw_tx_cpu_s/GB",
           "kv_rx_cpu_s/GB", "raw_rx_cpu_s/GB"]  # fmt: skip


def _row(r: dict[str, Any]) -> list[object]:
    kv, fixed, raw = (r["modes"][mode] for mode in ("kv", "kv-fixed", "raw-tuned"))
    buffer = kv.get("socket_buffer_bytes") or 0
    return [f"{r['rtt_ms']:g}", f"{r['loss_pct']:g}", r["congestion_control"],
            f"{kv['gbps']:.3f}", f"{fixed['gbps']:.3f}", f"{raw['gbps']:.3f}",
            f"{r['kv_over_tuned_raw']:.2f}", f"{r['kv_fixed_over_tuned_raw']:.2f}",
            kv.get("num_connections", "-"), "auto" if not buffer else f"{buffer / 2**20:g}",
            f"{kv['tx_cpu_s_per_gb']:.3f}", f"{raw['tx_cpu_s_per_gb']:.3f}",
            f"{kv['rx_cpu_s_per_gb']:.3f}", f"{raw['rx_cpu_s_per_gb']:.3f}"]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtts-ms", default="0,10,50,100", help="round trips (2 x one-way delay)")
    p.add_argument("--losses-pct", default="0,0.01,0.1", help="per packet and direction")
    p.add_argument("--congestion-controls", default="cubic,bbr")
    p.add_argument("--gbps", type=float, default=1.0, help="the tbf's rate")
    p.add_argument("--size", default="64MiB", help="payload per transfer")
    p.add_argument(
        "--connections", type=int, default=4, help="kv-fixed's and raw's (and kv's least)"
    )
    p.add_argument("--repeats", type=int, default=2, help="timed transfers per mode and round")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the three modes")
    p.add_argument("--json", action="store_true", help="every cell's whole result")
    args = p.parse_args()
    reason = netns_unavailable_reason()
    if reason is not None:
        print(f"bench_transport_wan: {reason}", file=sys.stderr)
        return 2
    cells = sweep(args)
    if args.json:
        print(json.dumps(cells, indent=1))
    else:
        print(format_table(_HEADER, [_row(r) for r in cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
