"""The engine's hybrid prefix cache: tensors kept per block hash, accounted by a HybridPrefixPool.

Owns `StateCheckpoint` and `PrefixStore`, a `prefix_book.PrefixBook` (the pool, lengths, pins and
transfer reservations) that also holds the tensors; `PrefixMiss`, `PrefixCacheConfig` and the
moved-prefix checks are re-exported here. The pool (`prfaas.prefix_cache.pool`) decides what is
cached and what is evicted; this store holds the tensors under the same (block hash, part) keys
and deletes those of every entry the pool reports removed, so the two stay in step:

- ATTENTION entry of block j: the full-attention/MLA K/V of its `block_tokens` tokens, one clone
  per such tensor ("L3/keys", ...) sliced from a batch-1 cache, [1, heads, block_tokens, dim].
- STATE entry of block j: a `StateCheckpoint` at (j + 1) * block_tokens tokens: clones of every
  other tensor (linear-attention/recurrent, conv and SSM states, sliding-window K/V) and every
  layer's class, flags and tensor names.

A cache for the first k blocks is the state the engine would export at k * block_tokens tokens:
attention tensors concatenated from blocks 0..k-1, everything else from the checkpoint at block
k - 1 (models without fixed-size state need none). It is built as a `KVManifest` plus buffers and
imported with the ordinary `kv_import.import_state`, so the prefix path checks the same layout the
transfer path does.

The same manifest moves a cached prefix to another instance (`export_prefix`: blocks pinned while
it is built; `PrefixTransferInfo` in its cache_meta names the blocks and the payload's digest),
and `import_prefix` stores a received one as if this engine had computed it: the state is imported
into a fresh cache, the blocks are cut from it and the checkpoint taken at its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from prfaas.engine.kv_checks import CacheTemplate
from prfaas.engine.kv_export import cache_meta, is_prefix_attention, layer_parts, layer_state
from prfaas.engine.kv_import import import_state
from prfaas.engine.payload import collect_layers
from prfaas.engine.prefix_book import (
    PrefixBook,
    check_prefix_payload,
    payload_digest,
    prefix_blocks,
)
from prfaas.engine.protocol import Buffers, LayerState
from prfaas.engine.validation import PrefixMiss
from prfaas.messages import PREFIX_META_KEY, JSONDict, KVManifest, PrefixTransferInfo
from prfaas.prefix_cache.config import PrefixCacheConfig
from prfaas.prefix_cache.pool import EntryKey, PoolPart
from prfaas.types import LayerKind

__all__ = [
    "LayerLayout",
    "PrefixCacheConfig",
    "PrefixMiss",
    "PrefixStore",
    "StateCheckpoint",
    "attention_tensors",
    "cache_layout",
    "check_prefix_payload",
    "needs_state",
    "payload_digest",
    "prefix_blocks",
    "take_checkpoint",
]

_STATELESS_KINDS = frozenset({LayerKind.FULL_ATTENTION, LayerKind.MLA, LayerKind.MLP_ONLY})
_PREFIX_ID = "prefix-cache"  # transfer and request id of the manifests the store builds


def needs_state(kinds: Iterable[LayerKind]) -> bool:
    """Whether a model with these layer kinds has fixed-size state besides attention K/V."""
    return any(kind not in _STATELESS_KINDS for kind in kinds)


@dataclass(frozen=True)
class LayerLayout:
    """What one cache layer holds, without its data: class, manifest flags, tensor names."""

    cache_class: str
    flags: JSONDict
    names: tuple[str, ...]  # tensor names in payload order, without the "L{i}/" prefix


def cache_layout(cache: Any, num_layers: int) -> tuple[LayerLayout, ...]:
    """Every layer's class, flags and tensor names, as export would describe them now."""
    layout = []
    for i in range(num_layers):
        cache_class, flags, named = layer_parts(cache, i)
        layout.append(LayerLayout(cache_class, flags, tuple(name for name, _ in named)))
    return tuple(layout)


@dataclass(frozen=True)
class StateCheckpoint:
    """A batch-1 cache's fixed-size part at `num_tokens` tokens (a multiple of the block size)."""

    num_tokens: int
    layers: tuple[LayerLayout, ...]  # every layer's flags at num_tokens
    tensors: dict[str, torch.Tensor] = field(repr=False)  # manifest name -> clone; no K/V of
    # full-attention/MLA layers

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def take_checkpoint(cache: Any, num_layers: int, num_tokens: int) -> StateCheckpoint:
    """Clone every tensor of the cache but full-attention/MLA K/V, with every layer's flags.

    Clones, because transformers updates conv and recurrent states in place as the prefill goes on.
    """
    layout = cache_layout(cache, num_layers)
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layout):
        _, _, named = layer_parts(cache, i)
        for name, tensor in named:
            if not is_prefix_attention(layer.flags, name):
                tensors[f"L{i}/{name}"] = tensor.detach().clone()
    return StateCheckpoint(num_tokens, layout, tensors)


