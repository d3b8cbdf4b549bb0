"""The one place where cache tensors become bytes and bytes become cache tensors.

Export walks each cache layer object generically: a tensor attribute becomes tensor `L{i}/{attr}`,
a dict of tensors (conv/recurrent states keyed by state index) becomes `L{i}/{attr}/{k}`, MiniMax's
cache-level `linear_cache[j]` becomes `L{j}/linear_cache`, and every JSON-able attribute (flags
such as `has_previous_state`, `cumulative_length`, `sliding_window`) travels in the layer's
`flags`. Tensors are laid out back to back in layer order; offsets are global within the request's
payload. Buffers are `memoryview`s over the tensors' own memory (a copy only when a tensor is not
contiguous, e.g. a sliding window's slice), valid until the request's state changes or is freed.

Import rebuilds the cache the receiving model would build itself, checks the manifest against it
(architecture, layer count, layer classes and indices, tensor names, dtypes and shapes, sliding
windows, and the exact tokens every K/V holds), and wraps the received bytes with
`torch.frombuffer` at their offsets: no copy for writable buffers, one copy for read-only ones
(recurrent states are updated in place during decode). No pickle anywhere.

Partial state: full-attention/MLA K/V (`is_prefix_attention`) hold every token from the start, so
an export may leave out their first `num_prefix_tokens` tokens when the receiver already holds
them (its prefix cache); the manifest says how many, and import puts the receiver's own prefix
tensors back in front. Every other tensor (linear, conv, SSM state, sliding windows) always
travels whole: it is the state at the full length. Which layers keep every token, and how long a
window is, the receiver reads from its own cache (`CacheTemplate`), never from the sender's flags.

Coded state: with a KV codec (`engine.kv_codec`, named in the manifest's `kv_codec`), every
attention K/V tensor ("keys"/"values": full-attention, MLA and sliding-window layers) travels as
the codec's payload, per tensor as its layer is exported, its entry keeping the tensor's dtype
and shape and giving the coded size; import checks that size and decodes it into a new tensor.
Recurrent and conv state travel exact under every codec. "none" is the tensors' own bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prfaas.engine.kv_codec import DEFAULT_ROTATION_SEED, KVCodec, kv_codec
from prfaas.engine.payload import PayloadBytes, collect_layers
from prfaas.engine.protocol import ExportedState, LayerState
from prfaas.engine.validation import ManifestMismatch, manifest_codec
from prfaas.messages import JSONDict, KVManifest, LayerEntry, TensorEntry
from prfaas.models.kv_codec import KV_CODEC_NONE, KVCodecSpec
from prfaas.types import LayerKind

_SKIPPED_ATTRS = frozenset({"device", "_sliding_window_tensor"})  # rebuilt on import
_INT_KEYS = "__int_keys__"
_DTYPE = "__dtype__"
_TOKEN_AXIS_TENSORS = ("keys", "values")  # [batch, heads, num_tokens, head_dim]
_WINDOW_ATTR = "sliding_window"


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A flat byte view of a tensor's memory; copies only if the tensor is not contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)  # [num_elements]
    return flat.view(torch.uint8).numpy().data


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _encode_flag(attr: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.dtype):
        return {_DTYPE: _dtype_name(value)}
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        return {_INT_KEYS: [[k, _encode_flag(attr, v)] for k, v in value.items()]}
    raise TypeError(f"cache attribute {attr!r} of type {type(value).__name__} cannot travel")


def _decode_flag(value: Any) -> Any:
    if isinstance(value, dict) and _INT_KEYS in value:
        return {int(k): _decode_flag(v) for k, v in value[_INT_KEYS]}
    if isinstance(value, dict) and _DTYPE in value:
        return getattr(torch, value[_DTYPE])
    return value


def is_prefix_attention(flags: JSONDict, name: str) -> bool:
    """Whether tensor `name` ("L3/keys" or "keys") of a layer with these manifest `flags` is
    full-attention/MLA K/V [batch, heads, num_tokens, dim] holding every token since the start.

    Those are the tensors a prefix cache keeps per block and a partial export shortens; a sliding
    window's K/V (its flags carry `sliding_window`) is fixed-size state like a recurrent one.
    For flags of this engine's own cache (export, the prefix store); an import asks the receiver's
    `CacheTemplate` instead of the sender's flags.
    """
    return _is_token_axis(name) and _sliding_window(flags) is None


def _is_token_axis(name: str) -> bool:
    """Whether tensor `name` is K/V, [batch, heads, num_tokens, dim]."""
    return name.rsplit("/", 1)[-1] in _TOKEN_AXIS_TENSORS


def _sliding_window(flags: JSONDict) -> int | None:
    """The sliding window (tokens) of a layer with these manifest `flags`; None without one."""
    window = flags.get("attrs", {}).get(_WINDOW_ATTR)
    return window if isinstance(window, int) else None


def _window_tokens(num_tokens: int, window: int) -> int:
    """Tokens a sliding-window layer's K/V hold after `num_tokens` tokens: transformers'
    `DynamicSlidingWindowLayer` keeps the last `window - 1` (the next token completes it)."""
    return min(num_tokens, window - 1)


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
            attrs[attr] = _encode_flag(attr, value)
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
        if codec is not None and _is_token_axis(name):
            buf = codec.encode(tensor).payload
        else:
            buf = tensor_bytes(tensor)
        entries.append(
            TensorEntry(
                name=f"L{layer_index}/{name}",
                layer_index=layer_index,
                dtype=_dtype_name(tensor.dtype),
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


class PayloadView(PayloadBytes):
    """Several bytes-like buffers seen as one address space [0, total), read as tensors."""

    def tensor(
        self, entry: TensorEntry, *, copy: bool, codec: KVCodec | None = None
    ) -> torch.Tensor:
        """The tensor of `entry`: its bytes in place (copied when `copy`, read-only or
        misaligned), or, for K/V under a `codec`, decoded into a new tensor."""
        dtype = getattr(torch, entry.dtype)
        raw = self.view(entry.offset_bytes, entry.num_bytes)
        if codec is not None and _is_token_axis(entry.name):
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


@dataclass(frozen=True)
class CacheTemplate:
    """What the receiving model's cache holds: layer classes, per-tensor dtype and shape, and
    each layer's sliding window, all read from this model's own cache (a probe's export)."""

    arch: str
    cache_class: str
    layer_classes: tuple[str, ...]
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape at probe length)
    windows: tuple[int | None, ...]  # per layer: its sliding window (tokens), None: none

    @classmethod
    def from_manifest(cls, manifest: KVManifest) -> CacheTemplate:
        """The template of the model that exported `manifest` (its own export of a probe)."""
        tensors = {t.name: (t.dtype, t.shape) for layer in manifest.layers for t in layer.tensors}
        classes = tuple(layer.cache_class for layer in manifest.layers)
        windows = tuple(_sliding_window(layer.flags) for layer in manifest.layers)
        cache_class = str(manifest.cache_meta.get("cache_class", ""))
        return cls(manifest.arch, cache_class, classes, tensors, windows)

    def keeps_every_token(self, name: str) -> bool:
        """Whether this model's tensor `name` ("L3/keys") is K/V holding every token since the
        start: what a partial transfer shortens and the receiver's prefix goes in front of."""
        return self._has_token_axis(name) and self.windows[_layer_of(name)] is None

    def num_tokens_held(self, name: str, manifest: KVManifest) -> int | None:
        """Tokens on the token axis of K/V `name` in an honest state of the manifest's length:
        all it carries (computed less the left-out prefix) where this model keeps every token,
        the window's last tokens where it keeps a sliding window; None without a token axis."""
        if not self._has_token_axis(name):
            return None
        window = self.windows[_layer_of(name)]
        if window is None:
            return manifest.num_computed_tokens - manifest.num_prefix_tokens
        return _window_tokens(manifest.num_computed_tokens, window)

    def first_key(self) -> tuple[str, tuple[int, ...]] | None:
        """(dtype, shape at probe length) of this model's first attention K, [batch, heads,
        tokens, dim] (full-attention, MLA or sliding-window: what a codec codes); None
        without one."""
        for name, (dtype, shape) in self.tensors.items():
            if name.rsplit("/", 1)[-1] == "keys" and self._has_token_axis(name):
                return dtype, shape
        return None

    def _has_token_axis(self, name: str) -> bool:
        """Whether this model's tensor `name` is K/V, [batch, heads, num_tokens, dim]."""
        return _is_token_axis(name) and len(self.tensors[name][1]) == 4


