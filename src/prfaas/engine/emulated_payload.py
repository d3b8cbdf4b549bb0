"""The emulated engine's payloads: how many bytes each layer's state has at a length (the model's
KV and state sizes, optionally scaled down for a testbed's link), and their synthetic, checkable
content: every tensor repeats an 8-byte pattern of (seed, req_id, tensor name), compared 8 bytes
at a time on import.
"""

from __future__ import annotations

import hashlib

import torch

from prfaas.models import LayerSpec

_PATTERN_BYTES = 8


def layer_tensor_sizes(
    layer: LayerSpec,
    num_tokens: int,
    kv_dtype: str,
    state_dtype: str,
    conv_dtype: str,
    num_prefix_tokens: int = 0,
    payload_scale: float = 1.0,
) -> list[tuple[str, int]]:
    """(name suffix, bytes) of one layer's state at num_tokens, zero-sized parts left out; the
    full-attention KV of the first `num_prefix_tokens` tokens is left out (the receiver has it).

    `payload_scale` in (0, 1] shrinks every part to `max(1, round(bytes x scale))` (a testbed's
    scaled link); at 1.0 the sizes are the model's exactly."""
    if not 0 < payload_scale <= 1:
        raise ValueError(f"payload_scale must be in (0, 1], got {payload_scale}")
    kv = layer.kv_bytes_per_token(kv_dtype) * (num_tokens - num_prefix_tokens)
    kv += layer.window_bytes_per_token(kv_dtype) * min(num_tokens, layer.window)
    parts = [
        ("kv", kv),
        ("recurrent_states/0", layer.recurrent_state_bytes(state_dtype)),
        ("conv_states/0", layer.conv_state_bytes(conv_dtype)),
    ]
    return [(name, scaled_size(size, payload_scale)) for name, size in parts if size > 0]


def scaled_size(num_bytes: int, payload_scale: float) -> int:
    """A part's size under payload scaling: never rounded away to nothing."""
    return num_bytes if payload_scale == 1.0 else max(1, round(num_bytes * payload_scale))


def pattern_tensor(seed: int, req_id: str, name: str, num_bytes: int) -> torch.Tensor:
    """The synthetic content of one tensor: an 8-byte pattern of (seed, req_id, name), repeated."""
    key = hashlib.blake2b(f"{seed}|{req_id}|{name}".encode(), digest_size=_PATTERN_BYTES).digest()
    word = int.from_bytes(key, "little", signed=True)
    num_words = num_bytes // _PATTERN_BYTES + 1
    words = torch.full((num_words,), word, dtype=torch.int64)  # [num_words], memset speed
    return words.view(torch.uint8)[:num_bytes]  # [num_bytes]


def bytes_equal(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equality of two uint8 tensors, compared 8 bytes at a time where both are aligned."""
    if got.numel() != want.numel():
        return False
    head = got.numel() // _PATTERN_BYTES * _PATTERN_BYTES
    is_aligned = got.data_ptr() % _PATTERN_BYTES == 0 and want.data_ptr() % _PATTERN_BYTES == 0
    if not is_aligned or head == 0:
        return torch.equal(got, want)
    words_equal = torch.equal(got[:head].view(torch.int64), want[:head].view(torch.int64))
    return words_equal and torch.equal(got[head:], want[head:])