def attention_tensors(cache: Any, num_layers: int) -> dict[str, torch.Tensor]:
    """The cache's full-attention/MLA K/V by manifest name: [1, heads, num_tokens, dim] each."""
    found: dict[str, torch.Tensor] = {}
    for i in range(num_layers):
        _, flags, named = layer_parts(cache, i)
        found.update((f"L{i}/{n}", t) for n, t in named if is_prefix_attention(flags, n))
    return found


def _bytes_per_token(tensor: torch.Tensor) -> int:
    """Bytes one token takes in a [batch, heads, num_tokens, dim] tensor."""
    return tensor.shape[1] * tensor.shape[3] * tensor.shape[0] * tensor.element_size()


def _held(tensors: Mapping[str, torch.Tensor], layer_index: int, name: str) -> torch.Tensor:
    """Tensor `name` of layer `layer_index` from what the prefix cache holds; PrefixMiss if not."""
    full = f"L{layer_index}/{name}"
    tensor = tensors.get(full)
    if tensor is None:
        raise PrefixMiss(f"{full} is not in this engine's prefix cache")
    return tensor


class PrefixStore(PrefixBook):
    """The tensors of one engine's prefix cache and the pool that accounts for them."""

    def __init__(self, config: PrefixCacheConfig, kinds: Sequence[LayerKind], arch: str):
        super().__init__(config, needs_state(kinds))
        self.kinds = tuple(kinds)
        self.arch = arch
        self._attention: dict[int, dict[str, torch.Tensor]] = {}  # block hash -> name -> K/V
        self._states: dict[int, StateCheckpoint] = {}  # block hash -> checkpoint at its end
        self._layout: tuple[LayerLayout, ...] | None = None  # of the latest stored cache
        self._cache_meta: JSONDict = {}

    # ---- store and evict --------------------------------------------------------------------
    def store(
        self, hashes: Sequence[int], cache: Any, checkpoint: StateCheckpoint | None = None
    ) -> None:
        """Cache blocks `hashes` of a batch-1 cache whose full-attention K/V hold at least
        len(hashes) blocks of tokens, and the state checkpoint if given (at a block boundary
        within them). The pool decides what fits; evicted entries' tensors are deleted."""
        if not hashes:
            return
        self._layout = cache_layout(cache, len(self.kinds))
        self._cache_meta = cache_meta(cache)
        attention = attention_tensors(cache, len(self.kinds))
        per_block = self.block_tokens * sum(_bytes_per_token(t) for t in attention.values())
        states = {}
        if checkpoint is not None and self.needs_state:
            states[checkpoint.num_tokens // self.block_tokens - 1] = checkpoint.num_bytes
        result = self.pool.store(hashes, per_block, states)
        self._drop(result.removed)
        index_of = {block_hash: j for j, block_hash in enumerate(hashes)}
        for block_hash, part in result.stored:
            if not self.pool.has(block_hash, part):  # stored, then evicted by a later block
                continue
            if part is PoolPart.ATTENTION:
                self._attention[block_hash] = self._block(attention, index_of[block_hash])
            elif checkpoint is not None:
                self._states[block_hash] = checkpoint

    def _block(self, attention: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
        start = index * self.block_tokens
        end = start + self.block_tokens
        return {name: t[:, :, start:end].clone() for name, t in attention.items()}

    def _drop(self, removed: Iterable[EntryKey]) -> None:
        for block_hash, part in removed:
            if part is PoolPart.ATTENTION:
                self._attention.pop(block_hash, None)
            else:
                self._states.pop(block_hash, None)

    # ---- reuse ------------------------------------------------------------------------------
    def prefix_tensors(self, hashes: Sequence[int], num_blocks: int) -> dict[str, torch.Tensor]:
        """Full-attention/MLA K/V of blocks 0..num_blocks-1 by manifest name, concatenated on
        the token axis ([1, heads, num_blocks * block_tokens, dim]); PrefixMiss if one is not
        here."""
        blocks = []
        for j, block_hash in enumerate(hashes[:num_blocks]):
            block = self._attention.get(block_hash)
            if block is None:
                raise PrefixMiss(
                    f"block {j} of the {num_blocks}-block prefix ({num_blocks * self.block_tokens} "
                    "tokens) is not in this engine's prefix cache"
                )
            blocks.append(block)
        if len(blocks) < num_blocks:
            raise PrefixMiss(f"the prompt has {len(blocks)} complete blocks, not {num_blocks}")
        names = list(blocks[0]) if blocks else []
        return {name: torch.cat([block[name] for block in blocks], dim=-2) for name in names}

    def restore(
        self, fresh_cache: Any, hashes: Sequence[int], num_blocks: int, template: CacheTemplate
    ) -> Any:
        """Fill `fresh_cache` with the state after blocks 0..num_blocks-1 (all usable here),
        pinning them while it copies; returns the cache."""
        lease_id = self.pool.acquire(hashes, num_blocks)
        try:
            manifest, buffers = self._prefix_state(hashes, num_blocks)
            return import_state(fresh_cache, manifest, buffers, template, copy=True)
        finally:
            self.pool.release(lease_id)

    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str, fingerprint: str
    ) -> tuple[KVManifest, list[memoryview]]:
        """The state after the first `num_tokens` tokens (whole blocks) of `token_ids`, as a
        prefix-transfer manifest and its buffers; the blocks are pinned while it is built.
        PrefixMiss when the blocks or the state checkpoint at their end are not all here."""
        num_blocks = prefix_blocks(token_ids, num_tokens, self.block_tokens)
        hashes = self.hashes(token_ids[:num_tokens])
        try:
            lease_id = self.pool.acquire(hashes, num_blocks)
        except KeyError as exc:
            raise PrefixMiss(f"the {num_tokens}-token prefix is not usable here: {exc}") from None
        try:
            manifest, buffers = self._prefix_state(hashes, num_blocks)
        finally:
            self.pool.release(lease_id)
        info = PrefixTransferInfo(self.block_tokens, tuple(hashes), payload_digest(buffers))
        manifest = replace(
            manifest,
            transfer_id=transfer_id,
            req_id=f"prefix:{transfer_id}",
            cache_meta={**manifest.cache_meta, PREFIX_META_KEY: info.to_dict()},
            model_fingerprint=fingerprint,
        )
        return manifest, buffers

    def import_prefix(
        self,
        manifest: KVManifest,
        buffers: Buffers,
        fresh_cache: Any,
        template: CacheTemplate,
        token_ids: Sequence[int] | None = None,
    ) -> int:
        """Store a received prefix (see `export_prefix`) as if it had been computed here;
        returns the prompt tokens now reusable from it (0 if the budget could not hold it).
        PrefixMiss / ManifestMismatch when it is not a prefix this cache can take as is."""
        info = PrefixTransferInfo.of(manifest)
        if info is None:
            raise PrefixMiss(f"manifest of {manifest.req_id!r} is not a prefix transfer")
        check_prefix_payload(info, manifest, buffers, self.block_tokens, token_ids)
        cache = import_state(fresh_cache, manifest, buffers, template, copy=True)
        checkpoint = None
        if self.needs_state:
            checkpoint = take_checkpoint(cache, len(self.kinds), info.num_tokens)
        self.store(info.block_hashes, cache, checkpoint)
        return self.pool.match(info.block_hashes).num_usable_blocks * self.block_tokens

    def _prefix_state(
        self, hashes: Sequence[int], num_blocks: int
    ) -> tuple[KVManifest, list[memoryview]]:
        """The manifest and buffers an export at num_blocks * block_tokens tokens would give."""
        checkpoint = self._states.get(hashes[num_blocks - 1]) if self.needs_state else None
        if self.needs_state and checkpoint is None:
            raise PrefixMiss(f"no state checkpoint at block {num_blocks - 1}")
        layout = checkpoint.layers if checkpoint is not None else self._layout
        if layout is None:
            raise PrefixMiss("nothing has been stored in this prefix cache")
        prefix = self.prefix_tensors(hashes, num_blocks)
        state = checkpoint.tensors if checkpoint is not None else {}

        def layer_at(i: int, offset: int) -> LayerState:
            layer = layout[i]
            named = [
                (name, _held(prefix if is_prefix_attention(layer.flags, name) else state, i, name))
                for name in layer.names
            ]
            kind = self.kinds[i].value
            return layer_state(i, kind, layer.cache_class, layer.flags, named, offset)

        layers, buffers = collect_layers(len(layout), layer_at)
        manifest = KVManifest(
            transfer_id=_PREFIX_ID,
            req_id=_PREFIX_ID,
            arch=self.arch,
            num_layers=len(layers),
            layers=tuple(layers),
            num_computed_tokens=num_blocks * self.block_tokens,
            first_token_id=None,
            cache_meta=self._cache_meta,
        )
        return manifest, buffers

    def stats(self) -> dict[str, int]:
        """The pool's numbers plus the tensors held here (they must agree)."""
        return {
            **self.pool.stats(),
            "num_attention_tensors_held": len(self._attention),
            "num_state_checkpoints_held": len(self._states),
            "num_pinned_requests": len(self._pins),
        }