def _layer_of(name: str) -> int:
    """The layer index in tensor name "L{i}/..."."""
    return int(name.split("/", 1)[0].removeprefix("L"))


def check_manifest(manifest: KVManifest, template: CacheTemplate) -> None:
    """Raise ManifestMismatch unless the manifest fits the receiving model's cache: the model and
    its layout, each layer's index and window, each tensor's dtype, shape, size and tokens."""
    codec = manifest_codec(manifest)
    _check_layout(manifest, template)
    for position, layer in enumerate(manifest.layers):
        _check_layer_index(layer, position)
        _check_window(layer, template.windows[position], manifest.num_prefix_tokens)
        for entry in layer.tensors:
            _check_tensor(entry, template.tensors[entry.name], codec)
            _check_num_tokens(entry, template, manifest)


def _check_layout(manifest: KVManifest, template: CacheTemplate) -> None:
    """The same architecture, cache class, layer classes and tensor names as this model's."""
    if manifest.arch != template.arch:
        raise ManifestMismatch(
            f"manifest is for {manifest.arch!r}, this model is {template.arch!r}"
        )
    if manifest.num_layers != len(template.layer_classes) or len(manifest.layers) != len(
        template.layer_classes
    ):
        raise ManifestMismatch(
            f"manifest has {manifest.num_layers} layers, this model has "
            f"{len(template.layer_classes)}"
        )
    if manifest.cache_meta.get("cache_class") != template.cache_class:
        raise ManifestMismatch(
            f"cache class {manifest.cache_meta.get('cache_class')!r} != {template.cache_class!r}"
        )
    for layer, cls in zip(manifest.layers, template.layer_classes, strict=True):
        if layer.cache_class != cls:
            raise ManifestMismatch(
                f"layer {layer.layer_index} is {layer.cache_class}, expected {cls}"
            )
    names = {t.name for layer in manifest.layers for t in layer.tensors}
    if names != set(template.tensors):
        missing, extra = set(template.tensors) - names, names - set(template.tensors)
        raise ManifestMismatch(
            f"tensor names differ: missing {sorted(missing)}, extra {sorted(extra)}"
        )


