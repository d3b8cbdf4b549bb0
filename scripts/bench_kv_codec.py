"""KV codec throughput on this CPU, one thread: encode and decode GB/s of `prfaas.engine.kv_codec`
on one layer's K (or V) of one request, side by side with a plain copy of the same bytes.

Usage:
    PYTHONPATH=src .venv/bin/python scripts/bench_kv_codec.py [--tokens 4096] [--repeats 5]
        [--json out.json]

GB/s counts the uncoded tensor's bytes (1 GB = 1e9 bytes) over the best of --repeats runs: for
encode, the bytes read; for decode, the bytes rebuilt. The copy column is `torch.Tensor.copy_` of
the uncoded bytes into a preallocated tensor, the least any stage that touches every byte costs.
Shapes: [1, kv_heads, tokens, head_dim] in bfloat16, as the engine's caches hold them.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from prfaas.engine.kv_codec import kv_codec

SHAPES = {  # name -> (kv_heads, head_dim)
    "qwen3_next full attention (2 x 256)": (2, 256),
    "llama-3.1-70b (8 x 128)": (8, 128),
    "MLA latent + rope (1 x 576)": (1, 576),
}
CODECS = ("none", "fp8", "int4-rotated")


def _best_s(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: caches, the rotation matrix
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _bench_shape(kv_heads: int, head_dim: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, kv_heads, tokens, head_dim)
    tensor = torch.randn(shape, generator=generator).to(torch.bfloat16)
    num_bytes = tensor.numel() * tensor.element_size()
    target = torch.empty_like(tensor)
    copy_s = _best_s(lambda: target.copy_(tensor), repeats)
    rows = []
    for name in CODECS:
        codec = kv_codec(name)
        coded = codec.encode(tensor)
        encode_s = _best_s(functools.partial(codec.encode, tensor), repeats)
        decode_s = _best_s(functools.partial(codec.decode, coded.payload, coded.metadata), repeats)
        rows.append(
            {
                "codec": name,
                "tensor_bytes": num_bytes,
                "payload_bytes": len(coded.payload),
                "encode_gbps_bytes": num_bytes / encode_s / 1e9,
                "decode_gbps_bytes": num_bytes / decode_s / 1e9,
                "copy_gbps_bytes": num_bytes / copy_s / 1e9,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of the K tensor")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = _cpu_model()
    print(f"CPU {cpu}, torch {torch.__version__}, 1 thread, {args.tokens} tokens, bfloat16")
    print("shape | codec | tensor MiB | payload MiB | encode GB/s | decode GB/s | copy GB/s")
    results = []
    for label, (kv_heads, head_dim) in SHAPES.items():
        for row in _bench_shape(kv_heads, head_dim, args.tokens, args.repeats):
            row["shape"] = label
            results.append(row)
            print(
                f"{label} | {row['codec']} | {row['tensor_bytes'] / 2**20:.2f} | "
                f"{row['payload_bytes'] / 2**20:.2f} | {row['encode_gbps_bytes']:.2f} | "
                f"{row['decode_gbps_bytes']:.2f} | {row['copy_gbps_bytes']:.2f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cpu": cpu, "tokens": args.tokens, "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
