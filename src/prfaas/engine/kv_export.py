"""Export: a batch-1 cache's tensors as a manifest plus byte views, with no pickle anywhere.

Export (here), the receiver's checks (`kv_checks`) and import (`kv_import`) are the one place where
cache tensors become bytes and bytes become cache tensors.

Export walks each cache layer object generically: a tensor attribute becomes tensor `L{i}/{attr}`,
a dict of tensors (conv/recurrent states keyed by state index) becomes `L{i}/{attr}/{k}`, MiniMax's
cache-level `linear_cache[j]` becomes `L{j}/linear_cache`, and every JSON-able attribute (flags
such as `has_previous_state`, `cumulative_length`, `sliding_window`) travels in the layer's
`flags` (`kv_flags`). Tensors are laid out back to back in layer order; offsets are global within
the request's payload. Buffers are `memoryview`s over the tensors' own memory (a copy only when a
tensor is not contiguous, e.g. a sliding window's slice), valid until the request's state changes
or is freed.

Partial state: full-attention/MLA K/V (`is_prefix_attention`) hold every token from the start, so
an export may leave out their first `num_prefix_tokens` tokens when the receiver already holds
them (its prefix cache); the manifest says how many, and import puts the receiver's own prefix
tensors back in front. Every other tensor (linear, conv, SSM state, sliding windows) always
travels whole: it is the state at the full length.

Coded state: with a KV codec (`engine.kv_codec`, named in the manifest's `kv_codec`), every
attention K/V tensor ("keys"/"values": full-attention, MLA and sliding-window layers) travels as
the codec's payload, per tensor as its layer is exported, its entry keeping the tensor's dtype
and shape and giving the coded size. Recurrent and conv state travel exact under every codec.
"none" is the tensors' own bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prfaas.engine.kv_codec import KVCodec, kv_codec
from prfaas.engine.kv_flags import dtype_name, encode_flag, is_token_axis, sliding_window
from prfaas.engine.payload import collect_layers
from prfaas.engine.protocol import ExportedState, LayerState
from prfaas.messages import JSONDict, KVManifest, LayerEntry, TensorEntry
from prfaas.models.kv_codec import KV_CODEC_NONE
from prfaas.types import LayerKind

_SKIPPED_ATTRS = frozenset({"device", "_sliding_window_tensor"})  # rebuilt on import


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A flat byte view of a tensor's memory; copies only if the tensor is not contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)  # [num_elements]
    return flat.view(torch.uint8).numpy().data


def is_prefix_attention(flags: JSONDict, name: str) -> bool:
    """Whether tensor `name` ("L3/keys" or "keys") of a layer with these manifest `flags` is
    full-attention/MLA K/V [batch, heads, num_tokens, dim] holding every token since the start.

    Those are the tensors a prefix cache keeps per block and a partial export shortens; a sliding
    window's K/V (its flags carry `sliding_window`) is fixed-size state like a recurrent one.
    For flags of this engine's own cache (export, the prefix store); an import asks the receiver's
    `CacheTemplate` instead of the sender's flags.
    """
    return is_token_axis(name) and sliding_window(flags) is None


def _layer_parts(layer: Any) -> tuple[JSONDict, list[tuple[str, torch.Tensor]]]:
    """Split one cache layer object into JSON flags and named tensors."""
    attrs: JSONDict = {}
    slots: JSONDict = {}
    tensors: list[tuple[str, torch.Tensor]] = []
    for attr, value in vars(layer).items():
        if attr in _SKIPPED_ATTRS:
            continue
        if isinstance(value, torch.Tensor):
            tensors.append((attr, value))
        elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            slots[attr] = [[k, v is not None] for k, v in value.items()]
            tensors.extend((f"{attr}/{k}", v) for k, v in value.items() if v is not None)
        else:
            attrs[attr] = encode_flag(attr, value)
    return {"attrs": attrs, "tensor_slots": slots}, tensors


def _linear_cache_tensor(cache: Any, layer_index: int) -> torch.Tensor | None:
    linear_cache = getattr(cache, "linear_cache", None)
    if linear_cache is None or layer_index >= len(linear_cache):
        return None
    item = linear_cache[layer_index]
    return item if isinstance(item, torch.Tensor) else None


def _layer_object(cache: Any, layer_index: int) -> Any:
    """The cache's layer object; lazily built caches (MiniMax) may not have created it yet."""
    if layer_index < len(cache.layers):
        return cache.layers[layer_index]
    return cache.layer_class_to_replicate()