def _check_layer_index(layer: LayerEntry, position: int) -> None:
    """Entry `position` of the manifest is layer `position` and holds only that layer's tensors
    (import restores them on the layer the entry names)."""
    names = [t.name for t in layer.tensors]
    if layer.layer_index != position or any(_layer_of(name) != position for name in names):
        raise ManifestMismatch(
            f"layer entry {position} of the manifest says layer {layer.layer_index} and holds "
            f"{names}"
        )


def _check_window(layer: LayerEntry, window: int | None, num_prefix_tokens: int) -> None:
    """The sender's flags give the layer this model's sliding window (`window`; None: the layer
    keeps every token), so the import restores it as this model runs it."""
    flagged = _sliding_window(layer.flags)
    if flagged == window:
        return
    claim = _kept_tokens_text(flagged)
    if flagged is None and num_prefix_tokens:
        claim += f", {num_prefix_tokens} of them left to the receiver's prefix"
    raise ManifestMismatch(
        f"layer {layer.layer_index} {_kept_tokens_text(window)} in this model, but the "
        f"manifest's flags say it {claim}"
    )


def _kept_tokens_text(window: int | None) -> str:
    return "keeps every token" if window is None else f"keeps a {window}-token sliding window"


def _check_tensor(
    entry: TensorEntry, expected: tuple[str, tuple[int, ...]], codec: KVCodecSpec
) -> None:
    """Dtype, shape and size of one tensor (a K/V's coded size under `codec`); a K/V's token
    axis is `_check_num_tokens`'s."""
    dtype, shape = expected
    if entry.dtype != dtype:
        raise ManifestMismatch(f"{entry.name}: dtype {entry.dtype}, expected {dtype}")
    got = list(entry.shape)
    want = list(shape)
    if _is_token_axis(entry.name) and len(got) == len(want) == 4:
        got[-2] = want[-2] = 0
    if got != want:
        raise ManifestMismatch(f"{entry.name}: shape {tuple(entry.shape)}, expected {shape}")
    if entry.num_bytes != _num_bytes(entry, codec):
        coded = "" if codec.is_identity or not _is_token_axis(entry.name) else f" ({codec.name})"
        raise ManifestMismatch(
            f"{entry.name}: {entry.num_bytes} bytes do not match its shape{coded}"
        )


def _num_bytes(entry: TensorEntry, codec: KVCodecSpec) -> int:
    """The bytes an honest sender's tensor of this dtype and shape has: K/V coded by `codec`
    (`prfaas.models.kv_codec`'s size of each vector), every other tensor its own bytes."""
    if codec.is_identity or not _is_token_axis(entry.name) or not entry.shape:
        return int(getattr(torch, entry.dtype).itemsize) * _numel(entry.shape)
    num_vectors = _numel(entry.shape[:-1])
    return num_vectors * codec.vector_bytes(entry.shape[-1], entry.dtype)


def _check_num_tokens(entry: TensorEntry, template: CacheTemplate, manifest: KVManifest) -> None:
    """A K/V holds exactly the tokens an honest sender's state of the manifest's length does,
    as this model's own layer keeps them (`CacheTemplate.num_tokens_held`)."""
    expected = template.num_tokens_held(entry.name, manifest)
    if expected is None or entry.shape[-2] == expected:
        return
    layer = _layer_of(entry.name)
    num_prefix = manifest.num_prefix_tokens if template.keeps_every_token(entry.name) else 0
    left_out = f" ({num_prefix} left to the receiver's prefix)" if num_prefix else ""
    raise ManifestMismatch(
        f"{entry.name}: {entry.shape[-2]} cached tokens for {manifest.num_computed_tokens} "
        f"computed tokens{left_out}; layer {layer} {_kept_tokens_text(template.windows[layer])} "
        f"in this model, so {expected} must travel"
    )


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
        setattr(layer, attr, _decode_flag(value))
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
