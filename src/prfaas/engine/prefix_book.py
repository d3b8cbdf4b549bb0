"""A prefix cache's bookkeeping in the engines' vocabulary: block hashes, lengths, pins, transfers.

Owns `PrefixBook`, the part of a prefix cache that holds no tensors, and the checks both engines
apply to moved prefixes (`prefix_blocks`, `check_prefix_payload`, `payload_digest`). The torch
engine's `prefix_store.PrefixStore` adds the tensors; the emulated engine's
`emulated_prefix.EmulatedPrefixCache` adds byte sizes from the model's spec. Both speak in block
hashes and request ids (the *owner* of a pin or a transfer reservation), so `core.EngineCore`
drives either the same way. A pin keeps the hashes it made, so the import that follows it does
not hash the same prefix again. No torch here.

Lengths follow one rule: a prefill may reuse whole blocks whose attention K/V and (for models
with fixed-size state) the state checkpoint at their end are cached, and always computes at least
one token (its logits give the first output token); a receiver may leave out whole blocks whose
attention K/V it holds, at least one token short of the prompt (fixed-size state comes whole).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from prfaas.engine.protocol import Buffers, BytesLike
from prfaas.engine.validation import ManifestMismatch, PrefixMiss
from prfaas.messages import KVManifest, PrefixTransferInfo
from prfaas.prefix_cache.config import PrefixCacheConfig
from prfaas.prefix_cache.entries import (
    checkpoint_tokens,
    compute_reuse_tokens,
    receiver_reuse_tokens,
)
from prfaas.prefix_cache.hashing import ROOT_HASH, block_hashes
from prfaas.prefix_cache.pool import EntryKey, HybridPrefixPool


class PrefixBook:
    """One engine's `HybridPrefixPool` with its block size, pins (by request id) and transfer
    reservations; subclasses keep what the entries hold and drop it in `_drop`."""

    def __init__(self, config: PrefixCacheConfig, needs_state: bool) -> None:
        self.block_tokens = config.block_tokens
        self.pool = HybridPrefixPool(config.budget_bytes, config.block_tokens, needs_state)
        self._pins: dict[str, int] = {}  # owner (request id) -> pool lease id
        self._pinned_hashes: dict[str, tuple[tuple[int, ...], list[int]]] = {}  # owner -> tokens
        self._transfers: dict[str, list[str]] = {}  # owner -> transfer ids reserved in the pool

    @property
    def needs_state(self) -> bool:
        return self.pool.needs_state

    # ---- lengths ----------------------------------------------------------------------------
    def hashes(self, token_ids: Sequence[int]) -> list[int]:
        """Chained hashes of the complete blocks of `token_ids`."""
        return block_hashes(token_ids, self.block_tokens)

    def usable_blocks(self, hashes: Sequence[int], num_tokens: int) -> int:
        """Blocks a prefill of `num_tokens` tokens can take from here (exact-state rule), leaving
        at least one token to compute (the first output token needs its logits)."""
        match = self.pool.match(hashes)
        return compute_reuse_tokens(match, num_tokens, self.block_tokens) // self.block_tokens

    def held_blocks(self, hashes: Sequence[int], num_tokens: int) -> int:
        """Leading blocks whose attention K/V are here, leaving at least one token to send: what
        a receiver can supply itself (its fixed-size state comes whole with the transfer)."""
        match = self.pool.match(hashes)
        return receiver_reuse_tokens(match, num_tokens, self.block_tokens) // self.block_tokens

    def receiver_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Leading prompt tokens a receiver can supply itself (`held_blocks`, in tokens)."""
        hashes = self.hashes(prompt_token_ids)
        return self.held_blocks(hashes, len(prompt_token_ids)) * self.block_tokens

    def extend_hashes(self, known: Sequence[int], token_ids: Sequence[int]) -> list[int]:
        """Hashes of the complete blocks of `token_ids`, given `known`, the hashes of blocks
        they start with: only the blocks after those are hashed."""
        kept = list(known[: len(token_ids) // self.block_tokens])
        parent = kept[-1] if kept else ROOT_HASH
        rest = token_ids[len(kept) * self.block_tokens :]
        return [*kept, *block_hashes(rest, self.block_tokens, parent)]

    def checkpoint_tokens(self, num_tokens: int) -> int:
        """Where a prefill of `num_tokens` tokens checkpoints its fixed-size state
        (`prefix_cache.entries.checkpoint_tokens`; 0: no checkpoint)."""
        return checkpoint_tokens(num_tokens, self.block_tokens, self.needs_state)

    # ---- transfers --------------------------------------------------------------------------
    def reserve_transfer(self, transfer_id: str, num_bytes: int) -> bool:
        """Count a transfer's bytes against the budget until `release_transfer` (may evict);
        False when they cannot fit (nothing is reserved then)."""
        result = self.pool.reserve_transfer(transfer_id, num_bytes)
        if result is None:
            return False
        self._drop(result.removed)
        return True

    def release_transfer(self, transfer_id: str) -> None:
        self.pool.release_transfer(transfer_id)

    def reserve_for(self, owner: str, transfer_id: str, num_bytes: int) -> None:
        """Reserve an outgoing transfer's bytes until `release_owner(owner)`; a repeated
        transfer id replaces its reservation, and bytes that do not fit are not reserved."""
        self.release_transfer(transfer_id)
        if self.reserve_transfer(transfer_id, num_bytes):
            reserved = self._transfers.setdefault(owner, [])
            if transfer_id not in reserved:
                reserved.append(transfer_id)

    def release_owner(self, owner: str) -> None:
        """A request leaves the engine: its pin and its transfer reservations end."""
        self.unpin(owner)
        for transfer_id in self._transfers.pop(owner, []):
            self.release_transfer(transfer_id)

    # ---- pins -------------------------------------------------------------------------------
    def pin(self, owner: str, hashes: Sequence[int], num_blocks: int) -> bool:
        """Lease attention blocks 0..num_blocks-1 for `owner` until `unpin` (the pool will not
        evict them); False (nothing held) if one is missing. Attention only: a receiver gets the
        fixed-size state whole with the transfer, so it needs no checkpoint."""
        self.unpin(owner)
        try:
            self._pins[owner] = self.pool.acquire(hashes, num_blocks, with_state=False)
        except KeyError:
            return False
        return True

    def unpin(self, owner: str) -> None:
        self._pinned_hashes.pop(owner, None)
        lease_id = self._pins.pop(owner, None)
        if lease_id is not None:
            self.pool.release(lease_id)

    def pin_prompt(self, owner: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Pin the first `num_tokens` prompt tokens' blocks for `owner` (see `pin`), keeping
        their hashes for `prefix_hashes`; False (nothing pinned) when they are not all here,
        `num_tokens` is not a whole number of blocks, or it leaves no prompt token to send."""
        self.unpin(owner)
        if not 0 <= num_tokens < len(prompt_token_ids) or num_tokens % self.block_tokens:
            return False
        tokens = tuple(prompt_token_ids[:num_tokens])
        hashes = self.hashes(tokens)
        if not self.pin(owner, hashes, len(hashes)):
            return False
        self._pinned_hashes[owner] = (tokens, hashes)
        return True

    def prefix_hashes(self, owner: str, token_ids: Sequence[int]) -> list[int]:
        """Hashes of the complete blocks of `token_ids`: those `owner`'s pin made when it
        pinned exactly these tokens, else computed now."""
        pinned = self._pinned_hashes.get(owner)
        if pinned is not None and pinned[0] == tuple(token_ids):
            return list(pinned[1])
        return self.hashes(token_ids)

    def _drop(self, removed: Iterable[EntryKey]) -> None:
        """Forget what evicted entries held (nothing here: the pool has already let them go)."""


def payload_digest(buffers: Iterable[BytesLike]) -> str:
    """Hex blake2b (16 bytes) of the payload buffers, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for buffer in buffers:
        digest.update(buffer)
    return digest.hexdigest()


def prefix_blocks(token_ids: Sequence[int], num_tokens: int, block_tokens: int) -> int:
    """Blocks in the first `num_tokens` of `token_ids`; PrefixMiss unless it is a positive whole
    number of blocks within the ids."""
    if num_tokens <= 0 or num_tokens % block_tokens or num_tokens > len(token_ids):
        raise PrefixMiss(
            f"a moved prefix must be a positive multiple of {block_tokens} tokens within the "
            f"{len(token_ids)} token ids given, got {num_tokens}"
        )
    return num_tokens // block_tokens


def check_prefix_payload(
    info: PrefixTransferInfo,
    manifest: KVManifest,
    buffers: Buffers,
    block_tokens: int,
    token_ids: Sequence[int] | None,
) -> None:
    """Refuse a prefix transfer this cache cannot store as its own: other block size, length
    that disagrees with the hashes, other tokens than `token_ids` (when given), changed bytes."""
    if info.block_tokens != block_tokens:
        raise PrefixMiss(
            f"prefix of {info.block_tokens}-token blocks; this cache uses {block_tokens}"
        )
    if manifest.num_computed_tokens != info.num_tokens or manifest.num_prefix_tokens:
        raise PrefixMiss(
            f"prefix manifest of {manifest.num_computed_tokens} tokens names "
            f"{len(info.block_hashes)} blocks ({info.num_tokens} tokens)"
        )
    if token_ids is not None:
        expected = block_hashes(token_ids[: info.num_tokens], block_tokens)
        if tuple(expected) != info.block_hashes:
            raise PrefixMiss(f"the moved {info.num_tokens}-token prefix is not this prompt's")
    if payload_digest(buffers) != info.payload_blake2b:
        raise ManifestMismatch("prefix payload bytes differ from what the holder sent (digest)")


def left_out_prefix_text(manifest: KVManifest) -> str:
    """How PrefixMiss messages name a manifest's left-out prefix."""
    return f"manifest of {manifest.req_id!r} leaves out {manifest.num_prefix_tokens} prefix tokens"


def left_out_hashes(
    book: PrefixBook | None, manifest: KVManifest, prompt: Sequence[int]
) -> list[int]:
    """Hashes of the blocks a manifest leaves out ([] for a whole state), to find them in
    `book`: the request's pin made them when it pinned this prefix. PrefixMiss when they
    cannot be looked up: no prefix cache, no prompt ids, not whole blocks."""
    num_prefix = manifest.num_prefix_tokens
    if num_prefix == 0:
        return []
    what = left_out_prefix_text(manifest)
    if book is None:
        raise PrefixMiss(f"{what}, but this engine has no prefix cache")
    if not prompt:
        raise PrefixMiss(f"{what}; finding them needs the prompt's token ids")
    if num_prefix % book.block_tokens:
        raise PrefixMiss(f"{what}, not a whole number of {book.block_tokens}-token blocks")
    return book.prefix_hashes(manifest.req_id, prompt[:num_prefix])
