"""Soak test of the live services: a steady open-loop rate against the router for a long time,
watching every process's memory and file descriptors and the latency over time.

The embedded topology (router, PrfaaS prefill, PD prefill, PD decode) with emulated engines timed
by the cost model (`--emulate`, default a small hybrid model so payloads stay tens of MiB), and
prompts of log-normal lengths around the threshold, so some requests are offloaded and move
their KV over the loopback link and the others prefill locally. Every `--sample-s` the resident
memory (VmRSS) and the open file descriptors of each process are read from /proc; latency
percentiles and errors are reported per `--window-s`. At the end each process's RSS and FD
count after the warm-up are compared with the last samples: "flat" means within `--tolerance`.

Usage: .venv/bin/python scripts/soak.py [--duration-s 600] [--rate 4] [--json OUT]
       [--plot docs/img/soak.png]
Results for this project are in docs/reliability.md. The load generator shares the machine's
cores with the system under test; latency numbers are for that setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from prfaas.launch.local import EmbeddedOptions, Launcher, embedded_topology, free_port
from prfaas.topology import load_topology

READY_TIMEOUT_S = 300.0
VOCAB_IDS = (10, 250)  # token ids the tiny tokenizer accepts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second (open loop)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="excluded from the flatness check")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--threshold", type=int, default=1024, help="offload threshold t, tokens")
    p.add_argument("--emulate", default="nemotron-3-nano")
    p.add_argument(
        "--time-scale", type=float, default=0.1, help="emulated engines sleep this x predicted"
    )
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    p.add_argument("--plot", metavar="PNG", help="plot latency, RSS and FDs over time here")
    return p.parse_args(argv)


def read_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Soak:
    def __init__(self, args: argparse.Namespace, launcher: Launcher) -> None:
        self.args, self.launcher = args, launcher
        self.rng = random.Random(args.seed)
        self.results: list[dict[str, Any]] = []  # one per request
        self.samples: list[dict[str, Any]] = []  # one per sample period
        self.started_at = 0.0

    def prompt(self) -> list[int]:
        num_tokens = int(min(4096, max(32, self.rng.lognormvariate(6.6, 0.9))))
        return [self.rng.randrange(*VOCAB_IDS) for _ in range(num_tokens)]

    async def one(self, client: aiohttp.ClientSession, prompt: list[int]) -> None:
        body = {"model": "qwen3_next", "prompt": prompt, "max_tokens": self.args.max_tokens}
        sent_at = time.monotonic()
        entry: dict[str, Any] = {"at_s": sent_at - self.started_at, "num_tokens": len(prompt)}
        try:
            async with client.post(self.launcher.router_url + "/v1/completions", json=body) as r:
                reply = await r.json(content_type=None)
                entry["status"] = r.status
                if r.status == 200:
                    entry["route"] = reply["prfaas"]["route"]
                    entry["ttft_s"] = reply["prfaas"]["ttft_s"]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            entry["status"] = 0
            entry["error"] = repr(exc)
        entry["e2e_s"] = time.monotonic() - sent_at
        self.results.append(entry)

    def sample(self) -> None:
        now = time.monotonic() - self.started_at
        point: dict[str, Any] = {"at_s": now}
        for name, proc in self.launcher.procs.items():
            if proc.poll() is None:
                point[name] = {"rss_bytes": read_rss_bytes(proc.pid), "fds": count_fds(proc.pid)}
        self.samples.append(point)

    async def run(self) -> None:
        args = self.args
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:
            self.started_at = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            num_requests = int(args.rate * args.duration_s)
            next_sample_s = 0.0
            with tqdm(total=num_requests, unit="req", desc="soak") as bar:
                for i in range(num_requests):
                    due = self.started_at + i / args.rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if time.monotonic() - self.started_at >= next_sample_s:
                        self.sample()
                        next_sample_s += args.sample_s
                    tasks.append(asyncio.create_task(self.one(client, self.prompt())))
                    bar.update(1)
            await asyncio.gather(*tasks)
            self.sample()


def windows(results: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    out = []
    end = max((r["at_s"] for r in results), default=0.0)
    start = 0.0
    while start <= end:
        mine = [r for r in results if start <= r["at_s"] < start + window_s]
        ok = [r for r in mine if r["status"] == 200]
        e2e = [r["e2e_s"] for r in ok]
        ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
        out.append(
            {
                "from_s": start,
                "num_requests": len(mine),
                "num_errors": len(mine) - len(ok),
                "num_offloaded": sum(1 for r in ok if r.get("route") == "prfaas"),
                "e2e_p50_s": percentile(e2e, 50),
                "e2e_p90_s": percentile(e2e, 90),
                "e2e_p99_s": percentile(e2e, 99),
                "ttft_p50_s": percentile(ttft, 50),
                "ttft_p99_s": percentile(ttft, 99),
            }
        )
        start += window_s
    return out


def flatness(samples: list[dict[str, Any]], warmup_s: float, tolerance: float) -> dict[str, Any]:
    """Per process: RSS and FDs just after the warm-up vs at the end (means of 3 samples)."""
    after = [s for s in samples if s["at_s"] >= warmup_s]
    names = sorted({k for s in after for k in s if k != "at_s"})
    report = {}
    for name in names:
        series = [s[name] for s in after if name in s]
        if len(series) < 6:
            continue
        first, last = series[:3], series[-3:]
        entry: dict[str, Any] = {}
        for key in ("rss_bytes", "fds"):
            a = sum(x[key] for x in first) / 3
            b = sum(x[key] for x in last) / 3
            change = (b - a) / a if a else 0.0
            entry[key] = {"after_warmup": a, "end": b, "change": change}
        entry["flat"] = all(abs(entry[k]["change"]) <= tolerance for k in ("rss_bytes", "fds"))
        report[name] = entry
    return report


def plot(path: str, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rss, ax_fd) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ws = [w for w in result["windows"] if w["e2e_p50_s"] is not None]
    xs = [w["from_s"] + result["window_s"] / 2 for w in ws]
    for key, label in (
        ("e2e_p50_s", "e2e p50"),
        ("e2e_p99_s", "e2e p99"),
        ("ttft_p99_s", "TTFT p99"),
    ):
        ax_lat.plot(xs, [w[key] for w in ws], marker=".", label=label)
    ax_lat.set_ylabel("seconds")
    ax_lat.legend()
    rate, duration_s = result["rate"], result["duration_s"]
    ax_lat.set_title(f"soak: {rate:g} req/s for {duration_s:g} s, emulated {result['emulate']}")
    names = sorted({k for s in result["samples"] for k in s if k != "at_s"})
    for name in names:
        pts = [(s["at_s"], s[name]) for s in result["samples"] if name in s]
        ax_rss.plot([t for t, _ in pts], [p["rss_bytes"] / 2**20 for _, p in pts], label=name)
        ax_fd.plot([t for t, _ in pts], [p["fds"] for _, p in pts], label=name)
    ax_rss.set_ylabel("RSS, MiB")
    ax_fd.set_ylabel("open FDs")
    ax_fd.set_xlabel("time since start, s")
    for ax in (ax_rss, ax_fd, ax_lat):
        ax.axvline(result["warmup_s"], color="grey", linestyle=":", linewidth=1)
    ax_rss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        print(f"soak: error: --plot directory does not exist: {args.plot}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        options = EmbeddedOptions(
            router_port=free_port(),
            threshold_tokens=args.threshold,
            engine="emulated",
            emulate=args.emulate,
            time_scale=args.time_scale,
        )
        path = embedded_topology(Path(tmp), options)
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        launcher = Launcher(path, load_topology(path), log_dir)
        launcher.start()
        try:
            launcher.wait_ready(READY_TIMEOUT_S)
            soak = Soak(args, launcher)
            asyncio.run(soak.run())
        finally:
            launcher.stop()
    result = {
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "window_s": args.window_s,
        "emulate": args.emulate,
        "threshold_tokens": args.threshold,
        "num_requests": len(soak.results),
        "num_errors": sum(1 for r in soak.results if r["status"] != 200),
        "num_offloaded": sum(1 for r in soak.results if r.get("route") == "prfaas"),
        "errors": dict(Counter(_error_kind(r) for r in soak.results if r["status"] != 200)),
        "time_scale": args.time_scale,
        "windows": windows(soak.results, args.window_s),
        "flatness": flatness(soak.samples, args.warmup_s, args.tolerance),
        "samples": soak.samples,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(args.plot, result)
    keys = ("num_requests", "num_errors", "errors", "num_offloaded", "flatness")
    summary = {k: result[k] for k in keys}
    print(json.dumps(summary, indent=1))
    return (
        0
        if result["num_errors"] == 0 and all(f["flat"] for f in result["flatness"].values())
        else 1
    )


def _error_kind(result: dict[str, Any]) -> str:
    return f"HTTP {result['status']}" if result["status"] else result.get("error", "?")[:80]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
