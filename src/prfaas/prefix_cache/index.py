"""Prefix indexes: what is cached where, by chained block hash (pure bookkeeping, no tensors).

Owns `BlockPrefixIndex`, the simulator's per-cluster LRU set of block hashes, and `GlobalKVIndex`,
the router's view of every instance's `HybridPrefixPool`, rebuilt from the pools' events. Equal
hashes mean equal prefixes, so a hit is the longest run of leading blocks present.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prfaas.prefix_cache.pool_types import (
    EVENT_STORED,
    PoolEvent,
    PoolPart,
    PrefixMatch,
    match_prefix,
)


class BlockPrefixIndex:
    """Set of cached block hashes with LRU eviction beyond `max_blocks`."""

    def __init__(self, max_blocks: int) -> None:
        if max_blocks < 0:
            raise ValueError(f"max_blocks must be >= 0, got {max_blocks}")
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    def num_prefix_hit_blocks(self, block_hashes: Sequence[int]) -> int:
        """Leading blocks of `block_hashes` that are cached; does not change recency."""
        num_hit = 0
        for block_hash in block_hashes:
            if block_hash not in self._blocks:
                break
            num_hit += 1
        return num_hit

    def insert(self, block_hashes: Sequence[int]) -> None:
        """Mark the blocks cached and most recently used, then evict the least recently used."""
        for block_hash in block_hashes:
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)


@dataclass(slots=True)
class _InstanceBlocks:
    attention: set[int] = field(default_factory=set)
    state: set[int] = field(default_factory=set)
    last_seq: int = 0  # highest event seq applied

    def apply(self, event: PoolEvent) -> None:
        blocks = self.attention if event.part is PoolPart.ATTENTION else self.state
        if event.kind == EVENT_STORED:
            blocks.add(event.block_hash)
        else:
            blocks.discard(event.block_hash)
        self.last_seq = max(self.last_seq, event.seq)


class GlobalKVIndex:
    """Router-side copy of each instance's cached blocks, fed by that instance's `PoolEvent`s.

    A hint, not the truth: entries may be stale between polls and the instance's own pool decides.
    `match` applies the same prefix rule as `HybridPrefixPool.match`, so after replaying a pool's
    events (or its snapshot) the two agree. Unknown instances match nothing.
    """

    def __init__(self, block_tokens: int, needs_state: bool) -> None:
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
            raise ValueError(f"block_tokens must be an int >= 1, got {block_tokens!r}")
        if not isinstance(needs_state, bool):
            raise ValueError(f"needs_state must be a bool, got {needs_state!r}")
        self.block_tokens = block_tokens
        self.needs_state = needs_state
        self._instances: dict[str, _InstanceBlocks] = {}

    def apply(self, instance_id: str, events: Sequence[PoolEvent]) -> None:
        """Apply events in order; events with seq <= the last applied one are skipped (repeats)."""
        blocks = self._instances.setdefault(instance_id, _InstanceBlocks())
        for event in events:
            if event.seq > blocks.last_seq:
                blocks.apply(event)

    def replace(self, instance_id: str, events: Sequence[PoolEvent]) -> None:
        """Forget what was known of the instance and load `events` (its `snapshot()`)."""
        blocks = _InstanceBlocks()
        for event in events:
            blocks.apply(event)
        self._instances[instance_id] = blocks

    def drop(self, instance_id: str) -> None:
        """Forget an instance (no-op if unknown)."""
        self._instances.pop(instance_id, None)

    def last_seq(self, instance_id: str) -> int:
        """Highest event seq applied for the instance (0 if unknown); poll events_after from it."""
        blocks = self._instances.get(instance_id)
        return 0 if blocks is None else blocks.last_seq

    def num_blocks(self, instance_id: str) -> int:
        """Attention blocks the index believes `instance_id` caches."""
        blocks = self._instances.get(instance_id)
        return 0 if blocks is None else len(blocks.attention)

    def instances(self) -> list[str]:
        return list(self._instances)

    def match(self, instance_id: str, hashes: Sequence[int]) -> PrefixMatch:
        blocks = self._instances.get(instance_id)
        if blocks is None:
            return PrefixMatch(0, 0)
        return match_prefix(hashes, blocks.attention, blocks.state, self.needs_state)

    def best(self, instance_ids: Iterable[str], hashes: Sequence[int]) -> tuple[str | None, int]:
        """Instance with the most usable blocks (ties: first in order) and that number.

        (None, 0) when no instance has a usable block (or none is given).
        """
        best_id: str | None = None
        best_blocks = 0
        for instance_id in instance_ids:
            num_blocks = self.match(instance_id, hashes).num_usable_blocks
            if num_blocks > best_blocks:
                best_id, best_blocks = instance_id, num_blocks
        return best_id, best_blocks
