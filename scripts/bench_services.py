"""Benchmarks of the live services (results in docs/benchmarks/services.md).

    overhead    the router's added latency: the same requests at 20 req/s sent (a) to a decode
                instance directly and (b) through the router, side by side in one run, with an
                emulated engine that does not sleep (time_scale = 0), so what differs is the
                router's own work (validation, tokenizing, policy, one more HTTP hop, relay).
    throughput  short non-streaming completions through the router at rising open-loop rates,
                until errors appear or p99 latency doubles over the lowest rate's; sent by a
                minimal keep-alive HTTP client, so the load generator takes little of the CPU
                the system under test needs.
    torch       the tiny Qwen3-Next on torch engines (the embedded topology): TTFT and
                inter-token latency of local vs offloaded requests, KV bytes and transfer time.

Usage: .venv/bin/python scripts/bench_services.py [overhead|throughput|torch|all] [--json OUT]
Every process (router, instances, this load generator) shares this machine's cores; the numbers
are for that setting and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from prfaas.launch.local import EmbeddedOptions, Launcher, embedded_topology, free_port
from prfaas.messages import DecodeJob, GenerateRequest, SamplingParams
from prfaas.topology import Topology, load_topology

PROMPT = "Where does this request run?"


def emulated_topology(directory: Path) -> Path:
    """One idle PrfaaS prefill instance and one PD decode instance that prefills itself
    (threshold beyond any prompt), emulated engines that do not sleep."""
    options = EmbeddedOptions(
        router_port=free_port(),
        threshold_tokens=1_000_000_000,
        engine="emulated",
        pd_prefill=False,
        time_scale=0.0,
    )
    return embedded_topology(directory, options)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summary_ms(latencies_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies_s]
    return {"p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "n": len(ms)}


async def open_loop(
    send: Callable[[int], Awaitable[float]], rate_per_s: float, duration_s: float
) -> tuple[list[float], int, float]:
    """Start one request every 1/rate s for duration_s; (latencies, errors, achieved req/s)."""
    tasks = []
    start = time.monotonic()
    n = int(rate_per_s * duration_s)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
        tasks.append(asyncio.create_task(_timed(send, i)))
    results = await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    ok = [r for r in results if r is not None]
    return ok, n - len(ok), len(ok) / elapsed


async def _timed(send: Callable[[int], Awaitable[float]], i: int) -> float | None:
    try:
        return await send(i)
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError, AssertionError):
        return None


def direct_sender(client: aiohttp.ClientSession, topology: Topology) -> Callable[[int], Any]:
    url = f"http://{topology.instance('pd-decode-0').http}/internal/decode"
    auth = {"Authorization": f"Bearer {topology.transport.token}"}  # as the router sends it
    prompt = tuple(PROMPT.encode())

    async def send(i: int) -> float:
        job = DecodeJob(GenerateRequest(f"direct-{i}", prompt, SamplingParams(4)), None, 30.0)
        t0 = time.monotonic()
        async with client.post(url, json=job.to_dict(), headers=auth) as reply:
            content = await reply.read()
        assert reply.status == 200 and b'"finish_reason": "length"' in content
        return time.monotonic() - t0

    return send


def router_sender(client: aiohttp.ClientSession, topology: Topology) -> Callable[[int], Any]:
    url = f"http://{topology.router.http}/v1/completions"
    body = {"model": topology.model.served_name, "prompt": PROMPT, "max_tokens": 4}

    async def send(i: int) -> float:
        t0 = time.monotonic()
        async with client.post(url, json=body) as reply:
            content = await reply.read()
        assert reply.status == 200, content
        return time.monotonic() - t0

    return send


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client for the throughput sweep: one pre-built request,
    connections reused from an idle pool, responses read by Content-Length. It costs a fraction
    of a general client's CPU, which matters when the load generator shares 2 cores with the
    system it measures."""

    def __init__(self, address: str, path: str, body: dict[str, Any]) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.request = head.encode() + payload
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, _i: int) -> float:
        t0 = time.monotonic()
        if self.idle:
            try:  # the server may have closed an idle keep-alive connection: then a new one
                body = await self._exchange(*self.idle.pop())
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                body = await self._exchange(*await self._connect())
        else:
            body = await self._exchange(*await self._connect())
        assert body is not None
        return time.monotonic() - t0

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
        assert status == 200, body
        self.idle.append((reader, writer))
        return body

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def bench_overhead(topology: Topology, rounds: int, duration_s: float) -> dict[str, Any]:
    async with _session() as client:
        direct, routed = direct_sender(client, topology), router_sender(client, topology)
        await open_loop(routed, 20, 2)  # warm both paths
        await open_loop(direct, 20, 2)
        lat: dict[str, list[float]] = {"direct": [], "router": []}
        errors = {"direct": 0, "router": 0}
        for _ in range(rounds):  # alternate, so drift hits both sides alike
            for name, send in (("direct", direct), ("router", routed)):
                ok, err, _ = await open_loop(send, 20, duration_s)
                lat[name].extend(ok)
                errors[name] += err
    d, r = summary_ms(lat["direct"]), summary_ms(lat["router"])
    return {
        "rate_per_s": 20,
        "direct": {**d, "errors": errors["direct"]},
        "router": {**r, "errors": errors["router"]},
        "overhead_p50_ms": r["p50_ms"] - d["p50_ms"],
        "overhead_p99_ms": r["p99_ms"] - d["p99_ms"],
    }


