"""Start, restart and shutdown times of one topology under the subprocess launcher (`prfaas up`)
and on a local Ray instance (`prfaas up --ray`), measured side by side in one run (results at
the end of docs/benchmarks.md).

The topology: a router and 4 emulated instances (PrfaaS prefill, PD prefill, 2 PD decode), so no
model loads and what is measured is the launching itself: processes, imports, HTTP servers, the
router's first successful polls.

    start     launch -> the router's /ready answers 200. For Ray, `ray_init_s` (starting the
              local Ray instance) is reported apart from `start_s` (placement group, probes,
              actors -> ready); `cold_start_s` is their sum.
    restart   kill one decode instance's process (SIGKILL, or `ray.kill` with restart allowed)
              -> the router counts it ready again. The subprocess launcher restarts it at once
              (as a supervisor would); Ray restarts the actor by itself.
    shutdown  stop() -> every service process has exited. For Ray, `ray_shutdown_s` (stopping the
              local Ray instance afterwards) is reported apart.

Usage: .venv/bin/python scripts/bench_launch.py [--repeats 3] [--json OUT]
Every process shares this machine's cores; the numbers are for that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prfaas.launch.local import Launcher, free_port
from prfaas.launch.status import router_ready
from prfaas.topology import (
    ClusterConfig,
    InstanceConfig,
    ModelConfig,
    PolicyConfig,
    RouterConfig,
    SecurityConfig,
    Topology,
    load_topology,
)
from prfaas.topology.write import write_topology as write_topology_file

RESTARTED = "pd-decode-0"
READY_TIMEOUT_S = 300.0


def write_topology(directory: Path) -> Path:
    """Emulated engines that do not sleep, every service on a free loopback port."""

    def instance(name: str, cluster: str, role: str, hardware: str) -> InstanceConfig:
        kv = _loopback() if role == "decode" else None
        return InstanceConfig(
            name, cluster, role, _loopback(), kv=kv, engine="emulated", hardware=hardware
        )

    prfaas = (instance("prfaas-prefill-0", "prfaas", "prefill", "h200"),)
    pd = tuple(
        instance(name, "pd", role, "h20")
        for name, role in (
            ("pd-prefill-0", "prefill"),
            ("pd-decode-0", "decode"),
            ("pd-decode-1", "decode"),
        )
    )
    topology = Topology(
        model=ModelConfig("qwen3_next", emulate="nemotron-3-nano", time_scale=0.0),
        clusters=(ClusterConfig("prfaas", "prfaas", prfaas), ClusterConfig("pd", "pd", pd)),
        policy=PolicyConfig(threshold_tokens=64.0),
        router=RouterConfig(http=_loopback()),
        transport=SecurityConfig(token="bench-launch-token"),
    )
    return write_topology_file(directory / "topology.toml", topology)


def _loopback() -> str:
    return f"127.0.0.1:{free_port()}"


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def instance_ready(router_url: str, name: str, state: bool) -> bool:
    _, instances = router_ready(router_url, timeout_s=2.0)
    return instances.get(name) is state


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def bench_subprocess(path: Path) -> dict[str, float]:
    topology = load_topology(path)
    launcher = Launcher(path, topology)
    t0 = time.monotonic()
    launcher.start()
    try:
        launcher.wait_ready(READY_TIMEOUT_S)
        start_s = time.monotonic() - t0
        t1 = time.monotonic()
        launcher.kill(RESTARTED)
        launcher.restart(RESTARTED)
        url = launcher.router_url
        wait_until(lambda: instance_ready(url, RESTARTED, False), 30, "the router to see it down")
        wait_until(lambda: instance_ready(url, RESTARTED, True), 120, "it to be ready again")
        restart_s = time.monotonic() - t1
    finally:
        pids = [p.pid for p in launcher.procs.values()]
        t2 = time.monotonic()
        launcher.stop()
        wait_until(lambda: not any(is_running(p) for p in pids), 60, "children to exit")
        shutdown_s = time.monotonic() - t2
    return {"start_s": start_s, "restart_s": restart_s, "shutdown_s": shutdown_s}


def bench_ray(path: Path) -> dict[str, float]:
    import ray

    from prfaas.launch.ray_launcher import RayLauncher, RayOptions
    from prfaas.launch.ray_placement import cluster_resource

    topology = load_topology(path)
    temp_dir = tempfile.mkdtemp(prefix="prfaas-bench-ray-", dir="/tmp")
    t0 = time.monotonic()
    ray.init(
        address="local",
        num_cpus=4,
        resources={cluster_resource(c.name): 1.0 for c in topology.clusters},
        include_dashboard=False,
        object_store_memory=100 << 20,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    ray_init_s = time.monotonic() - t0
    launcher = RayLauncher(topology, RayOptions(host="127.0.0.1", log_to_driver=False), path)
    try:
        t1 = time.monotonic()
        launcher.start()
        launcher.wait_ready(READY_TIMEOUT_S)
        start_s = time.monotonic() - t1
        t2 = time.monotonic()
        launcher.kill(RESTARTED)
        url = launcher.router_url
        wait_until(lambda: instance_ready(url, RESTARTED, False), 30, "the router to see it down")
        wait_until(lambda: instance_ready(url, RESTARTED, True), 120, "it to be ready again")
        restart_s = time.monotonic() - t2
        pids = list(launcher.check().pids.values())
        t3 = time.monotonic()
        launcher.stop()
        wait_until(lambda: not any(is_running(p) for p in pids), 60, "actors to exit")
        shutdown_s = time.monotonic() - t3
    finally:
        launcher.stop()
        t4 = time.monotonic()
        ray.shutdown()
        ray_shutdown_s = time.monotonic() - t4
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {
        "ray_init_s": ray_init_s,
        "start_s": start_s,
        "cold_start_s": ray_init_s + start_s,
        "restart_s": restart_s,
        "shutdown_s": shutdown_s,
        "ray_shutdown_s": ray_shutdown_s,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    samples: dict[str, list[dict[str, float]]] = {"subprocess": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="prfaas-bench-launch-") as tmp:
        for k in range(args.repeats):  # alternate, so drift in machine load hits both alike
            directory = Path(tmp) / f"run{k}"
            directory.mkdir()
            path = write_topology(directory)
            samples["subprocess"].append(bench_subprocess(path))
            samples["ray"].append(bench_ray(path))
            print(f"run {k + 1}/{args.repeats}: {samples['subprocess'][-1]} {samples['ray'][-1]}")
    result: dict[str, Any] = {
        "topology": "router + 4 emulated instances (PrfaaS prefill, PD prefill, 2 PD decode)",
        "cpu_model": cpu_model(),
        "num_cpus": os.cpu_count(),
        "repeats": args.repeats,
        "median": {name: medians(runs) for name, runs in samples.items()},
        "samples": samples,
    }
    print(json.dumps(result["median"], indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
