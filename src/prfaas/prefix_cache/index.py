"""Block-hash prefix index of one cluster: which prompt blocks are cached, evicted LRU by count.

Pure bookkeeping (no tensors, no clock): a block is identified by its chained `block_hash`, so equal
hashes mean equal prefixes and a hit is the longest run of leading blocks present.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


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
