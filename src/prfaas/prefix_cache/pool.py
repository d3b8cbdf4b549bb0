"""Bookkeeping of one instance's hybrid prefix cache: which blocks are cached, what they cost.

Owns `HybridPrefixPool`; its vocabulary (`PoolPart`, `PoolEvent`, `PrefixMatch`, `StoreResult`,
`match_prefix`, the prefix rule the router's `GlobalKVIndex` shares) is
`prfaas.prefix_cache.pool_types`, re-exported here. No tensors, no clock: the engine keeps the
tensors under the same (block hash, part) keys and deletes those the pool reports as removed.

A hybrid model caches two kinds of entries per block (keyed by the block's chained hash):
ATTENTION, the full-attention KV of the block's tokens, and STATE, the fixed-size state (linear
attention, conv, SSM, sliding window) checkpointed at the end of the block. A prefix of k blocks is
usable only with attention blocks 0..k-1 and, when the model has fixed-state layers, a STATE
checkpoint exactly at block k-1 (a recurrent state cannot be rewound, nor advanced without tokens).

Budget: used_bytes (entries + transfer reservations) never exceeds budget_bytes. Eviction takes the
least recently used unpinned entry, leaf first: an attention block with a cached child block waits
for the child, so every cached chain stays prefix-closed; removing an attention block also removes
its state checkpoint. Every cache change is a `PoolEvent` in a bounded log, which routers replay.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from prfaas.prefix_cache.hashing import check_block_hash
from prfaas.prefix_cache.pool_types import (
    EVENT_KINDS,
    EVENT_REMOVED,
    EVENT_STORED,
    EntryKey,
    PoolEvent,
    PoolPart,
    PrefixMatch,
    StoreResult,
    check_int,
    match_prefix,
)

__all__ = [  # the vocabulary lives in pool_types; importers may take it from here
    "EVENT_KINDS",
    "EVENT_REMOVED",
    "EVENT_STORED",
    "EntryKey",
    "HybridPrefixPool",
    "PoolEvent",
    "PoolPart",
    "PrefixMatch",
    "StoreResult",
    "match_prefix",
]


@dataclass(slots=True)
class _Entry:
    num_bytes: int
    parent: int | None  # ATTENTION: hash of the previous block (None for a first block)
    tick: int  # recency: larger is more recent
    stored_seq: int  # seq of the event that stored it
    num_pins: int = 0
    num_children: int = 0  # ATTENTION: cached attention blocks whose parent this is


class _PartKeys:
    """Present block hashes of one part, as a Container for `match_prefix`."""

    __slots__ = ("_entries", "_part")

    def __init__(self, entries: dict[EntryKey, _Entry], part: PoolPart) -> None:
        self._entries = entries
        self._part = part

    def __contains__(self, block_hash: object) -> bool:
        return (block_hash, self._part) in self._entries


class HybridPrefixPool:
    """Cached attention blocks and state checkpoints of one instance, within a byte budget.

    Pins: `acquire` pins the entries a request reuses (refcounted, released by `release`); a pinned
    entry is never evicted, and neither are its parent blocks. Transfers: `reserve_transfer` holds
    bytes for a KV transfer until `release_transfer`. Eviction is exact LRU over evictable entries
    (a min-heap on last-touch ticks with lazy deletion), so each operation costs O(blocks touched
    x log entries).
    """

    def __init__(
        self, budget_bytes: int, block_tokens: int, needs_state: bool, max_events: int = 65536
    ) -> None:
        self.budget_bytes = check_int(budget_bytes, "budget_bytes", 0)
        self.block_tokens = check_int(block_tokens, "block_tokens", 1)
        if not isinstance(needs_state, bool):
            raise ValueError(f"needs_state must be a bool, got {needs_state!r}")
        self.needs_state = needs_state
        self.max_events = check_int(max_events, "max_events", 1)
        self._entries: dict[EntryKey, _Entry] = {}  # insertion order = store order
        self._entry_bytes = 0
        self._pinned_bytes = 0
        self._transfers: dict[str, int] = {}
        self._transfer_bytes = 0
        self._leases: dict[int, tuple[EntryKey, ...]] = {}
        self._next_lease_id = 1
        self._heap: list[tuple[int, int, PoolPart]] = []  # (tick, hash, part), lazily invalidated
        self._tick = 0
        self._events: list[PoolEvent] = []
        self._events_start = 0  # index in _events of the oldest retained event
        self._last_seq = 0
        self._attention_keys = _PartKeys(self._entries, PoolPart.ATTENTION)
        self._state_keys = _PartKeys(self._entries, PoolPart.STATE)

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes of cached entries plus transfer reservations."""
        return self._entry_bytes + self._transfer_bytes

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes

    @property
    def num_pinned_bytes(self) -> int:
        """Bytes of entries pinned by leases (or by a store in progress)."""
        return self._pinned_bytes

    @property
    def num_transfer_bytes(self) -> int:
        return self._transfer_bytes

    @property
    def num_entry_bytes(self) -> int:
        """Bytes of cached entries (attention and state)."""
        return self._entry_bytes

    @property
    def num_evictable_bytes(self) -> int:
        """Bytes eviction could free now: every unpinned entry (its descendants are unpinned)."""
        return self._entry_bytes - self._pinned_bytes

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    @property
    def last_seq(self) -> int:
        """Seq of the latest event (0 before any)."""
        return self._last_seq

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, block_hash: int, part: PoolPart) -> bool:
        return (block_hash, part) in self._entries

    def num_pins(self, block_hash: int, part: PoolPart) -> int:
        """Pin count of an entry (0 when absent or unpinned)."""
        entry = self._entries.get((block_hash, part))
        return 0 if entry is None else entry.num_pins

    def stats(self) -> dict[str, int]:
        num_state = sum(1 for _, part in self._entries if part is PoolPart.STATE)
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "pinned_bytes": self._pinned_bytes,
            "transfer_bytes": self._transfer_bytes,
            "num_attention_blocks": len(self._entries) - num_state,
            "num_state_checkpoints": num_state,
            "num_leases": len(self._leases),
            "num_transfers": len(self._transfers),
            "last_seq": self._last_seq,
        }

    # ---- queries -----------------------------------------------------------------------------

    def match(self, hashes: Sequence[int]) -> PrefixMatch:
        """Cached prefix of `hashes` (no recency change)."""
        return match_prefix(hashes, self._attention_keys, self._state_keys, self.needs_state)

    # ---- store -------------------------------------------------------------------------------

    def store(
        self,
        hashes: Sequence[int],
        attention_bytes_per_block: int,
        state_blocks: Mapping[int, int] | None = None,
    ) -> StoreResult:
        """Cache the attention blocks of `hashes` and state checkpoints at `state_blocks`.

        First every present entry of the call is touched (in block order, attention before the
        state at the same block) and held, so this call never evicts them. Then missing entries
        are stored in block order, an attention block only if its parent block is present,
        evicting LRU entries as needed. The first entry that cannot be stored (parent missing, or
        too large even after evicting everything evictable) ends the call: it and every later new
        entry are skipped. `state_blocks` maps block index -> bytes of the checkpoint at its end.
        With chained hashes no entry is both stored and removed by one call.
        """
        check_int(attention_bytes_per_block, "attention_bytes_per_block", 0)
        states = self._checked_state_blocks(hashes, state_blocks or {})
        for block_hash in hashes:
            check_block_hash(block_hash)
        plan = self._store_plan(hashes, attention_bytes_per_block, states)
        result = StoreResult()
        held: dict[EntryKey, None] = {}  # entries this call pins while it evicts (ordered set)
        try:
            for key, _, _ in plan:
                if key in self._entries:
                    self._hold(key, held)
                    self._touch(key)
            for key, num_bytes, parent in plan:
                if key in self._entries:
                    continue
                if not self._can_add(key, parent) or not self._make_room(num_bytes, result.removed):
                    break
                self._add(key, num_bytes, parent)
                result.stored.append(key)
                self._hold(key, held)
        finally:
            for key in held:
                self._unpin(key)
        return result

    @staticmethod
    def _store_plan(
        hashes: Sequence[int], attention_bytes: int, states: Mapping[int, int]
    ) -> list[tuple[EntryKey, int, int | None]]:
        """(key, bytes, parent hash) of every entry a store names, in block order."""
        plan: list[tuple[EntryKey, int, int | None]] = []
        for index, block_hash in enumerate(hashes):
            parent = hashes[index - 1] if index else None
            plan.append(((block_hash, PoolPart.ATTENTION), attention_bytes, parent))
            if index in states:
                plan.append(((block_hash, PoolPart.STATE), states[index], None))
        return plan

    def _can_add(self, key: EntryKey, parent: int | None) -> bool:
        """A state needs its block's attention entry; an attention block needs its parent."""
        if key[1] is PoolPart.STATE:
            return (key[0], PoolPart.ATTENTION) in self._entries
        return parent is None or (parent, PoolPart.ATTENTION) in self._entries

    def _checked_state_blocks(
        self, hashes: Sequence[int], state_blocks: Mapping[int, int]
    ) -> dict[int, int]:
        if state_blocks and not self.needs_state:
            raise ValueError("state_blocks given to a pool without fixed-state layers")
        states: dict[int, int] = {}
        for index, num_bytes in state_blocks.items():
            check_int(index, "state block index", 0)
            if index >= len(hashes):
                raise ValueError(f"state block index {index} is beyond the {len(hashes)} blocks")
            states[index] = check_int(num_bytes, f"bytes of the state at block {index}", 0)
        return states

    def _hold(self, key: EntryKey, held: dict[EntryKey, None]) -> None:
        """Pin `key` and its parent chain for the rest of this store (once each)."""
        for chain_key in self._pin_closure(key, held):
            held[chain_key] = None
            self._pin(chain_key)

    # ---- leases ------------------------------------------------------------------------------

    def acquire(self, hashes: Sequence[int], num_blocks: int, *, with_state: bool = True) -> int:
        """Pin attention blocks 0..num_blocks-1 (and the state at num_blocks-1); returns a lease.

        The state is needed and pinned only when the pool has fixed-state layers and `with_state`
        (False: a receiver that gets the states whole with a transfer pins attention only).
        Touches them. KeyError if an entry is missing; ValueError if num_blocks is out of range.
        """
        check_int(num_blocks, "num_blocks", 0)
        if num_blocks > len(hashes):
            raise ValueError(f"num_blocks {num_blocks} exceeds the {len(hashes)} hashes given")
        needed = [(h, PoolPart.ATTENTION) for h in hashes[:num_blocks]]
        if self.needs_state and with_state and num_blocks:
            needed.append((hashes[num_blocks - 1], PoolPart.STATE))
        for key in needed:
            if key not in self._entries:
                raise KeyError(f"no cached {key[1].value} entry for block hash {key[0]}")
        keys: dict[EntryKey, None] = {}
        for key in needed:
            for chain_key in self._pin_closure(key, keys):
                keys[chain_key] = None
        for key in keys:
            self._pin(key)
        for key in needed:
            self._touch(key)
        lease_id = self._next_lease_id
        self._next_lease_id += 1
        self._leases[lease_id] = tuple(keys)
        return lease_id

    def release(self, lease_id: int) -> None:
        """Unpin a lease's entries; KeyError for an unknown (or already released) lease."""
        keys = self._leases.pop(lease_id, None)
        if keys is None:
            raise KeyError(f"unknown lease {lease_id}")
        for key in keys:
            self._unpin(key)

    def _pin_closure(self, key: EntryKey, done: Container[EntryKey]) -> list[EntryKey]:
        """`key` and its cached ancestors not in `done` (stops at the first one in `done`).

        Pinning whole parent chains keeps every unpinned entry evictable (leaf-first), so
        num_evictable_bytes is exact. With chained hashes the chain is the hash list's own prefix.
        """
        chain: list[EntryKey] = []
        current: EntryKey | None = key
        while current is not None and current not in done:
            chain.append(current)
            if current[1] is PoolPart.STATE:
                current = (current[0], PoolPart.ATTENTION)
            else:
                parent = self._entries[current].parent
                current = None if parent is None else (parent, PoolPart.ATTENTION)
        return chain

    def _pin(self, key: EntryKey) -> None:
        entry = self._entries[key]
        if entry.num_pins == 0:
            self._pinned_bytes += entry.num_bytes
        entry.num_pins += 1

    def _unpin(self, key: EntryKey) -> None:
        entry = self._entries[key]
        entry.num_pins -= 1
        if entry.num_pins == 0:
            self._pinned_bytes -= entry.num_bytes
            self._push_if_evictable(key, entry)

    # ---- transfers ---------------------------------------------------------------------------

    def reserve_transfer(self, transfer_id: str, num_bytes: int) -> StoreResult | None:
        """Hold `num_bytes` for a KV transfer until `release_transfer`, evicting as needed.

        Returns the evicted entries, or None (evicting nothing) if the bytes cannot fit.
        ValueError if the id is already reserved or num_bytes is negative.
        """
        if not isinstance(transfer_id, str) or not transfer_id:
            raise ValueError(f"transfer_id must be a non-empty str, got {transfer_id!r}")
        check_int(num_bytes, "transfer num_bytes", 0)
        if transfer_id in self._transfers:
            raise ValueError(f"transfer {transfer_id!r} already holds a reservation")
        result = StoreResult()
        if not self._make_room(num_bytes, result.removed):
            return None
        self._transfers[transfer_id] = num_bytes
        self._transfer_bytes += num_bytes
        return result

    def release_transfer(self, transfer_id: str) -> None:
        """Free a transfer's bytes; a no-op for an unknown or already released id."""
        self._transfer_bytes -= self._transfers.pop(transfer_id, 0)

    def transfer_bytes(self, transfer_id: str) -> int:
        """Bytes reserved for `transfer_id` (0 when none)."""
        return self._transfers.get(transfer_id, 0)

    # ---- events ------------------------------------------------------------------------------

    def events_after(self, seq: int, limit: int = 4096) -> tuple[list[PoolEvent], bool]:
        """Events with seq > `seq` (at most `limit`), and whether they are complete.

        The bool is False when events after `seq` were already dropped from the bounded log, or
        when `seq` is beyond this pool's last event (a reader of an earlier pool): resync from
        `snapshot()` then.
        """
        check_int(seq, "seq", 0)
        check_int(limit, "limit", 1)
        if seq > self._last_seq:
            return [], False
        first_seq = self._last_seq - (len(self._events) - self._events_start) + 1
        if seq + 1 < first_seq:
            return [], False
        start = self._events_start + (seq + 1 - first_seq)
        return self._events[start : start + limit], True

    def snapshot(self) -> tuple[int, list[PoolEvent]]:
        """(last seq, a "stored" event for every present entry, in store order)."""
        events = [
            PoolEvent(entry.stored_seq, EVENT_STORED, block_hash, part)
            for (block_hash, part), entry in self._entries.items()
        ]
        return self._last_seq, events

    def _emit(self, kind: str, key: EntryKey) -> int:
        self._last_seq += 1
        self._events.append(PoolEvent(self._last_seq, kind, key[0], key[1]))
        if len(self._events) - self._events_start > self.max_events:
            self._events_start += 1
            if self._events_start >= self.max_events:
                del self._events[: self._events_start]
                self._events_start = 0
        return self._last_seq

    # ---- entries and eviction ----------------------------------------------------------------

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _add(self, key: EntryKey, num_bytes: int, parent: int | None) -> None:
        seq = self._emit(EVENT_STORED, key)
        entry = _Entry(num_bytes=num_bytes, parent=parent, tick=self._next_tick(), stored_seq=seq)
        self._entries[key] = entry
        self._entry_bytes += num_bytes
        if parent is not None:
            self._entries[(parent, PoolPart.ATTENTION)].num_children += 1
        self._push_if_evictable(key, entry)

    def _touch(self, key: EntryKey) -> None:
        entry = self._entries[key]
        entry.tick = self._next_tick()
        self._push_if_evictable(key, entry)

    def _push_if_evictable(self, key: EntryKey, entry: _Entry) -> None:
        if entry.num_pins == 0 and entry.num_children == 0:
            heapq.heappush(self._heap, (entry.tick, key[0], key[1]))
            if len(self._heap) > 2 * len(self._entries) + 1024:
                self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [
            (entry.tick, block_hash, part)
            for (block_hash, part), entry in self._entries.items()
            if entry.num_pins == 0 and entry.num_children == 0
        ]
        heapq.heapify(self._heap)

    def _pop_lru(self) -> EntryKey | None:
        """Least recently used evictable entry, dropping stale heap items on the way."""
        while self._heap:
            tick, block_hash, part = heapq.heappop(self._heap)
            entry = self._entries.get((block_hash, part))
            if (
                entry is not None
                and entry.tick == tick
                and entry.num_pins == 0
                and entry.num_children == 0
            ):
                return block_hash, part
        return None

    def _make_room(self, num_bytes: int, removed: list[EntryKey]) -> bool:
        """Evict LRU entries until `num_bytes` fit; False (evicting nothing) if they never can."""
        if num_bytes > self.free_bytes + self.num_evictable_bytes:
            return False
        while self.free_bytes < num_bytes:
            key = self._pop_lru()
            if key is None:  # unreachable while pinned parent chains are closed
                raise AssertionError("pool accounting broken: nothing evictable")
            if key[1] is PoolPart.ATTENTION:
                self._remove((key[0], PoolPart.STATE), removed)
            self._remove(key, removed)
        return True

    def _remove(self, key: EntryKey, removed: list[EntryKey]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._entry_bytes -= entry.num_bytes
        self._emit(EVENT_REMOVED, key)
        removed.append(key)
        if entry.parent is not None:
            parent_key = (entry.parent, PoolPart.ATTENTION)
            parent = self._entries[parent_key]
            parent.num_children -= 1
            self._push_if_evictable(parent_key, parent)