def layer_parts(
    cache: Any, layer_index: int
) -> tuple[str, JSONDict, list[tuple[str, torch.Tensor]]]:
    """Layer `layer_index` of a cache as export sees it: its class name, its manifest flags and
    its named tensors in payload order (names without the "L{i}/" prefix)."""
    layer = _layer_object(cache, layer_index)
    flags, named = _layer_parts(layer)
    linear = _linear_cache_tensor(cache, layer_index)
    if linear is not None:
        named.append(("linear_cache", linear))
    return type(layer).__name__, flags, named


def export_layer(
    cache: Any,
    layer_index: int,
    kind: LayerKind,
    offset_bytes: int,
    num_prefix_tokens: int = 0,
    kv_codec_name: str = KV_CODEC_NONE,
) -> LayerState:
    """Describe and expose layer `layer_index` of a batch-1 cache, starting at `offset_bytes`.

    With `num_prefix_tokens` p > 0, full-attention/MLA K/V are exported from token p on only
    (a copy of that slice); everything else whole. With a codec other than "none", its K/V are
    coded (`coded_kv`).
    """
    cls, flags, named = layer_parts(cache, layer_index)
    if num_prefix_tokens:
        named = [
            (name, tensor[:, :, num_prefix_tokens:] if is_prefix_attention(flags, name) else tensor)
            for name, tensor in named
        ]  # K/V: [batch, heads, num_tokens - p, dim]
    codec = coded_kv(kv_codec_name)
    return layer_state(layer_index, kind.value, cls, flags, named, offset_bytes, codec)


def coded_kv(name: str) -> KVCodec | None:
    """The codec an export applies to attention K/V ("keys"/"values" of full-attention, MLA and
    sliding-window layers); None for "none" (the tensors' own bytes). UserError naming the codecs
    for an unknown name."""
    codec = kv_codec(name)
    return None if codec.spec.is_identity else codec


def layer_state(
    layer_index: int,
    layer_kind: str,
    cache_class: str,
    flags: JSONDict,
    named: Sequence[tuple[str, torch.Tensor]],
    offset_bytes: int,
    codec: KVCodec | None = None,
) -> LayerState:
    """One layer's manifest entry and byte views from its named tensors, from `offset_bytes` on;
    K/V coded by `codec` when one is given (their entries keep the tensor's dtype and shape)."""
    entries: list[TensorEntry] = []
    buffers: list[memoryview] = []
    for name, tensor in named:
        if codec is not None and is_token_axis(name):
            buf = codec.encode(tensor).payload
        else:
            buf = tensor_bytes(tensor)
        entries.append(
            TensorEntry(
                name=f"L{layer_index}/{name}",
                layer_index=layer_index,
                dtype=dtype_name(tensor.dtype),
                shape=tuple(tensor.shape),
                offset_bytes=offset_bytes,
                num_bytes=buf.nbytes,
            )
        )
        buffers.append(buf)
        offset_bytes += buf.nbytes
    entry = LayerEntry(layer_index, layer_kind, cache_class, flags, tuple(entries))
    return LayerState(entry, buffers)


def cache_meta(cache: Any) -> JSONDict:
    """Cache-level metadata: cache class and, for MiniMax, which linear_cache slots hold state."""
    meta: JSONDict = {"cache_class": type(cache).__name__}
    linear_cache = getattr(cache, "linear_cache", None)
    if linear_cache is not None:
        meta["linear_cache_slots"] = [isinstance(x, torch.Tensor) for x in linear_cache]
    return meta


def export_state(
    cache: Any,
    kinds: Sequence[LayerKind],
    *,
    arch: str,
    req_id: str,
    transfer_id: str,
    num_computed_tokens: int,
    first_token_id: int | None,
    model_fingerprint: str = "",
    num_prefix_tokens: int = 0,
    kv_codec_name: str = KV_CODEC_NONE,
) -> ExportedState:
    """Manifest and buffers of a batch-1 cache, layer by layer; full-attention/MLA K/V from token
    `num_prefix_tokens` on (the receiver holds the tokens before), every K/V coded by the codec
    `kv_codec_name`."""
    layers, buffers = collect_layers(
        len(kinds),
        lambda i, offset: export_layer(
            cache, i, kinds[i], offset, num_prefix_tokens, kv_codec_name
        ),
    )
    manifest = KVManifest(
        transfer_id=transfer_id,
        req_id=req_id,
        arch=arch,
        num_layers=len(kinds),
        layers=tuple(layers),
        num_computed_tokens=num_computed_tokens,
        first_token_id=first_token_id,
        cache_meta=cache_meta(cache),
        model_fingerprint=model_fingerprint,
        num_prefix_tokens=num_prefix_tokens,
        kv_codec=kv_codec_name,
    )
    return ExportedState(manifest, buffers)
