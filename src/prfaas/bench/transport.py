"""Transport benchmark: KV-shaped buffers sender -> receiver in two processes, the project's
transport against a plain `sendall`/`recv_into` loop over the same number of connections, in the
same run.

Roles run as subprocesses (`python -m prfaas.bench.transport receiver|sender ...`), optionally
inside the namespaces of a `NetnsLink`; they talk to the orchestrator with JSON lines on stdout.

Modes: `kv` (the transport as configured by default: connections and buffers sized to the
link), `kv-fixed` (its old fixed settings: the given connections, autotuning, no sizing),
`raw` (a plain socket loop) and `raw-tuned` (the same loop tuned by hand: every socket's buffers
forced to hold its share of the link's bandwidth-delay product, `SO_SNDBUFFORCE` /
`SO_RCVBUFFORCE`, since `net.core.rmem_max` cannot be raised inside a namespace). Over a link
with a delay line (`delay_ms` / `loss_pct`), the ends' namespace sysctls are set per mode before
it runs (`mode_sysctls`): `kv-fixed` and `raw` keep the namespace's defaults, `kv` gets the
testbed's `tcp_slow_start_after_idle = 0`, `raw-tuned` also autotuning maxima that hold its
buffers.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.transport.config import TransportConfig
from prfaas.transport.host_tcp import LinkNeed, buffer_bytes_for
from prfaas.types import MIB

if TYPE_CHECKING:
    from prfaas.testbed.netns import NetnsLink

_BENCH_TOKEN = "prfaas-bench"
_FILL_BLOCK_BYTES = 1 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # root: past net.core.wmem_max
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MODES = ("kv", "kv-fixed", "raw", "raw-tuned")
WAN_MODES = ("kv", "kv-fixed", "raw-tuned")  # over a link with a delay line
_TUNED_TCP_MEM = "4096 131072 268435456"  # raw-tuned's autotuning maxima (256 MiB)


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
    if args.buffer_bytes > 0:  # accepted sockets inherit it; the SYN's window scale follows it
        listener.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, args.buffer_bytes)
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
        opened = tx.link_stats(args.address)  # the connections open before the first transfer
        cpu = _CpuMeter(args.num_transfers)
        for i in range(args.num_transfers):
            if i > 0 and args.idle_s > 0:
                await asyncio.sleep(args.idle_s)  # the connections sit idle between transfers
            t0 = time.perf_counter()
            ack = await tx.send(args.address, manifest, views)
            cpu.transfer_done()
            seconds.append(time.perf_counter() - t0)
            if not ack.ok:
                raise RuntimeError(f"transfer failed: {ack.error}")
        cpu_s = cpu.per_transfer_s()
        view = tx.link_stats(args.address)
        sized = tx.sizing(args.address)
    num_connections = 0 if opened is None else opened.num_connections
    _emit({"size_bytes": manifest.total_bytes, "seconds": seconds, "tx_cpu_s": [cpu_s],
           "link": view and view.__repr__(), "num_connections": num_connections,
           "socket_buffer_bytes": sized and sized.socket_buffer_bytes,
           "sizing_bdp_bytes": sized and sized.bdp_bytes,
           "sizing_warning": sized and sized.warning})  # fmt: skip


def _raw_connect(args: argparse.Namespace) -> socket.socket:
    """One raw connection: its buffers forced and its congestion control set before connect."""
    host, _, port = args.address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.buffer_bytes > 0:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, args.buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, args.buffer_bytes)
    if args.congestion_control:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.congestion_control.encode())
    sock.connect((host, int(port)))
    return sock


def _raw_sender(args: argparse.Namespace) -> None:
    conns = [_raw_connect(args) for _ in range(args.connections)]
    payload = memoryview(filled_buffer(args.size_bytes))
    parts = _split(args.size_bytes, args.connections)
    seconds = []
    cpu = _CpuMeter(args.num_transfers)
    for i in range(args.num_transfers):
        if i > 0 and args.idle_s > 0:
            time.sleep(args.idle_s)
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
        congestion_control=args.congestion_control or None,
        link_gbps=args.link_gbps,
        size_to_link=args.mode == "kv",
    )


def role_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m prfaas.bench.transport")
    p.add_argument("role", choices=["receiver", "sender"])
    p.add_argument("--mode", choices=MODES, required=True)
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
    p.add_argument("--link-gbps", type=float, default=0.0)
    p.add_argument("--congestion-control", default="")
    p.add_argument("--buffer-bytes", type=int, default=0)
    p.add_argument("--idle-s", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.mode.startswith("raw"):  # move exactly the bytes the KV mode moves
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
    delay_ms: float | None = None  # one way; with loss_pct, a delay line sits in the link
    loss_pct: float = 0.0  # per packet and direction, at the delay line
    congestion_control: str | None = None  # every sender's; None: the namespace's default
    idle_s: float = 0.0  # the connections sit idle this long before each timed transfer
    seed: int = 0  # the delay line's loss draws

    @property
    def has_delay_line(self) -> bool:
        return self.delay_ms is not None or self.loss_pct > 0

    @property
    def rtt_s(self) -> float:
        """The link's round trip as the delay line makes it (2 x one way)."""
        return 2 * (self.delay_ms or 0.0) / 1e3


