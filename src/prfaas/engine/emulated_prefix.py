"""The emulated engine's prefix cache: the bookkeeping of a hybrid prefix cache without tensors.

`EmulatedPrefixCache` is a `prefix_book.PrefixBook`, as the torch engine's `PrefixStore` is: the
same `HybridPrefixPool`, chained block hashes, exact-state rule, pins and transfer reservations,
in the same vocabulary (block hashes and request ids). What it stores are byte sizes (from
`ModelSpec`, per layer: `prefix_cache.entries.PoolEntrySizes`, which the simulator's pools store
with too), so a served emulated deployment publishes the same stored/removed events and reuses
the same prefixes as a torch one would.
"""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.engine.prefix_book import PrefixBook, prefix_blocks
from prfaas.engine.validation import PrefixMiss
from prfaas.models import ModelSpec
from prfaas.prefix_cache.config import PrefixCacheConfig
from prfaas.prefix_cache.entries import PoolEntrySizes


class EmulatedPrefixCache(PrefixBook):
    """The bookkeeping of a hybrid prefix cache for an engine without tensors: the same pool,
    hashes, exact-state rule and byte sizes as the real engine's (`ModelSpec` per layer)."""

    def __init__(self, spec: ModelSpec, kv_dtype: str, config: PrefixCacheConfig) -> None:
        self.sizes = PoolEntrySizes.of_model(spec, kv_dtype, config.block_tokens)
        super().__init__(config, self.sizes.needs_state)
        self.attention_bytes_per_block = self.sizes.attention_bytes_per_block
        self.state_bytes = self.sizes.state_bytes

    def store(self, hashes: Sequence[int], checkpoint_tokens: int = 0) -> None:
        """Cache blocks `hashes` (their attention bytes) and, at `checkpoint_tokens` > 0 (a block
        boundary within them), the fixed-size state there, as `PrefixStore.store` does."""
        self.sizes.store(self.pool, hashes, checkpoint_tokens)

    def usable_prefix(self, token_ids: Sequence[int], num_tokens: int) -> list[int]:
        """Hashes of the first `num_tokens` tokens' blocks, all usable here (attention and the
        state at their end); PrefixMiss otherwise."""
        num_blocks = prefix_blocks(token_ids, num_tokens, self.block_tokens)
        hashes = self.hashes(token_ids[:num_tokens])
        if self.pool.match(hashes).num_usable_blocks < num_blocks:
            raise PrefixMiss(f"the {num_tokens}-token prefix is not usable in this prefix cache")
        return hashes

    def store_moved(self, hashes: Sequence[int]) -> int:
        """Store a moved prefix's blocks `hashes` and the state at their end; returns the tokens
        now reusable from them."""
        self.store(hashes, len(hashes) * self.block_tokens)
        return self.pool.match(hashes).num_usable_blocks * self.block_tokens
