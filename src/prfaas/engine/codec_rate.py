"""How fast this process codes a model's attention K/V: a codec's encode rate in uncoded bytes
per second, timed on a tensor of the model's own K shape and dtype.

A prefill instance measures it once at its start, on its engine thread (the thread, and torch's
intra-op threads, that code every offloaded request's K/V), and reports it in its stats; the
router's "auto" rule (`prfaas.policy.compression`) codes only where that rate keeps up with the
link. The tensor holds `MEASURE_TENSOR_BYTES` of random values (at least one token) in the
shape [1, kv_heads, tokens, head_dim] of the model's first full-attention or MLA K; the rate is
the median of `MEASURE_REPEATS` encodes after one warm-up (the rotation matrix, the allocator).
"""

from __future__ import annotations

import statistics
import time

import torch

from prfaas.engine.kv_codec import kv_codec

MEASURE_TENSOR_BYTES = 4 << 20
MEASURE_REPEATS = 3


def measure_tensor(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Random values in `shape` ([1, heads, tokens, dim]) with as many tokens as make about
    `MEASURE_TENSOR_BYTES` (at least one)."""
    batch, heads, _, dim = shape
    token_bytes = batch * heads * dim * dtype.itemsize
    num_tokens = max(1, MEASURE_TENSOR_BYTES // token_bytes)
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, heads, num_tokens, dim), generator=generator).to(dtype)


def encode_bytes_per_s(codec_name: str, tensor: torch.Tensor) -> float:
    """Uncoded bytes per second that codec `codec_name` encodes `tensor` at, on this thread."""
    codec = kv_codec(codec_name)
    codec.encode(tensor)  # warm-up
    times_s = []
    for _ in range(MEASURE_REPEATS):
        start = time.perf_counter()
        codec.encode(tensor)
        times_s.append(time.perf_counter() - start)
    num_bytes = tensor.numel() * tensor.element_size()
    return num_bytes / max(statistics.median(times_s), 1e-9)
