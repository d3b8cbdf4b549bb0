"""The receiver's checks of a manifest before import: `CacheTemplate` and `check_manifest`.

Import rebuilds the cache the receiving model would build itself and checks the manifest against
it (architecture, layer count, layer classes and indices, tensor names, dtypes and shapes, a K/V's
coded size under the manifest's `kv_codec`, sliding windows, and the exact tokens every K/V
holds); a mismatch raises `ManifestMismatch`. Which layers keep every token, and how long a window
is, the receiver reads from its own cache (`CacheTemplate`), never from the sender's flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prfaas.engine.kv_flags import is_token_axis, sliding_window
from prfaas.engine.validation import ManifestMismatch, manifest_codec
from prfaas.messages import KVManifest, LayerEntry, TensorEntry
from prfaas.models.kv_codec import KVCodecSpec


def _window_tokens(num_tokens: int, window: int) -> int:
    """Tokens a sliding-window layer's K/V hold after `num_tokens` tokens: transformers'
    `DynamicSlidingWindowLayer` keeps the last `window - 1` (the next token completes it)."""
    return min(num_tokens, window - 1)


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
        windows = tuple(sliding_window(layer.flags) for layer in manifest.layers)
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
        return is_token_axis(name) and len(self.tensors[name][1]) == 4


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
    flagged = sliding_window(layer.flags)
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
    if is_token_axis(entry.name) and len(got) == len(want) == 4:
        got[-2] = want[-2] = 0
    if got != want:
        raise ManifestMismatch(f"{entry.name}: shape {tuple(entry.shape)}, expected {shape}")
    if entry.num_bytes != _num_bytes(entry, codec):
        coded = "" if codec.is_identity or not is_token_axis(entry.name) else f" ({codec.name})"
        raise ManifestMismatch(
            f"{entry.name}: {entry.num_bytes} bytes do not match its shape{coded}"
        )


def _num_bytes(entry: TensorEntry, codec: KVCodecSpec) -> int:
    """The bytes an honest sender's tensor of this dtype and shape has: K/V coded by `codec`
    (`prfaas.models.kv_codec`'s size of each vector), every other tensor its own bytes."""
    if codec.is_identity or not is_token_axis(entry.name) or not entry.shape:
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
