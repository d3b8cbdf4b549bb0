"""What an engine's prefix cache is sized by: tokens per block and a byte budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixCacheConfig:
    """One instance's prefix cache: blocks of `block_tokens` tokens within `budget_bytes`."""

    block_tokens: int  # tokens per block; fixed-size states are checkpointed at block multiples
    budget_bytes: int  # cached attention KV, state checkpoints and held transfers, bytes

    def __post_init__(self) -> None:
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {self.block_tokens}")
        if self.budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {self.budget_bytes}")
