"""Layer-wise streaming benchmark: how much of the KV transfer is exposed after prefill ends.

A producer runs on its own thread and fires a layer callback with each layer's LayerEntry and
buffers as soon as that layer is final; the callback hands the layer to KVTransfer.send_layer on
the event loop (`asyncio.run_coroutine_threadsafe`); the link is an in-process ShapedProxy at
--rate-gbps. Two producers:

* `--engine PRESET` (the real thing): `prfaas.engine.Engine.prefill(..., on_layer=cb)` on a tiny
  preset with a --tokens prompt; the transfer finishes with the engine's exported manifest.
* otherwise `SleepingProducer`, a stand-in that "computes" each layer of a synthetic tiny-hybrid
  layout for --layer-compute-ms (a sleep, which like a torch forward releases the GIL).

Reported: exposed_s = t(transfer ACKed) - t(last layer computed); last_layer_send_s = last layer
bytes / rate; exposed_fraction = exposed_s / last_layer_send_s; and backlog_bound_s, the exposure
no transport can beat on that link (a fluid link sending every byte as soon as its layer exists).

    PYTHONPATH=src python scripts/bench_transport_pipeline.py --rate-gbps 1 --json
    PYTHONPATH=src python scripts/bench_transport_pipeline.py --engine qwen3_next --tokens 4096 \
        --rate-gbps 0.05 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from prfaas.bench.shaper import LinkShape, ShapedProxy
from prfaas.bench.transport import filled_buffer
from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.transport.config import TransportConfig
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender

LayerCallback = Callable[[LayerEntry, list[memoryview]], None]


def tiny_hybrid_manifest(num_tokens: int, num_layers: int = 8) -> KVManifest:
    """Linear-attention layers (fixed fp32 recurrent + conv state) alternating with full-attention
    layers (bf16 K and V: 2 KV heads x head_dim 64 per token), like a tiny Qwen3-Next."""
    recurrent_bytes, conv_bytes = 4 * 64 * 64 * 4, 3 * 512 * 2
    kv_bytes = num_tokens * 2 * 64 * 2
    layers, offset = [], 0
    for i in range(num_layers):
        is_attn = i % 2 == 1
        parts = (("keys", kv_bytes), ("values", kv_bytes)) if is_attn else (
            ("conv_states/0", conv_bytes), ("recurrent_states/0", recurrent_bytes))  # fmt: skip
        tensors = []
        for name, n in parts:
            tensors.append(TensorEntry(f"L{i}/{name}", i, "bfloat16", (n // 2,), offset, n))
            offset += n
        kind = "full_attention" if is_attn else "linear_attention"
        layers.append(LayerEntry(i, kind, "bench", {}, tuple(tensors)))
    return KVManifest("pipe", "pipe", "tiny-hybrid", num_layers, tuple(layers), num_tokens, 0)


class Producer(Protocol):
    layer_ready_at: list[float]  # perf_counter when each layer's callback fired
    layer_bytes: list[int]  # payload bytes of each layer, in order

    def run(self, on_layer: LayerCallback) -> KVManifest:
        """Produce every layer, calling `on_layer` on this thread; return the final manifest."""
        ...


class SleepingProducer:
    """Stand-in engine: per layer, compute for `layer_compute_s`, then call the layer callback."""

    def __init__(self, manifest: KVManifest, layer_compute_s: float) -> None:
        self.manifest, self._compute_s = manifest, layer_compute_s
        self._payload = memoryview(filled_buffer(manifest.total_bytes))
        self.layer_ready_at: list[float] = []
        self.layer_bytes: list[int] = []

    def run(self, on_layer: LayerCallback) -> KVManifest:
        for layer in self.manifest.layers:
            time.sleep(self._compute_s)
            views = [
                self._payload[t.offset_bytes : t.offset_bytes + t.num_bytes] for t in layer.tensors
            ]
            self.layer_ready_at.append(time.perf_counter())
            self.layer_bytes.append(layer.num_bytes)
            on_layer(layer, views)
        return self.manifest


class EngineProducer:
    """The real engine: one prefill of `prompt` whose per-layer callback feeds the transport."""

    def __init__(self, loaded: Any, prompt: tuple[int, ...], req_id: str) -> None:
        from prfaas.engine import Engine
        from prfaas.messages import GenerateRequest, SamplingParams

        self._engine = Engine(loaded)
        self._request = GenerateRequest(req_id, prompt, SamplingParams(max_tokens=1))
        self.layer_ready_at: list[float] = []
        self.layer_bytes: list[int] = []

    def run(self, on_layer: LayerCallback) -> KVManifest:
        def callback(_req_id: str, state: Any) -> None:  # engine LayerState
            self.layer_ready_at.append(time.perf_counter())
            self.layer_bytes.append(state.entry.num_bytes)
            on_layer(state.entry, state.buffers)

        self._engine.prefill([self._request], on_layer=callback)
        return self._engine.export(self._request.req_id, transfer_id="pipe").manifest


async def measure(
    args: argparse.Namespace, make_producer: Callable[[], Producer]
) -> dict[str, Any]:
    rate_bytes_per_s = args.rate_gbps * 1e9 / 8
    cfg = TransportConfig(token="pipe", num_connections=args.connections, deadline_s=600)
    loop = asyncio.get_running_loop()
    async with KVReceiver(cfg) as rx:
        host, port = rx.address.split(":")
        shape = LinkShape(rate_bytes_per_s=rate_bytes_per_s)
        async with ShapedProxy(host, int(port), shape) as proxy, KVSender(cfg) as tx:
            await tx.connect(proxy.address)
            producer = make_producer()
            t = await tx.begin(proxy.address, "pipe", "pipe")

            def on_layer(entry: LayerEntry, views: list[memoryview]) -> None:
                asyncio.run_coroutine_threadsafe(t.send_layer(entry, views), loop).result()

            started_at = time.perf_counter()
            manifest = await asyncio.to_thread(producer.run, on_layer)
            ack = await t.finish(manifest)
            done_at = time.perf_counter()
            (await rx.get()).release()
    assert ack.ok, ack.error
    last_layer_at = producer.layer_ready_at[-1]
    last_bytes = producer.layer_bytes[-1]
    compute_s = last_layer_at - started_at
    # fluid bound: a link of this rate that sends each byte as soon as its layer exists
    ideal_done_at = max(
        ready_at + sum(producer.layer_bytes[i:]) / rate_bytes_per_s
        for i, ready_at in enumerate(producer.layer_ready_at)
    )
    bound_s = ideal_done_at - last_layer_at
    exposed_s = done_at - last_layer_at
    return {
        "total_bytes": manifest.total_bytes,
        "layer_bytes": producer.layer_bytes,
        "last_layer_bytes": last_bytes,
        "rate_gbps": args.rate_gbps,
        "production_gbps": manifest.total_bytes * 8 / compute_s / 1e9,
        "compute_s": compute_s,
        "exposed_s": exposed_s,
        "last_layer_send_s": last_bytes / rate_bytes_per_s,
        "exposed_fraction": exposed_s / (last_bytes / rate_bytes_per_s),
        "backlog_bound_s": bound_s,
        "exposed_over_bound": exposed_s / bound_s,
    }


def producer_factory(args: argparse.Namespace) -> Callable[[], Producer]:
    if args.engine is None:
        manifest = tiny_hybrid_manifest(args.tokens)
        return lambda: SleepingProducer(manifest, args.layer_compute_ms / 1000)
    from prfaas.engine import Engine, load_model
    from prfaas.messages import GenerateRequest, SamplingParams

    loaded = load_model(args.engine, args.dtype, seed=0)
    prompt = tuple((i * 7919) % 256 for i in range(args.tokens))
    warm = GenerateRequest("warm", prompt, SamplingParams(max_tokens=1))
    Engine(loaded).prefill([warm])  # first-call allocations stay out of the timed runs
    return lambda: EngineProducer(loaded, prompt, "pipe")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", default=None, help="tiny preset: stream the real engine's prefill")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="with --engine")
    p.add_argument("--tokens", type=int, default=32768, help="prompt tokens (sets KV size)")
    p.add_argument(
        "--layer-compute-ms", type=float, default=40.0, help="stand-in compute time per layer"
    )
    p.add_argument("--rate-gbps", type=float, default=1.0, help="shaped link rate")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    make_producer = producer_factory(args)
    runs = [asyncio.run(measure(args, make_producer)) for _ in range(args.repeats)]
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        for r in runs:
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