def tuned_buffer_bytes(spec: BenchSpec) -> int:
    """raw-tuned's socket buffers, set by hand: each connection's share of the link's
    bandwidth-delay product (x2: the kernel keeps half of a buffer for itself), at least 4 MiB."""
    need = LinkNeed(spec.link_gbps or 0.0, spec.rtt_s, spec.connections)
    return buffer_bytes_for(need.per_connection_window_bytes)


def mode_sysctls(mode: str, defaults: dict[str, str]) -> dict[str, str]:
    """The ends' namespace sysctls for `mode` over a delay line (see the module docstring)."""
    if mode in ("kv-fixed", "raw"):
        return dict(defaults)
    values = {**defaults, "net.ipv4.tcp_slow_start_after_idle": "0"}
    if mode == "raw-tuned":
        values |= {"net.ipv4.tcp_rmem": _TUNED_TCP_MEM, "net.ipv4.tcp_wmem": _TUNED_TCP_MEM}
    return values


_SYSCTL_KEYS = ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_slow_start_after_idle")


def _role_argv(spec: BenchSpec, role: str, mode: str, host: str, address: str = "") -> list[str]:
    argv = [sys.executable, "-m", "prfaas.bench.transport", role, "--mode", mode]
    argv += ["--host", host, "--size-bytes", str(spec.size_bytes)]
    argv += ["--connections", str(spec.connections), "--frame-bytes", str(spec.frame_bytes)]
    argv += ["--num-transfers", str(spec.repeats + 1), "--idle-s", str(spec.idle_s)]
    argv += ["--link-gbps", str(spec.link_gbps or 0.0)]
    if spec.congestion_control:
        argv += ["--congestion-control", spec.congestion_control]
    if mode == "raw-tuned":
        argv += ["--buffer-bytes", str(tuned_buffer_bytes(spec))]
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
    cold = {"cold_seconds": [sent["seconds"][0]], "warm_seconds": timed}
    sized = {key: sent[key] for key in _SIZING_KEYS if sent.get(key) is not None}
    if mode.startswith("raw"):
        buffer_bytes = tuned_buffer_bytes(spec) if mode == "raw-tuned" else 0
        sized = {"num_connections": spec.connections, "socket_buffer_bytes": buffer_bytes}
    return {"gbps": gbps, "size_bytes": sent["size_bytes"], **cpu, **cold, **sized, **received}