async def bench_throughput(topology: Topology, rates: list[float], duration_s: float) -> Any:
    steps = []
    body = {"model": topology.model.served_name, "prompt": PROMPT, "max_tokens": 4}
    client = RawHttpClient(topology.router.http, "/v1/completions", body)
    try:
        send = client.send
        await open_loop(send, 20, 2)
        base_p99 = None
        for rate in rates:
            ok, err, achieved = await open_loop(send, rate, duration_s)
            s = {"offered_per_s": rate, "achieved_per_s": achieved, "errors": err, **summary_ms(ok)}
            steps.append(s)
            print(json.dumps(s), flush=True)
            base_p99 = base_p99 or s["p99_ms"]
            if err or s["p99_ms"] > 2 * base_p99 or achieved < 0.9 * rate:
                break
    finally:
        client.close()
    sustained = [
        s
        for s in steps
        if not s["errors"]
        and s["p99_ms"] <= 2 * steps[0]["p99_ms"]
        and s["achieved_per_s"] >= 0.9 * s["offered_per_s"]
    ]
    return {
        "steps": steps,
        "max_sustained_per_s": max((s["achieved_per_s"] for s in sustained), default=0.0),
    }


def _session() -> aiohttp.ClientSession:
    """The load generator's client: aiohttp, the cheapest per request of the clients at hand."""
    connector = aiohttp.TCPConnector(limit=2048)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


def stream_one(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed completion: client TTFT, mean gap between chunks, the `prfaas` field."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    t0 = time.monotonic()
    stamps: list[float] = []
    info: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            stamps.append(time.monotonic())
            info = chunk.get("prfaas", info)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"ttft_s": stamps[0] - t0, "itl_s": statistics.mean(gaps) if gaps else 0.0, **info}


def bench_torch(repeats: int, long_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        options = EmbeddedOptions(router_port=free_port(), threshold_tokens=128)
        path = embedded_topology(Path(tmp), options)
        topology = load_topology(path)
        with Launcher(path, topology, Path(tmp)) as launcher:
            launcher.wait_ready(600)
            url, model = launcher.router_url, topology.model.served_name
            long_prompt = ("The KV cache crosses the link layer by layer. " * 400)[:long_tokens]
            stream_one(url, model, PROMPT, 4)  # warm-up
            stream_one(url, model, long_prompt, 4)
            rows: dict[str, list[dict[str, Any]]] = {"local": [], "offloaded": []}
            for _ in range(repeats):  # alternate, side by side
                rows["local"].append(stream_one(url, model, long_prompt[:100], 32))
                rows["offloaded"].append(stream_one(url, model, long_prompt, 32))
    out: dict[str, Any] = {}
    for name, runs in rows.items():
        out[name] = {
            "route": runs[0]["route"],
            "prompt_tokens": 100 if name == "local" else long_tokens,
            "ttft_ms_p50": 1000 * statistics.median(r["ttft_s"] for r in runs),
            "itl_ms_p50": 1000 * statistics.median(r["itl_s"] for r in runs),
            "kv_bytes": runs[0]["kv_bytes"],
            "prefill_s_p50": statistics.median(r["prefill_s"] for r in runs),
            "kv_tail_ms_p50": 1000 * statistics.median(r["kv_transfer_tail_s"] for r in runs),
            "n": len(runs),
        }
    out["long_prompt_tokens"] = long_tokens
    return out


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import os

    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", nargs="?", default="all", choices=["overhead", "throughput", "torch", "all"]
    )
    parser.add_argument("--json", default=None, help="write results to this file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    if args.which in ("overhead", "throughput", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            path = emulated_topology(Path(tmp))
            topology = load_topology(path)
            with Launcher(path, topology, Path(tmp)) as launcher:
                launcher.wait_ready(600)
                if args.which in ("overhead", "all"):
                    results["overhead"] = asyncio.run(
                        bench_overhead(topology, args.rounds, args.seconds)
                    )
                    print(json.dumps(results["overhead"], indent=1), flush=True)
                if args.which in ("throughput", "all"):
                    rates = [50.0, 100, 150, 200, 250, 300, 350, 400, 500]
                    results["throughput"] = asyncio.run(
                        bench_throughput(topology, rates, args.seconds)
                    )
    if args.which in ("torch", "all"):
        results["torch"] = bench_torch(repeats=7, long_tokens=4096)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
