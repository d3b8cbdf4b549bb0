"""Random operation sequences on HybridPrefixPool, checked against a plain reference model.

Hash chains are real `block_hashes` of short token paths over a 3-letter alphabet, so chains share
prefixes often. After every operation: used + free == budget, used <= budget, no negative pins and
pins equal to the live leases, pinned entries present, transfer bytes as reserved, every stored
chain prefix-closed, every removal the least recently used evictable entry (leaf first), and a
`GlobalKVIndex` fed by `events_after` (resyncing from `snapshot` when the bounded log says so)
matching `pool.match` on every chain.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from prfaas.prefix_cache.hashing import block_hashes
from prfaas.prefix_cache.index import GlobalKVIndex
from prfaas.prefix_cache.pool import EVENT_STORED, HybridPrefixPool, PoolPart, StoreResult

A = PoolPart.ATTENTION
S = PoolPart.STATE
Key = tuple[int, PoolPart]

PATHS = st.lists(st.integers(0, 2), min_size=0, max_size=6)


class PoolMachine(RuleBasedStateMachine):
    leases = Bundle("leases")
    transfers = Bundle("transfers")

    def __init__(self) -> None:
        super().__init__()
        self.pool = HybridPrefixPool(1, 1, False)
        self.model_bytes: dict[Key, int] = {}  # present entries, from StoreResults only
        self.model_tick: dict[Key, int] = {}  # last touch, as the pool defines it
        self.tick = 0
        self.parent_of: dict[int, int | None] = {}
        self.chains: set[tuple[int, ...]] = set()
        self.lease_keys: dict[int, list[Key]] = {}
        self.model_transfers: dict[str, int] = {}
        self.next_transfer = 0
        self.index = GlobalKVIndex(1, False)
        self.reader_seq = 0
        self.num_resyncs = 0

    @initialize(
        budget=st.integers(0, 1500), needs_state=st.booleans(), max_events=st.integers(1, 12)
    )
    def start(self, budget: int, needs_state: bool, max_events: int) -> None:
        self.pool = HybridPrefixPool(budget, 1, needs_state, max_events=max_events)
        self.index = GlobalKVIndex(1, needs_state)

    # ---- model helpers -----------------------------------------------------------------------

    def chain(self, path: list[int]) -> list[int]:
        hashes = block_hashes(path, 1)
        for index, block_hash in enumerate(hashes):
            self.parent_of[block_hash] = hashes[index - 1] if index else None
        self.chains.add(tuple(hashes))
        return hashes

    def touch(self, key: Key) -> None:
        self.tick += 1
        self.model_tick[key] = self.tick

    def pins(self) -> Counter[Key]:
        return Counter(key for keys in self.lease_keys.values() for key in keys)

    def has_present_child(self, block_hash: int) -> bool:
        return any(
            parent == block_hash and (child, A) in self.model_bytes
            for child, parent in self.parent_of.items()
        )

    def check_removals(self, removed: list[Key], call_keys: set[Key]) -> None:
        """Each removal is the oldest evictable entry outside this call, children first."""
        pins = self.pins()
        for position, key in enumerate(removed):
            assert key in self.model_bytes, f"removed an absent entry {key}"
            assert key not in call_keys and pins[key] == 0
            if key[1] is A:
                assert not self.has_present_child(key[0]), "evicted a block before its child"
                assert (key[0], S) not in self.model_bytes, "attention removed before its state"
            oldest = min(
                self.model_tick[k]
                for k in self.model_bytes
                if k not in call_keys
                and pins[k] == 0
                and (k[1] is S or not self.has_present_child(k[0]))
            )
            # A state is removed as the oldest itself, or just before its block (then the oldest).
            with_block = key[1] is S and removed[position + 1 : position + 2] == [(key[0], A)]
            block_tick = self.model_tick[(key[0], A)] if with_block else None
            assert oldest in (self.model_tick[key], block_tick), "not LRU"
            del self.model_bytes[key]

    def apply_result(self, result: StoreResult, call_keys: set[Key], sizes: dict[Key, int]) -> None:
        self.check_removals(result.removed, call_keys)
        for key in result.stored:
            assert key not in self.model_bytes
            self.model_bytes[key] = sizes[key]
            self.touch(key)

    # ---- rules -------------------------------------------------------------------------------

    @rule(
        path=PATHS,
        attention_bytes=st.sampled_from([0, 10, 100, 300]),
        state_sizes=st.dictionaries(st.integers(0, 5), st.sampled_from([0, 20, 150]), max_size=3),
    )
    def store(self, path: list[int], attention_bytes: int, state_sizes: dict[int, int]) -> None:
        hashes = self.chain(path)
        states = {i: b for i, b in state_sizes.items() if i < len(hashes)}
        if not self.pool.needs_state:
            states = {}
        sizes: dict[Key, int] = {}
        for index, block_hash in enumerate(hashes):
            sizes[(block_hash, A)] = attention_bytes
            if index in states:
                sizes[(block_hash, S)] = states[index]
        order = list(sizes)  # block order, attention before the state at the same block
        for key in order:
            if key in self.model_bytes:
                self.touch(key)
        result = self.pool.store(hashes, attention_bytes, states)
        num_missing = sum(k not in self.model_bytes for k in order)
        event(f"store evictions: {'none' if not result.removed else 'some'}")
        event(f"store stopped early: {len(result.stored) < num_missing}")
        self.apply_result(result, set(order), sizes)
        # Stored entries are exactly the missing ones, in order, up to the first refusal.
        missing = [k for k in order if k not in self.model_bytes or k in result.stored]
        assert result.stored == missing[: len(result.stored)]

    @rule(target=leases, path=PATHS, data=st.data())
    def acquire(self, path: list[int], data: st.DataObject) -> int | object:
        hashes = self.chain(path)
        usable = self.pool.match(hashes).num_usable_blocks
        num_blocks = data.draw(st.sampled_from([usable, len(hashes)]))
        with_state = data.draw(st.booleans())
        needed = [(h, A) for h in hashes[:num_blocks]]
        if self.pool.needs_state and with_state and num_blocks:
            needed.append((hashes[num_blocks - 1], S))
        if not all(k in self.model_bytes for k in needed):
            try:
                self.pool.acquire(hashes, num_blocks, with_state=with_state)
            except KeyError:
                event("acquire of a missing entry refused")
                return multiple()
            raise AssertionError("acquire of a missing entry succeeded")
        lease = self.pool.acquire(hashes, num_blocks, with_state=with_state)
        self.lease_keys[lease] = needed
        for key in needed:
            self.touch(key)
        return lease

    @rule(lease=consumes(leases))
    def release(self, lease: int) -> None:
        self.pool.release(lease)
        del self.lease_keys[lease]

    @rule(target=transfers, num_bytes=st.integers(0, 800))
    def reserve(self, num_bytes: int) -> str | object:
        self.next_transfer += 1
        transfer_id = f"t{self.next_transfer}"
        evictable = sum(b for k, b in self.model_bytes.items() if self.pins()[k] == 0)
        result = self.pool.reserve_transfer(transfer_id, num_bytes)
        if num_bytes > self.pool.budget_bytes - self.used() + evictable:
            event("transfer refused")
            assert result is None
            return multiple()
        assert result is not None and result.stored == []
        self.check_removals(result.removed, set())
        self.model_transfers[transfer_id] = num_bytes
        return transfer_id

    @rule(transfer_id=consumes(transfers))
    def release_transfer(self, transfer_id: str) -> None:
        before = self.pool.used_bytes
        self.pool.release_transfer(transfer_id)
        self.pool.release_transfer(transfer_id)  # idempotent
        assert self.pool.used_bytes == before - self.model_transfers.pop(transfer_id)

    @rule(limit=st.integers(1, 5))
    def sync_index(self, limit: int) -> None:
        while True:
            events, complete = self.pool.events_after(self.reader_seq, limit)
            if not complete:
                self.reader_seq, snapshot = self.pool.snapshot()
                assert all(e.kind == EVENT_STORED for e in snapshot)
                self.index.replace("i", snapshot)
                self.num_resyncs += 1
                event("index resynced from snapshot")
                break
            if not events:
                break
            assert [e.seq for e in events] == list(
                range(self.reader_seq + 1, self.reader_seq + 1 + len(events))
            )
            self.index.apply("i", events)
            self.reader_seq = events[-1].seq
        for hashes in self.chains:
            for cut in range(len(hashes) + 1):
                assert self.index.match("i", hashes[:cut]) == self.pool.match(hashes[:cut])

    # ---- invariants --------------------------------------------------------------------------

    def used(self) -> int:
        return sum(self.model_bytes.values()) + sum(self.model_transfers.values())

    @invariant()
    def budget_holds(self) -> None:
        pool = self.pool
        assert pool.used_bytes + pool.free_bytes == pool.budget_bytes
        assert 0 <= pool.used_bytes <= pool.budget_bytes
        assert pool.used_bytes == self.used()
        assert pool.num_transfer_bytes == sum(self.model_transfers.values())

    @invariant()
    def pins_match_leases(self) -> None:
        pins = self.pins()
        for key in self.model_bytes:
            assert self.pool.num_pins(*key) == pins[key] >= 0
        assert all(key in self.model_bytes for key in pins), "a pinned entry was evicted"
        pinned = sum(self.model_bytes[k] for k in pins)
        assert self.pool.num_pinned_bytes == pinned

    @invariant()
    def chains_are_prefix_closed(self) -> None:
        for hashes in self.chains:
            present = [(h, A) in self.model_bytes for h in hashes]
            assert present == sorted(present, reverse=True), "a block cached without its parent"
        for block_hash, part in self.model_bytes:
            if part is S:
                assert (block_hash, A) in self.model_bytes

    @invariant()
    def match_follows_the_exact_state_rule(self) -> None:
        for hashes in self.chains:
            num_attention = 0
            while num_attention < len(hashes) and (hashes[num_attention], A) in self.model_bytes:
                num_attention += 1
            usable = num_attention
            if self.pool.needs_state:
                checkpoints = [
                    k + 1 for k in range(num_attention) if (hashes[k], S) in self.model_bytes
                ]
                usable = max(checkpoints, default=0)
            match = self.pool.match(list(hashes))
            assert (match.num_attention_blocks, match.num_usable_blocks) == (num_attention, usable)

    @invariant()
    def snapshot_rebuilds_the_same_matches(self) -> None:
        last_seq, events = self.pool.snapshot()
        assert last_seq == self.pool.last_seq
        assert {(e.block_hash, e.part) for e in events} == set(self.model_bytes)
        assert len(self.pool) == len(self.model_bytes)
        fresh = GlobalKVIndex(1, self.pool.needs_state)
        fresh.replace("x", events)
        for hashes in self.chains:
            assert fresh.match("x", hashes) == self.pool.match(hashes)


PoolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_random_operations = PoolMachine.TestCase
