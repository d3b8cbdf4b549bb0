"""KV codecs side by side with the send: one request's state from export to the receiver's ACK
through the project's transport (`KVSender` -> `KVReceiver`, two processes), per codec, at
several link rates.

Usage:
    PYTHONPATH=src .venv/bin/python scripts/bench_codec_send.py [--model qwen3-next-80b]
        [--tokens 4096] [--rates-gbps 0.1,1,2.5,10,unlimited] [--repeats 3] [--threads 1]
        [--codecs none,fp8,int4-rotated] [--json out.json]

The request's state is the model's own layout (`prfaas.models` preset): every full-attention
layer's K and V as [1, kv_heads, tokens, head_dim] bfloat16, every linear-attention layer's conv
state (bfloat16) and recurrent state (float32), random values. The sender codes it exactly as the
prefill instance's export does (`engine.kv_export.layer_state`, K/V coded per layer, the rest
exact) on an engine thread, handing each layer to the transport as it is final
(`KVTransfer.send_layer` through the event loop, as `instance.prefill` does), so coding layer
i+1 overlaps the send of layer i. Mode `serial` codes every layer first and then sends, the
baseline that shows what the overlap saves. The receiver decodes every K/V as import does
(`PayloadView.tensor`) once the ACK is out, and reports the decode time.

A rate limits the sender -> receiver direction with a network namespace pair and `tc tbf`
(`testbed.netns.NetnsLink`, needs root); `unlimited` is loopback. Torch runs on `--threads`
intra-op threads in both processes. Before the transfers the sender times encode and decode of
one full-attention layer's K alone (1 and 2 threads). Each transfer waits for the previous
one's decode to finish (the orchestrator releases the sender with a line on its stdin), so a
decode never runs under the next send. Medians over `--repeats`; one warm-up transfer per rate
is discarded. GB/s = 1e9 bytes; "uncoded" rates count the state's uncoded bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from prfaas.engine.kv_codec import kv_codec
from prfaas.engine.kv_export import coded_kv, layer_state
from prfaas.engine.kv_import import PayloadView
from prfaas.engine.protocol import LayerState
from prfaas.messages import KVManifest
from prfaas.models.presets import load_model_spec
from prfaas.models.spec import ModelSpec
from prfaas.transport.config import TransportConfig
from prfaas.types import MIB, LayerKind

_TOKEN = "prfaas-bench"
_LAYER_QUEUE_TIMEOUT_S = 120.0
_STANDALONE_REPEATS = 5
MODES = ("pipelined", "serial")

Named = list[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class RequestLayer:
    """One layer of the request's state: its kind, cache class and named tensors."""

    kind: LayerKind
    cache_class: str
    named: Named


def request_layers(spec: ModelSpec, num_tokens: int, seed: int = 0) -> list[RequestLayer]:
    """The request's state in the model's layout (random values; see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    layers = []
    for layer in spec.layers:
        if layer.kind is LayerKind.FULL_ATTENTION:
            keys = randn(1, layer.num_kv_heads, num_tokens, layer.head_dim_k, dtype=torch.bfloat16)
            values = randn(
                1, layer.num_kv_heads, num_tokens, layer.head_dim_v, dtype=torch.bfloat16
            )
            named = [("keys", keys), ("values", values)]
            layers.append(RequestLayer(layer.kind, "DynamicLayer", named))
        elif layer.kind is LayerKind.LINEAR_ATTENTION:
            conv = randn(1, layer.conv_channels, layer.conv_kernel - 1, dtype=torch.bfloat16)
            state = randn(
                1, layer.num_state_heads, layer.state_key_dim, layer.state_value_dim,
                dtype=torch.float32,
            )  # fmt: skip
            named = [("conv_states/0", conv), ("recurrent_states/0", state)]
            layers.append(RequestLayer(layer.kind, "LinearAttentionLayer", named))
        else:
            raise SystemExit(f"layer kind {layer.kind.value} is not built by this benchmark")
    return layers


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def uncoded_bytes(layers: list[RequestLayer]) -> tuple[int, int]:
    """(all bytes of the state, bytes of its attention K/V)."""
    total = sum(_tensor_bytes(t) for layer in layers for _, t in layer.named)
    kv = sum(
        _tensor_bytes(t)
        for layer in layers
        for name, t in layer.named
        if name in ("keys", "values")
    )
    return total, kv


# ---------------- sender role ----------------


def _code_layer(layer: RequestLayer, index: int, offset: int, codec_name: str) -> LayerState:
    """Layer `index` as the engine's export builds it (`kv_export.layer_state`)."""
    return layer_state(
        index, layer.kind.value, layer.cache_class, {}, layer.named, offset, coded_kv(codec_name)
    )


