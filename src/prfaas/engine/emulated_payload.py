"""The emulated engine's payloads: how many bytes each layer's state has at a length (the model's
KV and state sizes, optionally scaled down for a testbed's link), and their synthetic, checkable
content: every tensor repeats an 8-byte pattern of (seed, req_id, tensor name), compared 8 bytes
at a time on import. `EmulatedPayload` builds a request's layer states and checks a received
payload against the patterns and the sizes this model's own spec gives the manifest's tokens
(never the sender's layer kinds): every token after a left-out prefix on full-attention/MLA
layers, a window's last tokens on sliding-window layers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from prfaas.engine.kv_state import PayloadView, collect_layers
from prfaas.engine.protocol import Buffers, LayerState
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.models import LayerSpec, ModelSpec

_PATTERN_BYTES = 8


@dataclass(frozen=True)
class EmulatedPayload:
    """The synthetic state of one emulated model: sizes per layer, content per request."""

    spec: ModelSpec
    kv_dtype: str
    seed: int
    payload_scale: float

    def tensor_sizes(
        self, layer: LayerSpec, num_tokens: int, num_prefix_tokens: int = 0
    ) -> list[tuple[str, int]]:
        return layer_tensor_sizes(
            layer,
            num_tokens,
            self.kv_dtype,
            self.spec.recurrent_state_dtype,
            self.spec.activation_dtype,
            num_prefix_tokens,
            self.payload_scale,
        )

    def layer_state(
        self, req_id: str, layer: LayerSpec, num_tokens: int, offset: int, num_prefix_tokens: int
    ) -> LayerState:
        """One layer's state of request `req_id` at `num_tokens`, at payload offset `offset`."""
        entries, buffers = [], []
        for suffix, size in self.tensor_sizes(layer, num_tokens, num_prefix_tokens):
            name = f"L{layer.index}/{suffix}"
            entries.append(TensorEntry(name, layer.index, "uint8", (size,), offset, size))
            buffers.append(pattern_tensor(self.seed, req_id, name, size).numpy().data)
            offset += size
        entry = LayerEntry(layer.index, layer.kind.value, "EmulatedLayer", {}, tuple(entries))
        return LayerState(entry, buffers)

    def layers(
        self, req_id: str, num_tokens: int, num_prefix_tokens: int = 0
    ) -> tuple[tuple[LayerEntry, ...], list[memoryview]]:
        """Every layer's entry and the buffers of the whole payload, in order."""
        layers = self.spec.layers
        entries, buffers = collect_layers(
            len(layers),
            lambda i, offset: self.layer_state(
                req_id, layers[i], num_tokens, offset, num_prefix_tokens
            ),
        )
        return tuple(entries), buffers

    def check(self, manifest: KVManifest, buffers: Buffers) -> None:
        """Raise ManifestMismatch unless every layer holds the model's tensors at the manifest's
        length and every byte is the sender's pattern (the seed in `cache_meta`)."""
        if len(manifest.layers) != len(self.spec.layers):
            raise ManifestMismatch(
                f"manifest has {len(manifest.layers)} layer entries, this model has "
                f"{len(self.spec.layers)} layers"
            )
        payload = PayloadView(buffers)
        seed = int(manifest.cache_meta.get("seed", self.seed))
        for layer, entry in zip(self.spec.layers, manifest.layers, strict=True):
            self._check_sizes(layer, entry, manifest)
            for t in entry.tensors:
                want = pattern_tensor(seed, manifest.req_id, t.name, t.num_bytes)
                if not bytes_equal(payload.tensor(t, copy=False), want):
                    raise ManifestMismatch(f"{t.name}: payload bytes differ from what was sent")

    def _check_sizes(self, layer: LayerSpec, entry: LayerEntry, manifest: KVManifest) -> None:
        """Layer `layer` of this model, with exactly the bytes its own spec gives the manifest's
        tokens: full-attention/MLA KV of the tokens after the left-out prefix, a sliding
        window's last `min(computed, window)` tokens, the fixed-size states."""
        if entry.layer_index != layer.index:
            raise ManifestMismatch(
                f"the manifest's entry for layer {layer.index} says layer {entry.layer_index}"
            )
        num_tokens, num_prefix = manifest.num_computed_tokens, manifest.num_prefix_tokens
        expected = [
            (f"L{layer.index}/{suffix}", size)
            for suffix, size in self.tensor_sizes(layer, num_tokens, num_prefix)
        ]
        got = [(t.name, t.num_bytes) for t in entry.tensors]
        if got == expected:
            return
        left_out = f" ({num_prefix} left to the receiver's prefix)" if num_prefix else ""
        raise ManifestMismatch(
            f"layer {layer.index}: tensors {got}, expected {expected} for {num_tokens} computed "
            f"tokens{left_out}"
        )


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
