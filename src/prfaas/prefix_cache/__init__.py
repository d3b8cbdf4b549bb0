"""Hybrid prefix cache bookkeeping: block hashes, pools and the global index (no tensors).

- `hashing.block_hashes`: chained, process-independent hashes of complete token blocks
  (`regrid_hashes`: the same for a prompt known by a trace's hash ids).
- `pool.HybridPrefixPool`: one instance's cached attention blocks and fixed-state checkpoints
  within a byte budget (LRU, leaf-first, pins, transfer reservations, a bounded event log);
  `pool_types`: the vocabulary pools and index share (parts, events, the prefix rule);
  `entries`: a model's entry sizes, a prefill's store and the reusable lengths.
- `index.GlobalKVIndex`: the router's copy of every pool, rebuilt from pool events;
  `index.BlockPrefixIndex`: the simulator's per-cluster LRU set of block hashes (its presets';
  a topology's simulation keeps a `HybridPrefixPool` per prefill instance).
"""

from prfaas.prefix_cache.hashing import block_hashes
from prfaas.prefix_cache.index import BlockPrefixIndex, GlobalKVIndex
from prfaas.prefix_cache.pool import HybridPrefixPool
from prfaas.prefix_cache.pool_types import (
    EVENT_REMOVED,
    EVENT_STORED,
    PoolEvent,
    PoolPart,
    PrefixMatch,
    StoreResult,
    match_prefix,
)

__all__ = [
    "EVENT_REMOVED",
    "EVENT_STORED",
    "BlockPrefixIndex",
    "GlobalKVIndex",
    "HybridPrefixPool",
    "PoolEvent",
    "PoolPart",
    "PrefixMatch",
    "StoreResult",
    "block_hashes",
    "match_prefix",
]
