"""The vLLM backend's benchmarks, side by side in one run (docs/benchmarks.md, "vLLM backend").

Run with the vLLM environment's Python and this tree first on the path:

    PYTHONPATH=src .venv-vllm/bin/python scripts/bench_vllm.py --json vllm-bench.json

In one run, on a tiny random llama (head dim 64, bf16) made here with the byte tokenizer:

1. *Disaggregated vs one instance*: the same seeded mixed-length workload (prompt lengths drawn
   from {64, 256, 1024}, 16 output tokens, Poisson arrivals) sent with the repository's load
   generator (`prfaas.bench.loadgen.run_schedule`) first to a `prfaas up` topology of three
   `vllm serve` processes (PrfaaS prefill, PD prefill, PD decode; t = 512, so the 1024-token
   prompts are offloaded) behind the router, then to one plain `vllm serve` (same server module,
   no connector). TTFT p50/p90 and throughput of each, and their ratios.
2. *Connector goodput vs raw socket*: long prompts through the topology; each transfer's bytes
   and seconds from the producer's `transfer_log`, against `prfaas.bench.transport`'s raw-socket
   loop of the same size on loopback, and that loop's figures on a shaped netns link.
3. *vLLM's own connectors*: whether `nixl` and `mooncake` import in this Python.

Engines run one deployment at a time (the machine is small); every process tree started here is
killed before the next starts and at exit. Prints progress on stderr and a summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prfaas import topology as topo
from prfaas.bench.loadgen import Target, probe_router, run_schedule
from prfaas.bench.outcome import RequestResult
from prfaas.bench.report import distribution, summarize_live
from prfaas.bench.schedule import PlannedRequest, Workload, build_schedule, synthetic_prompt
from prfaas.bench.transport import BenchSpec, run_bench
from prfaas.launch.local import descendant_pids, free_port
from prfaas.launch.vllm_serve import (
    VLLM_ARGS_ENV,
    VLLM_TRANSFER_LOG_DIR_ENV,
    server_args,
    vllm_command,
)
from prfaas.topology.write import write_topology
from prfaas.workload import EmpiricalLengths

VLLM_ARGS = (
    "--dtype bfloat16 --enforce-eager --max-model-len 2048 --kv-cache-memory-bytes 268435456"
)
PROMPT_LENGTHS = (64, 256, 1024)
THRESHOLD_TOKENS = 512.0
NUM_OUTPUT_TOKENS = 16
LONG_PROMPT_TOKENS = 2000  # + 16 output tokens fit --max-model-len 2048
MIN_AVAILABLE_BYTES = 8 << 30  # free memory needed before starting engines
START_TIMEOUT_S = 900.0  # vLLM engines start one after another on two loaded cores
MEMORY_WAIT_S = 1800.0
SHAPED_LINK_GBPS = 1.0
TOKEN = "bench-vllm-token"


def log(message: str) -> None:
    print(f"[bench_vllm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------- the machine ----------------


def cpu_model() -> str:
    """The CPU's model name, from lscpu, else /proc/cpuinfo."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_for_memory() -> None:
    """Poll until MemAvailable reaches MIN_AVAILABLE_BYTES (others run engines here too)."""
    deadline = time.monotonic() + MEMORY_WAIT_S
    while available_bytes() < MIN_AVAILABLE_BYTES:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_vllm: under {MIN_AVAILABLE_BYTES >> 30} GiB free for long")
        log(f"waiting for memory: {available_bytes() / (1 << 30):.1f} GiB available")
        time.sleep(10.0)