def run_bench(spec: BenchSpec) -> dict[str, Any]:
    """The modes over loopback, or over a shaped NetnsLink when spec.link_gbps is set (with a
    delay line in it when spec has a delay or loss)."""
    if spec.link_gbps is None:
        return _summarize(spec, _alternate(spec, _same, _same, "127.0.0.1"))
    from prfaas.testbed.delay_schedule import DelaySettings
    from prfaas.testbed.netns import NetnsLink

    delay = None
    if spec.has_delay_line:
        delay = DelaySettings(delay_ms=spec.delay_ms or 0.0, loss_pct=spec.loss_pct)
    with NetnsLink(spec.link_gbps, delay=delay, seed=spec.seed) as link:
        before = None if delay is None else _sysctls_per_mode(link)
        results = _alternate(spec, link.receiver_cmd, link.sender_cmd, link.receiver_ip, before)
        report = link.delay_report()
    summary = _summarize(spec, results)
    if report:
        summary["delay_line"] = report
    return summary


def _sysctls_per_mode(link: NetnsLink) -> Callable[[str], None]:
    """What sets the link's ends' sysctls for a mode (`mode_sysctls` over their defaults)."""
    from prfaas.testbed.netns import read_sysctls, set_sysctls

    defaults = read_sysctls(link.sender_ns, _SYSCTL_KEYS)

    def before(mode: str) -> None:
        for ns in link.end_namespaces:
            set_sysctls(ns, mode_sysctls(mode, defaults))

    return before


def _alternate(
    spec: BenchSpec,
    wrap_rx: Any,
    wrap_tx: Any,
    host: str,
    before: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _ in range(spec.rounds):
        for mode in spec.modes:
            if before is not None:
                before(mode)
            r = _run_pair(spec, mode, wrap_rx, wrap_tx, host)
            if mode in results:
                for key in _PER_RUN_LISTS:
                    r[key] = results[mode][key] + r[key]
            results[mode] = r
    return results


_SIZING_KEYS = (
    "num_connections",
    "socket_buffer_bytes",
    "sizing_bdp_bytes",
    "sizing_warning",
)  # kv senders'
_PER_RUN_LISTS = ("gbps", "tx_cpu_s", "rx_cpu_s", "cold_seconds", "warm_seconds")


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
    if spec.has_delay_line:
        out |= {"delay_ms": spec.delay_ms or 0.0, "loss_pct": spec.loss_pct,
                "congestion_control": spec.congestion_control}  # fmt: skip
    out["modes"] = {mode: _mode_summary(r) for mode, r in results.items()}
    tuned = out["modes"].get("raw-tuned")
    if tuned is not None:
        for mode in ("kv", "kv-fixed"):
            if mode in out["modes"]:
                ratio = out["modes"][mode]["gbps"] / tuned["gbps"]
                out[f"{mode.replace('-', '_')}_over_tuned_raw"] = ratio
    return out


def _mode_summary(result: dict[str, Any]) -> dict[str, Any]:
    """One mode's median goodput, runs, cold and warm transfer times, CPU per GB sent."""
    gb = result["size_bytes"] / 1e9
    summary: dict[str, Any] = {
        "gbps": statistics.median(result["gbps"]),
        "gbps_runs": result["gbps"],
        "cold_s": statistics.median(result["cold_seconds"]),
        "warm_s": statistics.median(result["warm_seconds"]),
    }
    for role in ("tx", "rx"):
        values = result.get(f"{role}_cpu_s") or []
        if values:
            summary[f"{role}_cpu_s_per_gb"] = statistics.median(values) / gb
    for key in _SIZING_KEYS:
        if key in result:
            summary[key] = result[key]
    return summary


def _add_cpu(out: dict[str, Any], prefix: str, result: dict[str, Any]) -> None:
    """Median CPU seconds (user + system, all threads) per timed transfer of each role process
    (after the warm-up transfer)."""
    for role in ("tx", "rx"):
        values = result.get(f"{role}_cpu_s") or []
        if values:
            out[f"{prefix}{role}_cpu_s_per_transfer"] = statistics.median(values)


if __name__ == "__main__":
    role_main()
