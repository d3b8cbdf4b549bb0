"""Simulator speed: one hour of case-study traffic per deployment, wall time and events/s.

Usage: PYTHONPATH=src .venv/bin/python scripts/sim_bench.py [--rate 3.3333] [--repeat 3]
       [--chunk-tokens 8192] [--fluctuation-period-s 1]
Runs in one single-threaded Python process; prints a Markdown table (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

from prfaas.cli._sim_setup import load_preset_setup
from prfaas.sim.scenario import Scenario, build_config, build_requests
from prfaas.sim.simulator import Simulator
from prfaas.types import DeploymentKind


def bench_one(case: object, scenario: Scenario, repeat: int) -> dict[str, float]:
    config = build_config(case, scenario)  # type: ignore[arg-type]
    requests = build_requests(case, scenario, scenario.rate_per_s)  # type: ignore[arg-type]
    best_s = float("inf")
    result: dict[str, object] = {}
    for _ in range(repeat):
        sim = Simulator(config, requests)
        started = time.perf_counter()
        result = sim.run()
        best_s = min(best_s, time.perf_counter() - started)
    num_events = float(result["num_events"])  # type: ignore[arg-type]
    return {
        "num_requests": float(len(requests)),
        "num_completed": float(result["num_completed"]),  # type: ignore[arg-type]
        "num_events": num_events,
        "wall_s": best_s,
        "events_per_s": num_events / best_s,
        "sim_end_s": float(result["sim_end_s"]),  # type: ignore[arg-type]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=12_000 / 3600, help="arrivals per second")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, help="chunked prefill budget per step")
    parser.add_argument(
        "--fluctuation-period-s", type=float, help="random link capacity in [0.5, 1] x per period"
    )
    args = parser.parse_args()
    case = load_preset_setup()
    print(f"python {platform.python_version()}, {platform.machine()}, rate {args.rate:.4f} req/s")
    print("| deployment | requests | completed | events | wall (s) | events/s | sim end (s) |")
    print("|---|---|---|---|---|---|---|")
    for kind in DeploymentKind:
        fluctuation = None
        if args.fluctuation_period_s is not None:
            fluctuation = (0.5, args.fluctuation_period_s)
        scenario = Scenario(
            kind,
            rate_per_s=args.rate,
            duration_s=args.duration_s,
            drain_s=1e6,
            seed=0,
            chunk_tokens=args.chunk_tokens,
            link_fluctuation=fluctuation,
        )
        r = bench_one(case, scenario, args.repeat)
        print(
            f"| {kind} | {r['num_requests']:.0f} | {r['num_completed']:.0f} | "
            f"{r['num_events']:.0f} | {r['wall_s']:.2f} | {r['events_per_s']:,.0f} | "
            f"{r['sim_end_s']:.0f} |"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