class _EngineThread:
    """Codes the layers on a thread of its own, as the prefill instance's engine thread does,
    handing each to the transport on the event loop; records seconds spent coding."""

    def __init__(self, loop: asyncio.AbstractEventLoop, num_threads: int) -> None:
        self._loop = loop
        self._num_threads = num_threads
        self.encode_s = 0.0
        self.produced_at = 0.0

    def run(self, layers: list[RequestLayer], codec: str, send: Any, serial: bool) -> list[Any]:
        torch.set_num_threads(self._num_threads)
        states, offset = [], 0
        for index, layer in enumerate(layers):
            start = time.perf_counter()
            state = _code_layer(layer, index, offset, codec)
            self.encode_s += time.perf_counter() - start
            offset += state.entry.num_bytes
            states.append(state)
            if not serial:
                self._hand_over(send, state)
        if serial:
            for state in states:
                self._hand_over(send, state)
        self.produced_at = time.perf_counter()
        return states

    def _hand_over(self, send: Any, state: LayerState) -> None:
        future = asyncio.run_coroutine_threadsafe(send(state.entry, state.buffers), self._loop)
        future.result(_LAYER_QUEUE_TIMEOUT_S)


async def _one_transfer(
    tx: Any, dest: str, layers: list[RequestLayer], codec: str, mode: str, num_threads: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tid = uuid.uuid4().hex
    engine = _EngineThread(loop, num_threads)
    start = time.perf_counter()
    transfer = await tx.begin(dest, tid, tid)
    states = await asyncio.to_thread(
        engine.run, layers, codec, transfer.send_layer, mode == "serial"
    )
    manifest = KVManifest(
        tid, tid, "bench", len(layers), tuple(s.entry for s in states), 0, None, kv_codec=codec
    )
    ack = await transfer.finish(manifest)
    done = time.perf_counter()
    if not ack.ok:
        raise RuntimeError(f"transfer failed: {ack.error}")
    return {
        "codec": codec,
        "mode": mode,
        "payload_bytes": manifest.total_bytes,
        "encode_s": engine.encode_s,
        "request_s": done - start,
        "produced_s": engine.produced_at - start,
    }


def _median_s(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: caches, the rotation matrix
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def standalone_rates(layers: list[RequestLayer], codecs: list[str]) -> list[dict[str, Any]]:
    """Encode and decode GB/s of one full-attention layer's K alone, on 1 and 2 threads."""
    keys = next(t for layer in layers for name, t in layer.named if name == "keys")
    num_bytes = _tensor_bytes(keys)
    rows = []
    for num_threads in (1, 2):
        torch.set_num_threads(num_threads)
        for name in codecs:
            codec = kv_codec(name)
            coded = codec.encode(keys)
            encode_s = _median_s(functools.partial(codec.encode, keys), _STANDALONE_REPEATS)
            decode = functools.partial(codec.decode, coded.payload, coded.metadata)
            decode_s = _median_s(decode, _STANDALONE_REPEATS)
            rows.append({"codec": name, "threads": num_threads, "tensor_bytes": num_bytes,
                         "encode_gbps_bytes": num_bytes / encode_s / 1e9,
                         "decode_gbps_bytes": num_bytes / decode_s / 1e9})  # fmt: skip
    return rows


async def _sender(args: argparse.Namespace) -> None:
    from prfaas.transport.sender import KVSender

    layers = request_layers(load_model_spec(args.model), args.tokens)
    codecs = args.codecs.split(",")
    if args.standalone:
        _emit({"standalone": standalone_rates(layers, codecs)})
    torch.set_num_threads(args.threads)
    async with KVSender(_config(args)) as tx:
        await tx.connect(args.address)
        while line := await asyncio.to_thread(sys.stdin.readline):  # per transfer: "codec mode"
            codec, mode = line.split()
            _emit(await _one_transfer(tx, args.address, layers, codec, mode, args.threads))


# ---------------- receiver role ----------------


def _decode_s(got: Any) -> float:
    """Seconds to rebuild every K/V of a received transfer as import does."""
    manifest = got.manifest
    buffers = [got.layer_buffers[layer.layer_index] for layer in manifest.layers]
    payload, codec = PayloadView(buffers), coded_kv(manifest.kv_codec)
    start = time.perf_counter()
    for layer in manifest.layers:
        for entry in layer.tensors:
            if entry.name.endswith(("/keys", "/values")):
                payload.tensor(entry, copy=False, codec=codec)
    return time.perf_counter() - start


async def _receiver(args: argparse.Namespace) -> None:
    from prfaas.transport.receiver import KVReceiver

    torch.set_num_threads(args.threads)
    async with KVReceiver(_config(args), host=args.host, port=0) as rx:
        _emit({"address": rx.address})
        while True:
            got = await rx.get()
            decode_s = _decode_s(got)
            got.release()
            _emit({"decode_s": decode_s})


def _config(args: argparse.Namespace) -> TransportConfig:
    return TransportConfig(
        token=_TOKEN,
        max_transfer_bytes=4096 * MIB,
        max_buffer_bytes=8192 * MIB,
        deadline_s=600.0,
        link_gbps=args.link_gbps,
    )


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------- orchestrator ----------------


def _role_argv(
    args: argparse.Namespace, role: str, host: str, rate_gbps: float | None
) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--role", role, "--host", host]
    argv += ["--model", args.model, "--tokens", str(args.tokens), "--threads", str(args.threads)]
    argv += ["--codecs", args.codecs, "--link-gbps", str(rate_gbps or 0.0)]
    return argv


@contextmanager
def _link(rate_gbps: float | None) -> Iterator[tuple[Any, Any, str]]:
    """(wrap receiver argv, wrap sender argv, receiver host) of a shaped or loopback link."""
    if rate_gbps is None:
        yield (lambda argv: argv), (lambda argv: argv), "127.0.0.1"
        return
    from prfaas.testbed.netns import NetnsLink

    with NetnsLink(rate_gbps) as link:
        yield link.receiver_cmd, link.sender_cmd, link.receiver_ip


def _read_json(stream: Any, what: str) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise RuntimeError(f"{what} ended without an answer")
    result: dict[str, Any] = json.loads(line)
    return result


def run_rate(
    args: argparse.Namespace, rate_gbps: float | None, label: str, standalone: bool
) -> dict[str, Any]:
    """Every codec and mode at one link rate, alternating, `args.repeats` times (first the
    codecs alone, when `standalone`)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    plan = [("none", "pipelined")]  # warm-up, discarded
    for _ in range(args.repeats):
        for codec in args.codecs.split(","):
            modes = MODES if codec != "none" and args.serial else ("pipelined",)
            plan += [(codec, mode) for mode in modes]
    runs: list[dict[str, Any]] = []
    with _link(rate_gbps) as (wrap_rx, wrap_tx, host):
        rx = subprocess.Popen(wrap_rx(_role_argv(args, "receiver", host, rate_gbps)),
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        tx = None
        try:
            address = _read_json(rx.stdout, "receiver")["address"]
            tx_argv = [*_role_argv(args, "sender", host, rate_gbps), "--address", address]
            if standalone:
                tx_argv.append("--standalone")
            tx = subprocess.Popen(wrap_tx(tx_argv), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
            assert tx.stdin is not None
            rates = _read_json(tx.stdout, "sender") if standalone else {}
            for i, (codec, mode) in enumerate(plan):
                tx.stdin.write(f"{codec} {mode}\n")
                tx.stdin.flush()
                sent = _read_json(tx.stdout, "sender")
                sent |= _read_json(rx.stdout, "receiver")
                print(f"{label}: {i + 1}/{len(plan)} {codec} {mode} "
                      f"{sent['request_s']:.3f} s", file=sys.stderr, flush=True)  # fmt: skip
                if i > 0:
                    runs.append(sent)
            tx.stdin.close()
            tx.wait(timeout=60)
        finally:
            for proc in (tx, rx):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {"rate": label, "link_gbps": rate_gbps, "runs": runs, **rates}


def summarize(result: dict[str, Any], total_bytes: int, kv_bytes: int) -> list[dict[str, Any]]:
    """Medians per codec and mode at one rate."""
    rows = []
    for codec, mode in dict.fromkeys((r["codec"], r["mode"]) for r in result["runs"]):
        runs = [r for r in result["runs"] if (r["codec"], r["mode"]) == (codec, mode)]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(r[key] for r in runs))

        request_s, encode_s, decode_s = med("request_s"), med("encode_s"), med("decode_s")
        rows.append({"rate": result["rate"], "codec": codec, "mode": mode,
                     "num_runs": len(runs), "payload_bytes": runs[0]["payload_bytes"],
                     "request_s": request_s, "encode_s": encode_s,
                     "produced_s": med("produced_s"), "decode_s": decode_s,
                     "encode_gbps_bytes": kv_bytes / encode_s / 1e9 if codec != "none" else None,
                     "decode_gbps_bytes": kv_bytes / decode_s / 1e9 if codec != "none" else None,
                     "effective_gbps_bytes": total_bytes / request_s / 1e9,
                     "effective_with_decode_gbps_bytes":
                         total_bytes / (request_s + decode_s) / 1e9})  # fmt: skip
    return rows


def _parse_rates(text: str) -> list[float | None]:
    return [None if r == "unlimited" else float(r) for r in text.split(",")]


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("rate | codec | mode | payload MiB | request s | encode s | decode s | "
          "encode GB/s | decode GB/s | effective uncoded GB/s")  # fmt: skip
    for r in rows:
        enc = "-" if r["encode_gbps_bytes"] is None else f"{r['encode_gbps_bytes']:.2f}"
        dec = "-" if r["decode_gbps_bytes"] is None else f"{r['decode_gbps_bytes']:.2f}"
        print(f"{r['rate']} | {r['codec']} | {r['mode']} | {r['payload_bytes'] / MIB:.1f} | "
              f"{r['request_s']:.3f} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | {enc} | "
              f"{dec} | {r['effective_gbps_bytes']:.3f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen3-next-80b", help="a prfaas.models preset")
    p.add_argument("--tokens", type=int, default=4096, help="prompt tokens of the request")
    p.add_argument("--rates-gbps", default="0.1,1,2.5,10,unlimited")
    p.add_argument("--codecs", default="none,fp8,int4-rotated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both ends")
    p.add_argument("--no-serial", dest="serial", action="store_false",
                   help="skip the code-everything-then-send baseline")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--role", choices=["sender", "receiver"], help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--address", default="", help=argparse.SUPPRESS)
    p.add_argument("--link-gbps", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--standalone", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "sender":
        asyncio.run(_sender(args))
        return
    if args.role == "receiver":
        asyncio.run(_receiver(args))
        return
    layers = request_layers(load_model_spec(args.model), args.tokens)
    total_bytes, kv_bytes = uncoded_bytes(layers)
    del layers
    started = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "load_average": os.getloadavg(), "cpu": _cpu_model(),
               "torch": torch.__version__, "threads": args.threads, "model": args.model,
               "tokens": args.tokens, "uncoded_bytes": total_bytes,
               "uncoded_kv_bytes": kv_bytes}  # fmt: skip
    print(json.dumps(started), file=sys.stderr)
    results, rows = [], []
    for i, rate in enumerate(_parse_rates(args.rates_gbps)):
        label = "unlimited" if rate is None else f"{rate:g} Gbit/s"
        result = run_rate(args, rate, label, standalone=i == 0)
        results.append(result)
        rows += summarize(result, total_bytes, kv_bytes)
    out = {**started, "load_average_end": os.getloadavg(), "rows": rows, "results": results}
    for result in results:
        for row in result.get("standalone", []):
            print(f"standalone K: {row}")
    _print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
