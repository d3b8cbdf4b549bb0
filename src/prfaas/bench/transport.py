"""Transport benchmark: KV-shaped buffers sender -> receiver in two processes, the project's
transport against a plain `sendall`/`recv_into` loop over the same number of connections, in the
same run.

Roles run as subprocesses (`python -m prfaas.bench.transport receiver|sender ...`), optionally
inside the namespaces of a `NetnsLink`; they talk to the orchestrator with JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.transport.config import TransportConfig
from prfaas.types import MIB

_BENCH_TOKEN = "prfaas-bench"
_FILL_BLOCK_BYTES = 1 << 20


def kv_shaped_manifest(size_bytes: int, num_layers: int = 32) -> KVManifest:
    """A hybrid 3:1 model's state: 1 in 4 layers holds K and V (most bytes), the others a conv
    state and a fixed recurrent state of size_bytes/1024 each."""
    linear_bytes = max(4096, size_bytes // 1024)
    num_attn = max(1, num_layers // 4)
    num_linear = num_layers - num_attn
    kv_bytes = max(4096, (size_bytes - num_linear * linear_bytes) // (2 * num_attn))
    layers, offset = [], 0
    for i in range(num_layers):
        is_attn = i % 4 == 3
        names = ("keys", "values") if is_attn else ("conv_states/0", "recurrent_states/0")
        sizes = (kv_bytes, kv_bytes) if is_attn else (linear_bytes // 8, linear_bytes)
        tensors = []
        for name, n in zip(names, sizes, strict=True):
            tensors.append(TensorEntry(f"L{i}/{name}", i, "bfloat16", (n // 2,), offset, n))
            offset += n
        kind = "full_attention" if is_attn else "linear_attention"
        cls = "DynamicLayer" if is_attn else "LinearAttentionLayer"
        layers.append(LayerEntry(i, kind, cls, {}, tuple(tensors)))
    return KVManifest("bench", "bench", "bench-hybrid", num_layers, tuple(layers), 0, None)


def filled_buffer(num_bytes: int) -> bytearray:
    """Incompressible-looking bytes, made quickly from one random block."""
    block = os.urandom(_FILL_BLOCK_BYTES)
    buf = bytearray(num_bytes)
    for pos in range(0, num_bytes, _FILL_BLOCK_BYTES):
        n = min(_FILL_BLOCK_BYTES, num_bytes - pos)
        buf[pos : pos + n] = block[:n]
    return buf


def tensor_views(manifest: KVManifest, payload: bytearray) -> list[memoryview]:
    whole = memoryview(payload)
    return [
        whole[t.offset_bytes : t.offset_bytes + t.num_bytes]
        for layer in manifest.layers
        for t in layer.tensors
    ]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _CpuMeter:
    """CPU seconds (user + system, all threads) per transfer, after the warm-up transfer."""

    def __init__(self, num_transfers: int) -> None:
        self._num_timed = max(1, num_transfers - 1)
        self._start_s = time.process_time()
        self._num_done = 0

    def transfer_done(self) -> None:
        self._num_done += 1
        if self._num_done == 1:  # the warm-up transfer fills pools and TCP windows
            self._start_s = time.process_time()

    def per_transfer_s(self) -> float:
        return (time.process_time() - self._start_s) / self._num_timed


def _pass_barrier(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=600)


# ---------------- receiver role ----------------


async def _kv_receiver(args: argparse.Namespace, config: TransportConfig) -> None:
    from prfaas.transport.receiver import KVReceiver

    async with KVReceiver(config, host=args.host, port=0) as rx:
        rss_before = _rss_bytes()
        _emit({"address": rx.address})
        cpu = _CpuMeter(args.num_transfers)
        for _ in range(args.num_transfers):
            got = await rx.get()
            got.release()
            cpu.transfer_done()
        cpu_s = cpu.per_transfer_s()
        _emit({"rss_before_bytes": rss_before, "peak_rss_bytes": _peak_rss_bytes(),
               "rx_cpu_s": [cpu_s]})  # fmt: skip


def _raw_receiver(args: argparse.Namespace) -> None:
    listener = socket.create_server((args.host, 0))
    _emit({"address": f"{args.host}:{listener.getsockname()[1]}"})
    conns = [listener.accept()[0] for _ in range(args.connections)]
    buf = memoryview(bytearray(args.size_bytes))
    parts = _split(args.size_bytes, args.connections)

    warmed = threading.Barrier(args.connections + 1)  # all threads past the warm-up transfer

    def serve(sock: socket.socket, start: int, end: int) -> None:
        for i in range(args.num_transfers):
            pos = start
            while pos < end:
                n = sock.recv_into(buf[pos:end])
                if n == 0:
                    return
                pos += n
            sock.sendall(b"k")
            if i == 0:
                _pass_barrier(warmed)

    threads = [
        threading.Thread(target=serve, args=(c, s, e))
        for c, (s, e) in zip(conns, parts, strict=True)
    ]
    for t in threads:
        t.start()
    _pass_barrier(warmed)
    cpu = _CpuMeter(args.num_transfers)
    cpu.transfer_done()
    for t in threads:
        t.join()
    cpu_s = cpu.per_transfer_s()
    _emit({"peak_rss_bytes": _peak_rss_bytes(), "rx_cpu_s": [cpu_s]})


# ---------------- sender role ----------------


async def _kv_sender(args: argparse.Namespace, config: TransportConfig) -> None:
    from prfaas.transport.sender import KVSender

    manifest = kv_shaped_manifest(args.size_bytes)
    views = tensor_views(manifest, filled_buffer(manifest.total_bytes))
    seconds = []
    async with KVSender(config) as tx:
        await tx.connect(args.address)
        cpu = _CpuMeter(args.num_transfers)
        for _ in range(args.num_transfers):
            t0 = time.perf_counter()
            ack = await tx.send(args.address, manifest, views)
            cpu.transfer_done()
            seconds.append(time.perf_counter() - t0)
            if not ack.ok:
                raise RuntimeError(f"transfer failed: {ack.error}")
        cpu_s = cpu.per_transfer_s()
        view = tx.link_stats(args.address)
    _emit({"size_bytes": manifest.total_bytes, "seconds": seconds, "tx_cpu_s": [cpu_s],
           "link": view and view.__repr__()})  # fmt: skip


def _raw_sender(args: argparse.Namespace) -> None:
    host, _, port = args.address.rpartition(":")
    conns = [socket.create_connection((host, int(port))) for _ in range(args.connections)]
    payload = memoryview(filled_buffer(args.size_bytes))
    parts = _split(args.size_bytes, args.connections)
    seconds = []
    cpu = _CpuMeter(args.num_transfers)
    for _ in range(args.num_transfers):
        t0 = time.perf_counter()

        def push(sock: socket.socket, start: int, end: int) -> None:
            sock.sendall(payload[start:end])
            sock.recv(1)

        threads = [
            threading.Thread(target=push, args=(c, s, e))
            for c, (s, e) in zip(conns, parts, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds.append(time.perf_counter() - t0)
        cpu.transfer_done()
    cpu_s = cpu.per_transfer_s()
    _emit({"size_bytes": args.size_bytes, "seconds": seconds, "tx_cpu_s": [cpu_s]})


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // parts)
    return [(i * step, min(total, (i + 1) * step)) for i in range(parts)]


def _role_config(args: argparse.Namespace) -> TransportConfig:
    return TransportConfig(
        num_connections=args.connections,
        frame_bytes=args.frame_bytes,
        token=_BENCH_TOKEN,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        payload_checksum=not args.no_payload_checksum,
        io_threads=args.io_threads,
        max_transfer_bytes=max(args.size_bytes * 2, 64 * MIB),
        max_buffer_bytes=max(args.size_bytes * 2, 64 * MIB),
        deadline_s=600.0,
    )


def role_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m prfaas.bench.transport")
    p.add_argument("role", choices=["receiver", "sender"])
    p.add_argument("--mode", choices=["kv", "raw"], required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--address", default="")
    p.add_argument("--size-bytes", type=int, required=True)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--frame-bytes", type=int, default=4 * MIB)
    p.add_argument("--num-transfers", type=int, default=4)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--no-payload-checksum", action="store_true")
    p.add_argument("--io-threads", action="store_true")
    args = p.parse_args(argv)
    if args.mode == "raw":  # move exactly the bytes the KV mode moves
        args.size_bytes = kv_shaped_manifest(args.size_bytes).total_bytes
        (_raw_receiver if args.role == "receiver" else _raw_sender)(args)
    elif args.role == "receiver":
        asyncio.run(_kv_receiver(args, _role_config(args)))
    else:
        asyncio.run(_kv_sender(args, _role_config(args)))


# ---------------- orchestrator ----------------


@dataclass(frozen=True, slots=True)
class BenchSpec:
    size_bytes: int
    connections: int
    frame_bytes: int = 4 * MIB
    repeats: int = 3  # timed transfers per mode and round, after one warm-up transfer
    rounds: int = 2  # modes alternate kv, raw, kv, raw...: background load hits both alike
    link_gbps: float | None = None  # run over a NetnsLink shaped to this rate
    tls: tuple[str, str, str] | None = None  # (cert, key, ca) for both sides
    modes: tuple[str, ...] = ("kv", "raw")
    payload_checksum: bool = True  # False only with tls
    io_threads: bool = False  # TransportConfig.io_threads on both sides


def _role_argv(spec: BenchSpec, role: str, mode: str, host: str, address: str = "") -> list[str]:
    argv = [sys.executable, "-m", "prfaas.bench.transport", role, "--mode", mode]
    argv += ["--host", host, "--size-bytes", str(spec.size_bytes)]
    argv += ["--connections", str(spec.connections), "--frame-bytes", str(spec.frame_bytes)]
    argv += ["--num-transfers", str(spec.repeats + 1)]
    if address:
        argv += ["--address", address]
    if spec.tls is not None:
        argv += ["--tls-cert", spec.tls[0], "--tls-key", spec.tls[1], "--tls-ca", spec.tls[2]]
    if not spec.payload_checksum:
        argv += ["--no-payload-checksum"]
    if spec.io_threads:
        argv += ["--io-threads"]
    return argv


def _run_pair(spec: BenchSpec, mode: str, wrap_rx: Any, wrap_tx: Any, host: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    rx = subprocess.Popen(
        wrap_rx(_role_argv(spec, "receiver", mode, host)),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert rx.stdout is not None
        address = json.loads(rx.stdout.readline())["address"]
        tx_argv = wrap_tx(_role_argv(spec, "sender", mode, host, address))
        done = subprocess.run(tx_argv, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} sender failed: {done.stderr.strip()[-2000:]}")
        sent = json.loads(done.stdout.strip().splitlines()[-1])
        received = json.loads(rx.stdout.readline())
        rx.wait(timeout=60)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    timed = sent["seconds"][1:]  # the first transfer warms pools and TCP windows
    gbps = [sent["size_bytes"] * 8 / s / 1e9 for s in timed]
    cpu = {"tx_cpu_s": sent.get("tx_cpu_s", []), "rx_cpu_s": received.pop("rx_cpu_s", [])}
    return {"gbps": gbps, "size_bytes": sent["size_bytes"], **cpu, **received}


def run_bench(spec: BenchSpec) -> dict[str, Any]:
    """Both modes over loopback, or over a shaped NetnsLink when spec.link_gbps is set."""
    if spec.link_gbps is None:
        return _summarize(spec, _alternate(spec, _same, _same, "127.0.0.1"))
    from prfaas.testbed.netns import NetnsLink

    with NetnsLink(spec.link_gbps) as link:
        results = _alternate(spec, link.receiver_cmd, link.sender_cmd, link.receiver_ip)
    return _summarize(spec, results)


def _alternate(spec: BenchSpec, wrap_rx: Any, wrap_tx: Any, host: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _ in range(spec.rounds):
        for mode in spec.modes:
            r = _run_pair(spec, mode, wrap_rx, wrap_tx, host)
            if mode in results:
                for key in _PER_RUN_LISTS:
                    r[key] = results[mode][key] + r[key]
            results[mode] = r
    return results


_PER_RUN_LISTS = ("gbps", "tx_cpu_s", "rx_cpu_s")  # concatenated over rounds


def _same(argv: list[str]) -> list[str]:
    return argv


def _summarize(spec: BenchSpec, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"size_bytes": spec.size_bytes, "connections": spec.connections,
                           "frame_bytes": spec.frame_bytes, "repeats": spec.repeats,
                           "tls": spec.tls is not None,
                           "payload_checksum": spec.payload_checksum,
                           "io_threads": spec.io_threads}  # fmt: skip
    kv, raw = results.get("kv"), results.get("raw")
    if kv is not None:
        out["goodput_gbps"] = statistics.median(kv["gbps"])
        out["goodput_gbps_best"] = max(kv["gbps"])
        out["goodput_gbps_runs"] = kv["gbps"]
        out["payload_bytes"] = kv["size_bytes"]
        _add_cpu(out, "", kv)
        if "rss_before_bytes" in kv:
            out["receiver_rss_growth_bytes"] = kv["peak_rss_bytes"] - kv["rss_before_bytes"]
    if raw is not None:
        out["raw_socket_gbps"] = statistics.median(raw["gbps"])
        out["raw_socket_gbps_best"] = max(raw["gbps"])
        out["raw_socket_gbps_runs"] = raw["gbps"]
        _add_cpu(out, "raw_", raw)
    if kv is not None and raw is not None:
        out["ratio"] = out["goodput_gbps"] / out["raw_socket_gbps"]
        out["ratio_best"] = out["goodput_gbps_best"] / out["raw_socket_gbps_best"]
    if spec.link_gbps is not None:
        out["link_gbps"] = spec.link_gbps
        if kv is not None:
            out["goodput_over_link"] = out["goodput_gbps"] / spec.link_gbps
        if raw is not None:
            out["raw_over_link"] = out["raw_socket_gbps"] / spec.link_gbps
    return out


def _add_cpu(out: dict[str, Any], prefix: str, result: dict[str, Any]) -> None:
    """Median CPU seconds (user + system, all threads) per timed transfer of each role process
    (after the warm-up transfer)."""
    for role in ("tx", "rx"):
        values = result.get(f"{role}_cpu_s") or []
        if values:
            out[f"{prefix}{role}_cpu_s_per_transfer"] = statistics.median(values)


if __name__ == "__main__":
    role_main()
