"""What a prompt puts in a hybrid prefix pool and what a later prompt takes out of it, in tokens
and bytes: the one rule the emulated engine, the router's index and the simulator share.

Owns `PoolEntrySizes` (a model's bytes per cached attention block and per state checkpoint, and
whether it has fixed-size state at all: `of_model` reads them from a `ModelSpec`) with `store`, a
prefill's store into a `HybridPrefixPool` (its complete blocks, the state checkpoint at the last
block boundary before the prompt's end), and the lengths: `max_reusable_tokens`,
`checkpoint_tokens`, `compute_reuse_tokens` (what a prefill may skip) and
`receiver_reuse_tokens` (what a receiver may leave out of a transfer). Byte sizes are the model's
real ones, whatever an emulated engine's payload scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.models import ModelSpec
from prfaas.prefix_cache.pool import HybridPrefixPool
from prfaas.prefix_cache.pool_types import PrefixMatch, StoreResult


def max_reusable_tokens(num_prompt_tokens: int, block_tokens: int) -> int:
    """The longest block-aligned prefix that still leaves one prompt token to compute."""
    if num_prompt_tokens <= 0:
        return 0
    return (num_prompt_tokens - 1) // block_tokens * block_tokens


def checkpoint_tokens(num_tokens: int, block_tokens: int, needs_state: bool) -> int:
    """Where a prefill of `num_tokens` tokens checkpoints its fixed-size state: the largest
    multiple of the block size below `num_tokens`, so a later prompt that extends this one can
    resume there with at least one token left to compute. 0: no checkpoint."""
    if not needs_state:
        return 0
    return max_reusable_tokens(num_tokens, block_tokens)


def compute_reuse_tokens(match: PrefixMatch, num_prompt_tokens: int, block_tokens: int) -> int:
    """Prompt tokens a prefill can skip: the usable blocks (exact-state rule), leaving one."""
    usable = match.num_usable_blocks * block_tokens
    return min(usable, max_reusable_tokens(num_prompt_tokens, block_tokens))


def receiver_reuse_tokens(match: PrefixMatch, num_prompt_tokens: int, block_tokens: int) -> int:
    """Prompt tokens whose full-attention KV a receiver holds (the states come whole), leaving
    one to send."""
    held = match.num_attention_blocks * block_tokens
    return min(held, max_reusable_tokens(num_prompt_tokens, block_tokens))


@dataclass(frozen=True, slots=True)
class PoolEntrySizes:
    """The bytes one model caches per block: its attention KV and its state checkpoint."""

    block_tokens: int  # tokens per block
    attention_bytes_per_block: int  # full-attention/MLA K/V of one block's tokens
    state_bytes: int  # one checkpoint: recurrent and conv state, every sliding window full
    needs_state: bool  # the model has fixed-size state: a prefix needs a checkpoint at its end

    @classmethod
    def of_model(cls, spec: ModelSpec, kv_dtype: str, block_tokens: int) -> PoolEntrySizes:
        """The sizes of `spec`'s entries, K/V in `kv_dtype`, states in the spec's dtypes."""
        needs_state = any(
            layer.recurrent_state_bytes(spec.recurrent_state_dtype) > 0
            or layer.conv_state_bytes(spec.activation_dtype) > 0
            or layer.window > 0
            for layer in spec.layers
        )
        attention = sum(layer.kv_bytes_per_token(kv_dtype) for layer in spec.layers)
        state = sum(
            layer.recurrent_state_bytes(spec.recurrent_state_dtype)
            + layer.conv_state_bytes(spec.activation_dtype)
            + layer.window_bytes_per_token(kv_dtype) * layer.window
            for layer in spec.layers
        )
        return cls(block_tokens, attention * block_tokens, state, needs_state)

    def new_pool(self, budget_bytes: int) -> HybridPrefixPool:
        """An empty pool of `budget_bytes` for these entries."""
        return HybridPrefixPool(budget_bytes, self.block_tokens, self.needs_state)

    def store(
        self, pool: HybridPrefixPool, hashes: Sequence[int], checkpoint_at_tokens: int = 0
    ) -> StoreResult:
        """Cache blocks `hashes` (their attention bytes) and, at `checkpoint_at_tokens` > 0 (a
        block boundary within them), the fixed-size state there."""
        states = {}
        if self.needs_state and checkpoint_at_tokens > 0:
            states[checkpoint_at_tokens // self.block_tokens - 1] = self.state_bytes
        return pool.store(hashes, self.attention_bytes_per_block, states)
