"""The emulated engine's payloads: how many bytes each layer's state has at a length (the model's
KV and state sizes, optionally scaled down for a testbed's link), and their synthetic, checkable
content: every tensor repeats an 8-byte pattern of (seed, req_id, tensor name), compared a
mebibyte at a time on import. Plain bytes, no torch: emulated deployments run on the base
install. `EmulatedPayload` builds a request's layer states and checks a received payload against
the patterns and the sizes this model's own spec gives the manifest's tokens (never the sender's
layer kinds): every token after a left-out prefix on full-attention/MLA layers, a window's last
tokens on sliding-window layers. Under a KV codec (the manifest's `kv_codec`) the attention part
of a layer ("kv") has the coded size `prfaas.models` gives (`kv_bytes_per_token(kv_codec=...)`),
so the link carries what a coded payload would; recurrent and conv state keep their size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from prfaas.engine.payload import PayloadBytes, collect_layers
from prfaas.engine.protocol import Buffers, LayerState
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.models import LayerSpec, ModelSpec
from prfaas.models.kv_codec import KV_CODEC_NONE

_PATTERN_BYTES = 8
_COMPARE_CHUNK_BYTES = 1 << 20  # a multiple of the pattern: every chunk starts in phase


@dataclass(frozen=True)
class EmulatedPayload:
    """The synthetic state of one emulated model: sizes per layer, content per request."""

    spec: ModelSpec
    kv_dtype: str
    seed: int
    payload_scale: float

    def tensor_sizes(
        self,
        layer: LayerSpec,
        num_tokens: int,
        num_prefix_tokens: int = 0,
        kv_codec: str = KV_CODEC_NONE,
    ) -> list[tuple[str, int]]:
        return layer_tensor_sizes(
            layer,
            num_tokens,
            self.kv_dtype,
            self.spec.recurrent_state_dtype,
            self.spec.activation_dtype,
            num_prefix_tokens,
            self.payload_scale,
            kv_codec,
        )

    def layer_state(
        self,
        req_id: str,
        layer: LayerSpec,
        num_tokens: int,
        offset: int,
        num_prefix_tokens: int,
        kv_codec: str = KV_CODEC_NONE,
    ) -> LayerState:
        """One layer's state of request `req_id` at `num_tokens`, at payload offset `offset`,
        its attention part of the size the codec `kv_codec` gives it."""
        entries, buffers = [], []
        for suffix, size in self.tensor_sizes(layer, num_tokens, num_prefix_tokens, kv_codec):
            name = f"L{layer.index}/{suffix}"
            entries.append(TensorEntry(name, layer.index, "uint8", (size,), offset, size))
            buffers.append(memoryview(pattern_bytes(self.seed, req_id, name, size)))
            offset += size
        entry = LayerEntry(layer.index, layer.kind.value, "EmulatedLayer", {}, tuple(entries))
        return LayerState(entry, buffers)

    def layers(
        self,
        req_id: str,
        num_tokens: int,
        num_prefix_tokens: int = 0,
        kv_codec: str = KV_CODEC_NONE,
    ) -> tuple[tuple[LayerEntry, ...], list[memoryview]]:
        """Every layer's entry and the buffers of the whole payload, in order."""
        layers = self.spec.layers
        entries, buffers = collect_layers(
            len(layers),
            lambda i, offset: self.layer_state(
                req_id, layers[i], num_tokens, offset, num_prefix_tokens, kv_codec
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
        payload = PayloadBytes(buffers)
        seed = int(manifest.cache_meta.get("seed", self.seed))
        for layer, entry in zip(self.spec.layers, manifest.layers, strict=True):
            self._check_sizes(layer, entry, manifest)
            for t in entry.tensors:
                got = payload.view(t.offset_bytes, t.num_bytes)
                if not is_pattern(got, pattern_key(seed, manifest.req_id, t.name)):
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
            for suffix, size in self.tensor_sizes(layer, num_tokens, num_prefix, manifest.kv_codec)
        ]
        got = [(t.name, t.num_bytes) for t in entry.tensors]
        if got == expected:
            return
        left_out = f" ({num_prefix} left to the receiver's prefix)" if num_prefix else ""
        coded = "" if manifest.kv_codec == KV_CODEC_NONE else f", K/V coded {manifest.kv_codec}"
        raise ManifestMismatch(
            f"layer {layer.index}: tensors {got}, expected {expected} for {num_tokens} computed "
            f"tokens{left_out}{coded}"
        )


def layer_tensor_sizes(
    layer: LayerSpec,
    num_tokens: int,
    kv_dtype: str,
    state_dtype: str,
    conv_dtype: str,
    num_prefix_tokens: int = 0,
    payload_scale: float = 1.0,
    kv_codec: str = KV_CODEC_NONE,
) -> list[tuple[str, int]]:
    """(name suffix, bytes) of one layer's state at num_tokens, zero-sized parts left out; the
    full-attention KV of the first `num_prefix_tokens` tokens is left out (the receiver has it),
    and the KV (full, MLA and sliding window) is of the size the codec `kv_codec` gives it.

    `payload_scale` in (0, 1] shrinks every part to `max(1, round(bytes x scale))` (a testbed's
    scaled link); at 1.0 the sizes are the model's exactly."""
    if not 0 < payload_scale <= 1:
        raise ValueError(f"payload_scale must be in (0, 1], got {payload_scale}")
    kv = layer.kv_bytes_per_token(kv_dtype, kv_codec) * (num_tokens - num_prefix_tokens)
    kv += layer.window_bytes_per_token(kv_dtype, kv_codec) * min(num_tokens, layer.window)
    parts = [
        ("kv", kv),
        ("recurrent_states/0", layer.recurrent_state_bytes(state_dtype)),
        ("conv_states/0", layer.conv_state_bytes(conv_dtype)),
    ]
    return [(name, scaled_size(size, payload_scale)) for name, size in parts if size > 0]


def scaled_size(num_bytes: int, payload_scale: float) -> int:
    """A part's size under payload scaling: never rounded away to nothing."""
    return num_bytes if payload_scale == 1.0 else max(1, round(num_bytes * payload_scale))


def pattern_key(seed: int, req_id: str, name: str) -> bytes:
    """The 8 bytes one tensor's content repeats: a hash of (seed, req_id, tensor name)."""
    return hashlib.blake2b(f"{seed}|{req_id}|{name}".encode(), digest_size=_PATTERN_BYTES).digest()


def pattern_bytes(seed: int, req_id: str, name: str, num_bytes: int) -> bytes:
    """The synthetic content of one tensor: its pattern key repeated to `num_bytes`."""
    key = pattern_key(seed, req_id, name)
    return key * (num_bytes // _PATTERN_BYTES) + key[: num_bytes % _PATTERN_BYTES]


def is_pattern(got: memoryview, key: bytes) -> bool:
    """Whether `got` is `key` repeated from its first byte, compared a chunk at a time (one
    chunk-sized copy at most: bytes comparison is a memcmp, memoryview comparison is not)."""
    chunk = key * (min(got.nbytes, _COMPARE_CHUNK_BYTES) // _PATTERN_BYTES + 1)
    for start in range(0, got.nbytes, _COMPARE_CHUNK_BYTES):
        part = got[start : start + _COMPARE_CHUNK_BYTES]
        if part.tobytes() != chunk[: part.nbytes]:
            return False
    return True
