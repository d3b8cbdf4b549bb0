"""The hybrid prefix cache's vocabulary, shared by the pools and the router's index.

`PoolPart` (which part of a block an entry holds), `EntryKey`, `PoolEvent` (one stored or
removed entry, the unit routers replay), `PrefixMatch` and `match_prefix` (the prefix rule:
a leading attention run, cut back to a state checkpoint when the model has fixed-state layers),
and `StoreResult`. `prfaas.prefix_cache.pool` owns the pool that speaks it.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prfaas.prefix_cache.hashing import check_block_hash

EVENT_STORED = "stored"
EVENT_REMOVED = "removed"
EVENT_KINDS = (EVENT_STORED, EVENT_REMOVED)


class PoolPart(StrEnum):
    """Which part of a block an entry holds."""

    ATTENTION = "attention"  # full-attention KV of the block's tokens
    STATE = "state"  # fixed-size state checkpointed at the END of the block


EntryKey = tuple[int, PoolPart]  # (block hash, part)


def check_int(value: object, what: str, minimum: int) -> int:
    """`value` when it is an int (not a bool) of at least `minimum`; ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One change of a pool: an entry stored or removed. `seq` is 1, 2, 3, ... per pool."""

    seq: int
    kind: str  # EVENT_STORED | EVENT_REMOVED
    block_hash: int
    part: PoolPart

    def __post_init__(self) -> None:
        check_int(self.seq, "event seq", 1)
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        check_block_hash(self.block_hash, "event block_hash")
        if not isinstance(self.part, PoolPart):
            raise ValueError(f"event part must be a PoolPart, got {self.part!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (hashes as ints)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "block_hash": self.block_hash,
            "part": self.part.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolEvent:
        """Inverse of `to_dict`; ValueError naming the bad or missing field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a pool event must be an object, got {type(data).__name__}")
        missing = [k for k in ("seq", "kind", "block_hash", "part") if k not in data]
        if missing:
            raise ValueError(f"pool event lacks {', '.join(missing)}")
        try:
            part = PoolPart(data["part"])
        except ValueError:
            names = [p.value for p in PoolPart]
            raise ValueError(f"event part must be one of {names}, got {data['part']!r}") from None
        return cls(seq=data["seq"], kind=data["kind"], block_hash=data["block_hash"], part=part)


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """How much of a block-hash list is cached."""

    num_attention_blocks: int  # leading blocks whose attention KV is present
    num_usable_blocks: int  # blocks a prefill/decode may reuse (exact-state rule)

    def __post_init__(self) -> None:
        check_int(self.num_usable_blocks, "num_usable_blocks", 0)
        check_int(self.num_attention_blocks, "num_attention_blocks", self.num_usable_blocks)

    def num_usable_tokens(self, block_tokens: int) -> int:
        """Reusable prefix length in tokens."""
        return self.num_usable_blocks * check_int(block_tokens, "block_tokens", 1)


def match_prefix(
    hashes: Sequence[int],
    attention: Container[int],
    state: Container[int],
    needs_state: bool,
) -> PrefixMatch:
    """The prefix rule: leading attention run; with fixed-state layers, cut back to a checkpoint.

    `attention` and `state` hold the block hashes whose entries are present. With needs_state a
    prefix of k blocks counts only if a state checkpoint exists at block k-1, so the usable length
    is the longest such k within the attention run (0 when there is none).
    """
    num_attention = 0
    for block_hash in hashes:
        if block_hash not in attention:
            break
        num_attention += 1
    if not needs_state:
        return PrefixMatch(num_attention, num_attention)
    for num_blocks in range(num_attention, 0, -1):
        if hashes[num_blocks - 1] in state:
            return PrefixMatch(num_attention, num_blocks)
    return PrefixMatch(num_attention, 0)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Entries a call added (the engine keeps their tensors) and removed (it deletes those)."""

    stored: list[EntryKey] = field(default_factory=list)
    removed: list[EntryKey] = field(default_factory=list)
