"""Layer-wise streaming benchmark: how much of the KV transfer is exposed after prefill ends.

A producer thread stands in for the engine: it "computes" one layer at a time (a sleep of
--layer-compute-ms, which like a torch forward releases the GIL) and fires a layer callback with
that layer's LayerEntry and buffers, exactly as the engine's per-layer callback will. The callback
hands the layer to KVTransfer.send_layer on the event loop; the link is an in-process ShapedProxy
at --rate-gbps. Plug the real engine in by replacing `SleepingProducer` with anything that calls
`on_layer(entry, views)` from its compute thread.

Reported: exposed_s = t(transfer ACKed) - t(last layer computed); last_layer_send_s = last layer
bytes / rate; exposed_fraction = exposed_s / last_layer_send_s; and backlog_bound_s, the exposure
no transport can beat on that link (a fluid link sending every byte as soon as its layer exists).

    PYTHONPATH=src python scripts/bench_transport_pipeline.py --rate-gbps 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable

from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.transport.bench import filled_buffer
from prfaas.transport.config import TransportConfig
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender
from prfaas.transport.shaper import LinkShape, ShapedProxy

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


class SleepingProducer:
    """Stand-in engine: per layer, compute for `layer_compute_s`, then call the layer callback."""

    def __init__(self, manifest: KVManifest, payload: bytearray, layer_compute_s: float) -> None:
        self.manifest, self._payload, self._compute_s = (
            manifest,
            memoryview(payload),
            layer_compute_s,
        )
        self.last_layer_at = 0.0
        self.layer_ready_at: list[float] = []  # perf_counter when each layer's callback fired

    def run(self, on_layer: LayerCallback) -> None:
        for layer in self.manifest.layers:
            time.sleep(self._compute_s)
            views = [
                self._payload[t.offset_bytes : t.offset_bytes + t.num_bytes] for t in layer.tensors
            ]
            self.last_layer_at = time.perf_counter()
            self.layer_ready_at.append(self.last_layer_at)
            on_layer(layer, views)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    manifest = tiny_hybrid_manifest(args.tokens)
    payload = filled_buffer(manifest.total_bytes)
    rate_bytes_per_s = args.rate_gbps * 1e9 / 8
    cfg = TransportConfig(token="pipe", num_connections=args.connections, deadline_s=600)
    loop = asyncio.get_running_loop()
    async with KVReceiver(cfg) as rx:
        host, port = rx.address.split(":")
        shape = LinkShape(rate_bytes_per_s=rate_bytes_per_s)
        async with ShapedProxy(host, int(port), shape) as proxy, KVSender(cfg) as tx:
            await tx.connect(proxy.address)
            producer = SleepingProducer(manifest, payload, args.layer_compute_ms / 1000)
            t = await tx.begin(proxy.address, manifest.transfer_id, manifest.req_id)

            def on_layer(entry: LayerEntry, views: list[memoryview]) -> None:
                asyncio.run_coroutine_threadsafe(t.send_layer(entry, views), loop).result()

            started_at = time.perf_counter()
            worker = threading.Thread(target=producer.run, args=(on_layer,))
            worker.start()
            await asyncio.to_thread(worker.join)
            ack = await t.finish(manifest)
            done_at = time.perf_counter()
            (await rx.get()).release()
    assert ack.ok, ack.error
    last_bytes = manifest.layers[-1].num_bytes
    compute_s = producer.last_layer_at - started_at
    # fluid bound: a link of this rate that sends each byte as soon as its layer exists
    ideal_done_at = max(
        ready_at + sum(x.num_bytes for x in manifest.layers[i:]) / rate_bytes_per_s
        for i, ready_at in enumerate(producer.layer_ready_at)
    )
    bound_s = ideal_done_at - producer.last_layer_at
    exposed_s = done_at - producer.last_layer_at
    return {
        "total_bytes": manifest.total_bytes,
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768, help="prompt tokens (sets KV size)")
    p.add_argument("--layer-compute-ms", type=float, default=40.0, help="compute time per layer")
    p.add_argument("--rate-gbps", type=float, default=1.0, help="shaped link rate")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    runs = [asyncio.run(measure(args)) for _ in range(args.repeats)]
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        for r in runs:
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
