"""Import: a received manifest and its bytes as the cache the receiving model builds itself.

Import rebuilds the cache the receiving model would build itself, checks the manifest against it
(`kv_checks`), and wraps the received bytes with `torch.frombuffer` at their offsets: no copy for
writable buffers, one copy for read-only ones (recurrent states are updated in place during
decode). No pickle anywhere.

Partial state: when the manifest leaves out the first `num_prefix_tokens` tokens of every
full-attention/MLA K/V (the receiver's prefix cache holds them), import puts the receiver's own
prefix tensors back in front; which tensors those are the receiver's `CacheTemplate` says.

Coded state: under a KV codec (the manifest's `kv_codec`), each attention K/V's entry gives the
coded size; import checks that size and decodes it into a new tensor. Recurrent and conv state
travel exact under every codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from prfaas.engine.kv_checks import CacheTemplate, check_manifest
from prfaas.engine.kv_codec import DEFAULT_ROTATION_SEED, KVCodec
from prfaas.engine.kv_export import coded_kv
from prfaas.engine.kv_flags import decode_flag, is_token_axis
from prfaas.engine.payload import PayloadBytes
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import KVManifest, LayerEntry, TensorEntry


class PayloadView(PayloadBytes):
    """Several bytes-like buffers seen as one address space [0, total), read as tensors."""

    def tensor(
        self, entry: TensorEntry, *, copy: bool, codec: KVCodec | None = None
    ) -> torch.Tensor:
        """The tensor of `entry`: its bytes in place (copied when `copy`, read-only or
        misaligned), or, for K/V under a `codec`, decoded into a new tensor."""
        dtype = getattr(torch, entry.dtype)
        raw = self.view(entry.offset_bytes, entry.num_bytes)
        if codec is not None and is_token_axis(entry.name):
            metadata = {"dtype": entry.dtype, "shape": list(entry.shape)}
            return codec.decode(raw, {**metadata, "rotation_seed": DEFAULT_ROTATION_SEED})
        if copy or raw.readonly or not _is_aligned(raw, dtype.itemsize):
            raw = memoryview(bytearray(raw))
        if raw.nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        flat = torch.frombuffer(raw, dtype=torch.uint8)  # [num_bytes]
        return flat.view(dtype).view(entry.shape)


def _is_aligned(view: memoryview, itemsize: int) -> bool:
    """Whether a writable view starts at a multiple of the element size."""
    if view.nbytes == 0:
        return True
    return int(torch.frombuffer(view, dtype=torch.uint8).data_ptr()) % itemsize == 0


def import_state(
    fresh_cache: Any,
    manifest: KVManifest,
    buffers: Sequence[Any],
    template: CacheTemplate,
    *,
    copy: bool = False,
    prefix_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    """Fill `fresh_cache` (built by the receiving model) with the manifest's state; return it.

    When the manifest leaves out `num_prefix_tokens` p > 0 tokens of every full-attention/MLA
    K/V, `prefix_tensors` must give each such tensor's first p tokens (by manifest name,
    [1, heads, p, dim]); they are put in front of the received tokens.
    """
    check_manifest(manifest, template)
    payload = PayloadView(buffers)
    codec = coded_kv(manifest.kv_codec)
    _ensure_layers(fresh_cache, manifest)
    for entry in manifest.layers:
        tensors = {}
        for t in entry.tensors:
            tensor = payload.tensor(t, copy=copy, codec=codec)
            if manifest.num_prefix_tokens and template.keeps_every_token(t.name):
                tensor = _behind_prefix(t.name, tensor, manifest.num_prefix_tokens, prefix_tensors)
            tensors[t.name.split("/", 1)[1]] = tensor
        _restore_layer(fresh_cache, entry, tensors)
    return fresh_cache


def _behind_prefix(
    name: str,
    received: torch.Tensor,
    num_prefix_tokens: int,
    prefix_tensors: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    """The receiver's prefix [1, heads, p, dim] followed by the received tokens, on one axis."""
    prefix = None if prefix_tensors is None else prefix_tensors.get(name)
    if prefix is None:
        raise ManifestMismatch(
            f"{name}: the manifest leaves out {num_prefix_tokens} prefix tokens and no local "
            "prefix was given for it"
        )
    expected = (*received.shape[:2], num_prefix_tokens, *received.shape[3:])
    if tuple(prefix.shape) != expected or prefix.dtype != received.dtype:
        raise ManifestMismatch(
            f"{name}: local prefix is {prefix.dtype} {tuple(prefix.shape)}, expected "
            f"{received.dtype} {expected}"
        )
    return torch.cat([prefix, received], dim=-2)  # [1, heads, p + carried, dim]


def _ensure_layers(cache: Any, manifest: KVManifest) -> None:
    """Lazily built caches (MiniMax) start empty: create the sender's layer objects."""
    from transformers import cache_utils

    while len(cache.layers) < manifest.num_layers:
        cls_name = manifest.layers[len(cache.layers)].cache_class
        cache.layers.append(getattr(cache_utils, cls_name)())
    slots = manifest.cache_meta.get("linear_cache_slots")
    if slots is not None:
        cache.linear_cache = [[] for _ in slots]


def _restore_layer(cache: Any, entry: LayerEntry, tensors: dict[str, torch.Tensor]) -> None:
    layer = cache.layers[entry.layer_index]
    for attr, value in entry.flags.get("attrs", {}).items():
        setattr(layer, attr, decode_flag(value))
    for attr, slots in entry.flags.get("tensor_slots", {}).items():
        setattr(
            layer, attr, {int(k): tensors.get(f"{attr}/{k}") if ok else None for k, ok in slots}
        )
    for name, tensor in tensors.items():
        if name == "linear_cache":
            cache.linear_cache[entry.layer_index] = tensor
        elif "/" not in name:
            setattr(layer, name, tensor)
    first = next(iter(tensors.values()), None)
    if first is not None and hasattr(layer, "device"):
        layer.device = first.device
    if hasattr(layer, "_sliding_window_tensor"):
        layer._sliding_window_tensor = torch.tensor(layer.sliding_window, dtype=torch.long)