# ---------------- processes ----------------


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = 180.0) -> None:
    """SIGINT the process, wait for it, then SIGKILL whatever of its tree is left (a killed
    API server leaves its EngineCore behind)."""
    tree = descendant_pids(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    for pid in [*tree, proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not http_ok(url):
        if proc.poll() is not None:
            raise SystemExit(f"bench_vllm: {what} exited with {proc.returncode} before ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_vllm: {what} not ready after {START_TIMEOUT_S:g} s")
        time.sleep(1.0)


@contextlib.contextmanager
def started(
    argv: Sequence[str], env: dict[str, str], log_path: Path, ready_url: str, what: str
) -> Iterator[None]:
    """A process tree, ready at `ready_url`, stopped whole on exit."""
    wait_for_memory()
    log(f"starting {what}")
    t0 = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_ready(proc, ready_url, what)
        log(f"{what} ready after {time.monotonic() - t0:.0f} s")
        yield
    finally:
        stop_tree(proc)
        log(f"{what} stopped")


# ---------------- the deployments ----------------


def save_model(directory: Path) -> Path:
    """The tiny llama with head dim 64 (vLLM's CPU kernels refuse 32), bf16, byte tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prfaas.engine.checkpoint import byte_tokenizer
    from prfaas.engine.presets import tiny_config_kwargs

    kwargs = {**tiny_config_kwargs("llama"), "head_dim": 64}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("llama", **kwargs), dtype=torch.bfloat16
    )
    model.save_pretrained(directory)
    byte_tokenizer(tiny_config_kwargs("llama")).save_pretrained(directory)
    return directory


def loopback() -> str:
    return f"127.0.0.1:{free_port()}"


def topology_of(model: Path) -> topo.Topology:
    """Router + PrfaaS prefill r0 + PD prefill p0 + PD decode d0, all `vllm serve`."""

    def node(name: str, cluster: str, role: str, hardware: str) -> topo.InstanceConfig:
        kv = loopback() if role == "decode" else None
        return topo.InstanceConfig(
            name, cluster, role, loopback(), kv=kv, engine="vllm", hardware=hardware
        )

    pd = (node("p0", "pd", "prefill", "h20"), node("d0", "pd", "decode", "h20"))
    return topo.Topology(
        model=topo.ModelConfig(str(model)),
        clusters=(
            topo.ClusterConfig("prfaas", "prfaas", (node("r0", "prfaas", "prefill", "h200"),)),
            topo.ClusterConfig("pd", "pd", pd),
        ),
        policy=topo.PolicyConfig(threshold_tokens=THRESHOLD_TOKENS, transfer_deadline_s=120.0),
        router=topo.RouterConfig(http=loopback()),
        transport=topo.SecurityConfig(token=TOKEN),
    )


def base_env(work: Path) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        VLLM_ARGS_ENV: VLLM_ARGS,
        "PRFAAS_RUN_DIR": str(work / "run"),
    }


@contextlib.contextmanager
def disaggregated(work: Path, model: Path) -> Iterator[str]:
    """`prfaas up` of the vLLM topology, transfer logs in work/transfers; yields the router URL."""
    topology = topology_of(model)
    work.mkdir()
    config = write_topology(work / "topology.toml", topology)
    (work / "transfers").mkdir()
    (work / "logs").mkdir()
    env = {**base_env(work), VLLM_TRANSFER_LOG_DIR_ENV: str(work / "transfers")}
    argv = [
        sys.executable,
        "-m",
        "prfaas",
        "up",
        "--config",
        str(config),
        "--log-dir",
        str(work / "logs"),
        "--ready-timeout",
        str(START_TIMEOUT_S),
    ]
    url = f"http://{topology.router.http}"
    with started(argv, env, work / "up.log", f"{url}/ready", "PrfaaS topology (3 vLLM)"):
        yield url


@contextlib.contextmanager
def single(work: Path, model: Path) -> Iterator[str]:
    """One plain vLLM OpenAI server (no connector); yields its URL."""
    work.mkdir()
    address = loopback()
    argv = [*vllm_command(), *server_args(str(model), address), *VLLM_ARGS.split()]
    url = f"http://{address}"
    with started(argv, base_env(work), work / "single.log", f"{url}/health", "one vLLM"):
        yield url


# ---------------- measurements ----------------


def mixed_schedule(num_requests: int, rate_per_s: float, seed: int) -> list[PlannedRequest]:
    workload = Workload(
        lengths=EmpiricalLengths(PROMPT_LENGTHS),
        output_tokens=NUM_OUTPUT_TOKENS,
        max_model_len=2048,
    )
    return build_schedule(workload, rate_per_s, num_requests, 3600.0, seed)


def long_schedule(num_requests: int, gap_s: float, seed: int) -> list[PlannedRequest]:
    """Long prompts, spaced so each transfer runs alone."""
    rng = random.Random(seed)
    return [
        PlannedRequest(i * gap_s, synthetic_prompt(LONG_PROMPT_TOKENS, rng), NUM_OUTPUT_TOKENS)
        for i in range(num_requests)
    ]


def target_of(url: str) -> Target:
    """The server's first model id, as `GET /v1/models` names it."""
    return Target(url, str(asyncio.run(probe_router(url, None))["id"]))


def send(url: str, schedule: Sequence[PlannedRequest], what: str) -> dict[str, Any]:
    """The schedule's summary (loadgen's); SystemExit when no request succeeded."""
    log(f"{what}: {len(schedule)} requests")
    done = [0]

    def progress(result: Any) -> None:
        done[0] += 1
        if done[0] % 8 == 0 or done[0] == len(schedule):
            log(f"{what}: {done[0]}/{len(schedule)} done")

    outcome = asyncio.run(run_schedule(target_of(url), schedule, on_done=progress))
    live = summarize_live(outcome)
    live.pop("egress", None)
    live["ttft_s_by_prompt_tokens"] = ttft_by_length(outcome.results)
    if live["num_ok"] == 0:
        raise SystemExit(f"bench_vllm: {what}: every request failed: {live['errors']}")
    return live


def ttft_by_length(results: Sequence[RequestResult]) -> dict[int, dict[str, Any]]:
    """The TTFT distribution of the completed requests of each prompt length."""
    lengths = sorted({r.num_prompt_tokens for r in results})
    return {
        n: distribution([r.ttft_s for r in results if r.ok and r.num_prompt_tokens == n])
        for n in lengths
    }


def warm(url: str) -> None:
    """Unmeasured: each path (short local, long offloaded) twice."""
    rng = random.Random(1)
    lengths = [64, 1024, 64, 1024]
    schedule = [PlannedRequest(0.5 * i, synthetic_prompt(n, rng), 2) for i, n in enumerate(lengths)]
    asyncio.run(run_schedule(target_of(url), schedule))


def transfer_records(directory: Path, instance: str) -> list[dict[str, Any]]:
    path = directory / f"{instance}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def connector_goodput(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per sent transfer: bytes, seconds (the producer's clock: first layer queued to the
    receiver's ack, so it includes the prefill forward while layers stream) and Gbit/s."""
    sent = [r for r in records if r.get("event") == "sent"]
    gbps = [r["num_bytes"] * 8 / r["seconds"] / 1e9 for r in sent if r["seconds"] > 0]
    return {
        "num_transfers": len(sent),
        "num_failed": sum(1 for r in records if r.get("event") == "send_failed"),
        "bytes_median": statistics.median(r["num_bytes"] for r in sent) if sent else None,
        "seconds_median": statistics.median(r["seconds"] for r in sent) if sent else None,
        "num_streamed_layers_median": (
            statistics.median(r["num_streamed_layers"] for r in sent) if sent else None
        ),
        "goodput_gbps_median": statistics.median(gbps) if gbps else None,
        "goodput_gbps_best": max(gbps) if gbps else None,
        "transfers": [
            {k: r[k] for k in ("num_prompt_tokens", "num_bytes", "seconds", "num_streamed_layers")}
            for r in sent
        ],
    }


def raw_bounds(size_bytes: int) -> dict[str, Any]:
    """`prfaas.bench.transport` at the connector's transfer size: loopback, and a shaped link
    (netns + tbf) when the machine allows one."""
    log(f"raw-socket bound on loopback, {size_bytes} bytes")
    out: dict[str, Any] = {
        "loopback": run_bench(BenchSpec(size_bytes=size_bytes, connections=1, repeats=5))
    }
    shaped_bytes = max(size_bytes, 64 << 20)  # well past the tbf burst
    log(f"raw socket and PrfaaS transport on a {SHAPED_LINK_GBPS:g} Gbit/s shaped link")
    try:
        spec = BenchSpec(
            size_bytes=shaped_bytes, connections=1, repeats=3, rounds=1, link_gbps=SHAPED_LINK_GBPS
        )
        out["shaped"] = run_bench(spec)
    except Exception as exc:  # no netns here: said in the report
        out["shaped"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def own_connectors() -> dict[str, str]:
    """Whether vLLM's NIXL and Mooncake connectors' libraries import in this Python."""
    found = {}
    for name, module in (("NixlConnector", "nixl"), ("MooncakeConnector", "mooncake.engine")):
        try:
            importlib.import_module(module)
            found[name] = f"`import {module}` works"
        except Exception as exc:
            found[name] = f"`import {module}`: {type(exc).__name__}: {exc}"
    return found


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def comparison(prfaas: dict[str, Any], one: dict[str, Any]) -> dict[str, Any]:
    return {
        "ttft_p50_ratio": ratio(prfaas["ttft_s"]["p50"], one["ttft_s"]["p50"]),
        "ttft_p90_ratio": ratio(prfaas["ttft_s"]["p90"], one["ttft_s"]["p90"]),
        "throughput_rps_ratio": ratio(prfaas["throughput_rps"], one["throughput_rps"]),
        "output_tokens_per_s_ratio": ratio(
            prfaas["output_tokens_per_s"], one["output_tokens_per_s"]
        ),
    }


def run_header() -> dict[str, Any]:
    """What every result file starts with: the machine, the time, the engines' flags."""
    return {
        "cpu_model": cpu_model(),
        "num_cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "vllm_args": VLLM_ARGS,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        **run_header(),
        "workload": {
            "prompt_lengths": PROMPT_LENGTHS,
            "output_tokens": NUM_OUTPUT_TOKENS,
            "num_requests": args.num_requests,
            "rates_per_s": args.rates,
            "seed": args.seed,
            "threshold_tokens": THRESHOLD_TOKENS,
        },
    }
    log(f"CPU: {result['cpu_model']} ({result['num_cpus']} CPUs)")
    model = save_model(work / "llama")
    schedules = {rate: mixed_schedule(args.num_requests, rate, args.seed) for rate in args.rates}
    with disaggregated(work / "prfaas", model) as url:
        warm(url)
        result["prfaas"] = {
            rate: send(url, s, f"PrfaaS, {rate:g}/s") for rate, s in schedules.items()
        }
        result["long"] = send(url, long_schedule(args.num_long, 3.0, args.seed), "long")
    records = transfer_records(work / "prfaas" / "transfers", "r0")
    long_records = [r for r in records if r.get("num_prompt_tokens") == LONG_PROMPT_TOKENS]
    result["connector"] = connector_goodput(long_records)
    result["connector_all_r0"] = connector_goodput(records)
    result["connector_all_p0"] = connector_goodput(
        transfer_records(work / "prfaas" / "transfers", "p0")
    )
    with single(work / "single", model) as url:
        warm(url)
        result["single"] = {
            rate: send(url, s, f"one vLLM, {rate:g}/s") for rate, s in schedules.items()
        }
    result["comparison"] = {
        rate: comparison(result["prfaas"][rate], result["single"][rate]) for rate in args.rates
    }
    size = result["connector"]["bytes_median"]
    result["raw"] = raw_bounds(int(size)) if size else {"error": "no transfer was logged"}
    loop_raw = result["raw"].get("loopback", {}).get("raw_socket_gbps")
    result["connector"]["over_raw_loopback"] = ratio(
        result["connector"]["goodput_gbps_median"], loop_raw
    )
    result["own_connectors"] = own_connectors()
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def summary(result: dict[str, Any]) -> str:
    lines = [f"CPU: {result['cpu_model']} ({result['num_cpus']} CPUs), {result['date']}"]
    for rate, ratios in result["comparison"].items():
        for key, name in (("prfaas", "PrfaaS (3 vLLM)"), ("single", "one vLLM")):
            r = result[key][rate]
            by_length = {n: _fmt(d["p50"]) for n, d in r["ttft_s_by_prompt_tokens"].items()}
            lines.append(
                f"{rate:g}/s {name}: ok {r['num_ok']}/{r['num_planned']}, TTFT p50 "
                f"{_fmt(r['ttft_s']['p50'])} s p90 {_fmt(r['ttft_s']['p90'])} s (p50 by length "
                f"{by_length}), {_fmt(r['throughput_rps'])} req/s, "
                f"{_fmt(r['output_tokens_per_s'])} output tok/s, routes {r['routes']}"
            )
        lines.append(f"{rate:g}/s ratios PrfaaS / one: {json.dumps(ratios)}")
    c = result["connector"]
    lines.append(
        f"connector: {c['num_transfers']} transfers, median {c['bytes_median']} B in "
        f"{c['seconds_median']} s = {_fmt(c['goodput_gbps_median'])} Gbit/s "
        f"({_fmt(c.get('over_raw_loopback'))} of raw loopback)"
    )
    for link in ("loopback", "shaped"):
        r = result["raw"].get(link, {})
        lines.append(
            f"{link}: raw {_fmt(r.get('raw_socket_gbps'))} Gbit/s, PrfaaS transport "
            f"{_fmt(r.get('goodput_gbps'))} Gbit/s {r.get('error', '')}"
        )
    lines += [f"{k}: {v}" for k, v in result["own_connectors"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--num-requests", type=int, default=24)
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[1.0, 3.0], help="requests/s (Poisson), each"
    )
    parser.add_argument("--num-long", type=int, default=6, help="long prompts for the goodput")
    parser.add_argument("--seed", type=int, default=0)
    run_and_report(parser.parse_args(argv), run, summary)


def run_and_report(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace, Path], dict[str, Any]],
    summarize: Callable[[dict[str, Any]], str],
) -> None:
    """Measure in a scratch directory; the results to `--json` FILE, the summary to stdout."""
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        result = measure(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(summarize(result))


if __name__ == "__main__":
    main()
