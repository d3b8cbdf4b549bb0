"""The emulated engine's prefix cache: the bookkeeping of a hybrid prefix cache without tensors.

`EmulatedPrefixCache` keeps the same `HybridPrefixPool`, chained block hashes, exact-state rule
and byte sizes (from `ModelSpec`, per layer) as the torch engine's `PrefixStore`, so a served
emulated deployment publishes the same stored/removed events and reuses the same prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prfaas.engine.prefix_store import prefix_blocks
from prfaas.engine.validation import PrefixMiss
from prfaas.errors import UserError
from prfaas.models import ModelSpec
from prfaas.prefix_cache import HybridPrefixPool, block_hashes
from prfaas.prefix_cache.config import PrefixCacheConfig

if TYPE_CHECKING:
    from prfaas.engine.emulated import EmulatedRequest


class EmulatedPrefixCache:
    """The bookkeeping of a hybrid prefix cache for an engine without tensors: the same pool,
    hashes, exact-state rule and byte sizes as the real engine's (`ModelSpec` per layer)."""

    def __init__(self, spec: ModelSpec, kv_dtype: str, config: PrefixCacheConfig) -> None:
        self.block_tokens = config.block_tokens
        needs_state = any(
            layer.recurrent_state_bytes(spec.recurrent_state_dtype) > 0
            or layer.conv_state_bytes(spec.activation_dtype) > 0
            or layer.window > 0
            for layer in spec.layers
        )
        self.pool = HybridPrefixPool(config.budget_bytes, config.block_tokens, needs_state)
        self.attention_bytes_per_block = (
            sum(layer.kv_bytes_per_token(kv_dtype) for layer in spec.layers) * config.block_tokens
        )
        self.state_bytes = sum(
            layer.recurrent_state_bytes(spec.recurrent_state_dtype)
            + layer.conv_state_bytes(spec.activation_dtype)
            + layer.window_bytes_per_token(kv_dtype) * layer.window
            for layer in spec.layers
        )
        self._leases: dict[str, int] = {}  # req_id -> pin on the prefix its transfer leaves out

    def reusable_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Prefix a prefill can start from: attention blocks and an exact state checkpoint,
        leaving at least one token to compute."""
        hashes = block_hashes(prompt_token_ids, self.block_tokens)
        blocks = self.pool.match(hashes).num_usable_blocks
        return min(blocks * self.block_tokens, self._max_reusable(len(prompt_token_ids)))

    def receiver_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Prefix whose full-attention KV is held (a receiver gets the states whole)."""
        hashes = block_hashes(prompt_token_ids, self.block_tokens)
        blocks = self.pool.match(hashes).num_attention_blocks
        return min(blocks * self.block_tokens, self._max_reusable(len(prompt_token_ids)))

    def _max_reusable(self, num_tokens: int) -> int:
        return max(0, (num_tokens - 1) // self.block_tokens * self.block_tokens)

    def store_prompt(self, prompt_token_ids: Sequence[int]) -> None:
        """After a prefill: the prompt's complete blocks, and the state at the last block
        boundary before its end (where a longer prompt with this prefix can resume)."""
        hashes = block_hashes(prompt_token_ids, self.block_tokens)
        checkpoint = self._max_reusable(len(prompt_token_ids)) // self.block_tokens - 1
        states = {checkpoint: self.state_bytes} if self.pool.needs_state and checkpoint >= 0 else {}
        self.pool.store(hashes, self.attention_bytes_per_block, states)

    def usable_prefix(self, token_ids: Sequence[int], num_tokens: int) -> list[int]:
        """Hashes of the first `num_tokens` tokens' blocks, all usable here (attention and the
        state at their end); PrefixMiss otherwise."""
        num_blocks = prefix_blocks(token_ids, num_tokens, self.block_tokens)
        hashes = block_hashes(token_ids[:num_tokens], self.block_tokens)
        if self.pool.match(hashes).num_usable_blocks < num_blocks:
            raise PrefixMiss(f"the {num_tokens}-token prefix is not usable in this prefix cache")
        return hashes

    def store_blocks(self, hashes: Sequence[int]) -> int:
        """Store blocks `hashes` and the state at their end (a moved prefix); returns the tokens
        now reusable from them."""
        states = {len(hashes) - 1: self.state_bytes} if self.pool.needs_state else {}
        self.pool.store(hashes, self.attention_bytes_per_block, states)
        return self.pool.match(hashes).num_usable_blocks * self.block_tokens

    def retire(self, state: EmulatedRequest) -> None:
        """A request leaves the engine: end its reservation and pin; keep a finished request's
        attention blocks (prompt and every output token whose KV was computed)."""
        self.unpin(state.req_id)
        if state.transfer_id is not None:
            self.pool.release_transfer(state.transfer_id)
        if state.finish_reason in ("stop", "length") and state.prompt_token_ids:
            tokens = state.prompt_token_ids + tuple(state.output_token_ids[:-1])
            hashes = block_hashes(tokens, self.block_tokens)
            self.pool.store(hashes, self.attention_bytes_per_block)

    def reserve(self, state: EmulatedRequest, transfer_id: str, num_bytes: int) -> None:
        """Hold the exported payload's bytes in the budget until the request is freed."""
        if self.pool.reserve_transfer(transfer_id, num_bytes) is not None:
            state.transfer_id = transfer_id

    def pin(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        if num_tokens % self.block_tokens or num_tokens <= 0:
            raise UserError(
                f"a pinned prefix must be a positive multiple of {self.block_tokens} tokens, "
                f"got {num_tokens}"
            )
        if self.receiver_tokens(prompt_token_ids) < num_tokens:
            return False
        self.unpin(req_id)
        hashes = block_hashes(prompt_token_ids, self.block_tokens)
        num_blocks = num_tokens // self.block_tokens
        self._leases[req_id] = self.pool.acquire(hashes, num_blocks, with_state=False)
        return True

    def unpin(self, req_id: str) -> None:
        lease = self._leases.pop(req_id, None)
        if lease is not None:
            self.pool.release(lease)
