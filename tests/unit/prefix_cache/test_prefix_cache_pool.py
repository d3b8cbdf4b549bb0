"""HybridPrefixPool by example: the exact-state rule, LRU leaf-first eviction, pins, transfers,
the bounded event log and bad input. Random operation sequences are in the stateful test."""

from __future__ import annotations

import json

import pytest

from prfaas.prefix_cache.hashing import block_hashes
from prfaas.prefix_cache.pool import (
    EVENT_REMOVED,
    EVENT_STORED,
    HybridPrefixPool,
    PoolEvent,
    PoolPart,
    PrefixMatch,
)

A = PoolPart.ATTENTION
S = PoolPart.STATE


def chain(seed: int, num_blocks: int) -> list[int]:
    return block_hashes([seed] * 2 + list(range(2 * num_blocks - 2)), 2)


# ---- exact-state rule ------------------------------------------------------------------------


def test_without_state_layers_usable_equals_attention_blocks() -> None:
    pool = HybridPrefixPool(10_000, block_tokens=16, needs_state=False)
    hashes = chain(1, 5)
    pool.store(hashes[:3], 100)
    assert pool.match(hashes) == PrefixMatch(3, 3)
    assert pool.match(hashes).num_usable_tokens(16) == 48
    assert pool.match(chain(2, 5)) == PrefixMatch(0, 0)


def test_state_rule_needs_a_checkpoint_at_the_last_usable_block() -> None:
    pool = HybridPrefixPool(10_000, block_tokens=16, needs_state=True)
    hashes = chain(1, 6)
    pool.store(hashes[:4], 100)  # attention only: nothing usable
    assert pool.match(hashes) == PrefixMatch(4, 0)
    pool.store(hashes[:4], 100, {1: 50})  # checkpoint at block 1 -> 2 usable blocks
    assert pool.match(hashes) == PrefixMatch(4, 2)
    pool.store(hashes[:4], 100, {3: 50})  # exact checkpoint at the end of the run
    assert pool.match(hashes) == PrefixMatch(4, 4)
    assert pool.match(hashes[:3]) == PrefixMatch(3, 2)  # a shorter prompt falls back to block 1
    assert pool.match(hashes[:1]) == PrefixMatch(1, 0)


def test_state_beyond_a_missing_attention_block_is_not_stored() -> None:
    pool = HybridPrefixPool(250, block_tokens=4, needs_state=True)
    hashes = chain(1, 3)
    result = pool.store(hashes, 100, {2: 10})  # room for two blocks only
    assert result.stored == [(hashes[0], A), (hashes[1], A)]
    assert not pool.has(hashes[2], S)
    assert pool.match(hashes) == PrefixMatch(2, 0)


def test_match_does_not_change_recency() -> None:
    pool = HybridPrefixPool(200, block_tokens=4, needs_state=False)
    old, new = chain(1, 1), chain(2, 1)
    pool.store(old, 100)
    pool.store(new, 100)
    pool.match(old)
    removed = pool.store(chain(3, 1), 100).removed
    assert removed == [(old[0], A)]


# ---- eviction --------------------------------------------------------------------------------


def test_store_touches_present_blocks_so_the_other_chain_is_evicted() -> None:
    pool = HybridPrefixPool(400, block_tokens=4, needs_state=False)
    first, second = chain(1, 2), chain(2, 2)
    pool.store(first, 100)
    pool.store(second, 100)
    pool.store(first, 100)  # touch: second is now the least recently used
    result = pool.store(chain(3, 1), 100)
    assert result.removed == [(second[1], A)]  # the leaf of second goes first
    assert pool.match(second) == PrefixMatch(1, 1)
    assert pool.match(first) == PrefixMatch(2, 2)


def test_leaf_first_parent_waits_for_its_child() -> None:
    pool = HybridPrefixPool(300, block_tokens=4, needs_state=False)
    hashes = chain(1, 3)
    pool.store(hashes, 100)
    result = pool.store(chain(2, 3), 100)
    # The chain is evicted leaf to root; the new chain can use all three blocks' room.
    assert result.removed == [(hashes[2], A), (hashes[1], A), (hashes[0], A)]
    assert len(result.stored) == 3


def test_removing_attention_removes_its_state_and_reports_both() -> None:
    pool = HybridPrefixPool(200, block_tokens=4, needs_state=True)
    hashes = chain(1, 1)
    pool.store(hashes, 100, {0: 20})
    result = pool.store(chain(2, 1), 100)
    assert result.removed == [(hashes[0], S), (hashes[0], A)]
    assert len(pool) == 1


def test_a_stale_checkpoint_is_evicted_alone() -> None:
    pool = HybridPrefixPool(200, block_tokens=4, needs_state=True)
    hashes = chain(1, 1)
    pool.store(hashes, 100, {0: 20})
    pool.store(hashes, 100)  # touches the attention block only
    result = pool.store(chain(2, 1), 90)
    assert result.removed == [(hashes[0], S)]
    assert pool.match(hashes) == PrefixMatch(1, 0)


def test_an_entry_larger_than_everything_evictable_evicts_nothing() -> None:
    pool = HybridPrefixPool(300, block_tokens=4, needs_state=False)
    kept = chain(1, 2)
    pool.store(kept, 100)
    lease = pool.acquire(kept, 2)
    result = pool.store(chain(2, 1), 150)
    assert result.stored == [] and result.removed == []
    assert pool.used_bytes == 200
    pool.release(lease)
    assert pool.store(chain(2, 1), 150).removed == [(kept[1], A)]


def test_a_long_store_stops_at_the_budget_without_evicting_its_own_blocks() -> None:
    pool = HybridPrefixPool(350, block_tokens=4, needs_state=False)
    hashes = chain(1, 5)
    result = pool.store(hashes, 100)
    assert result.stored == [(h, A) for h in hashes[:3]]
    assert result.removed == []
    assert pool.match(hashes) == PrefixMatch(3, 3)


def test_a_block_whose_parent_is_missing_is_not_stored() -> None:
    pool = HybridPrefixPool(1000, block_tokens=4, needs_state=False)
    hashes = chain(1, 3)
    result = pool.store(hashes[1:], 100)  # stored as a chain of its own: hashes[1] is a root
    assert [key for key, _ in result.stored] == hashes[1:]
    assert pool.match(hashes) == PrefixMatch(0, 0)


# ---- pins and leases -------------------------------------------------------------------------


def test_pinned_entries_survive_and_refcount() -> None:
    pool = HybridPrefixPool(300, block_tokens=4, needs_state=True)
    hashes = chain(1, 2)
    pool.store(hashes, 100, {1: 50})
    lease_a = pool.acquire(hashes, 2)
    lease_b = pool.acquire(hashes, 2)
    assert pool.num_pins(hashes[0], A) == 2
    assert pool.num_pinned_bytes == 250
    assert pool.store(chain(2, 1), 100).stored == []  # only 50 bytes free, nothing evictable
    pool.release(lease_a)
    assert pool.store(chain(2, 1), 100).stored == []
    pool.release(lease_b)
    assert pool.num_pinned_bytes == 0
    assert pool.store(chain(2, 1), 100).stored == [(chain(2, 1)[0], A)]


def test_acquire_missing_entry_is_a_key_error_and_pins_nothing() -> None:
    pool = HybridPrefixPool(1000, block_tokens=4, needs_state=True)
    hashes = chain(1, 3)
    pool.store(hashes, 100, {0: 10})
    with pytest.raises(KeyError, match="state"):
        pool.acquire(hashes, 2)  # no checkpoint at block 1
    with pytest.raises(KeyError, match="attention"):
        pool.acquire(chain(2, 1), 1)
    assert pool.num_pinned_bytes == 0
    lease = pool.acquire(hashes, 1)
    assert pool.num_pinned_bytes == 110
    with pytest.raises(ValueError, match="num_blocks"):
        pool.acquire(hashes, 4)
    pool.release(lease)
    with pytest.raises(KeyError):
        pool.release(lease)


def test_acquire_without_state_pins_attention_only() -> None:
    pool = HybridPrefixPool(1000, block_tokens=4, needs_state=True)
    hashes = chain(1, 2)
    pool.store(hashes, 100, {0: 10})
    lease = pool.acquire(hashes, 2, with_state=False)  # no checkpoint at block 1 needed
    assert pool.num_pinned_bytes == 200
    assert pool.num_pins(hashes[0], S) == 0
    pool.release(lease)


def test_acquire_of_zero_blocks_is_an_empty_lease() -> None:
    pool = HybridPrefixPool(100, block_tokens=4, needs_state=True)
    lease = pool.acquire([], 0)
    assert pool.num_leases == 1
    pool.release(lease)
    assert pool.num_leases == 0


def test_acquire_touches_so_the_unused_chain_goes_first() -> None:
    pool = HybridPrefixPool(200, block_tokens=4, needs_state=False)
    used, unused = chain(1, 1), chain(2, 1)
    pool.store(used, 100)
    pool.store(unused, 100)
    pool.release(pool.acquire(used, 1))
    assert pool.store(chain(3, 1), 100).removed == [(unused[0], A)]


# ---- transfers -------------------------------------------------------------------------------


def test_transfer_bytes_count_until_released() -> None:
    pool = HybridPrefixPool(300, block_tokens=4, needs_state=False)
    hashes = chain(1, 2)
    pool.store(hashes, 100)
    result = pool.reserve_transfer("t1", 200)
    assert result is not None and result.removed == [(hashes[1], A)]
    assert pool.used_bytes == 300 and pool.num_transfer_bytes == 200
    assert pool.reserve_transfer("t2", 200) is None  # only 100 evictable
    assert pool.has(hashes[0], A)  # a refused reservation evicts nothing
    with pytest.raises(ValueError, match="already"):
        pool.reserve_transfer("t1", 1)
    pool.release_transfer("t1")
    pool.release_transfer("t1")  # idempotent
    pool.release_transfer("never")
    assert pool.used_bytes == 100 and pool.free_bytes == 200


# ---- events ----------------------------------------------------------------------------------


def test_events_record_stores_and_removals_in_order() -> None:
    pool = HybridPrefixPool(200, block_tokens=4, needs_state=True)
    first = chain(1, 1)
    pool.store(first, 100, {0: 100})
    pool.store(chain(2, 1), 100)
    events, complete = pool.events_after(0)
    assert complete
    assert [(e.seq, e.kind, e.block_hash, e.part) for e in events] == [
        (1, EVENT_STORED, first[0], A),
        (2, EVENT_STORED, first[0], S),
        (3, EVENT_REMOVED, first[0], S),
        (4, EVENT_REMOVED, first[0], A),
        (5, EVENT_STORED, chain(2, 1)[0], A),
    ]
    assert pool.events_after(3, limit=1) == ([events[3]], True)
    assert pool.events_after(5) == ([], True)
    assert pool.events_after(6) == ([], False)  # a reader of another pool must resync


def test_bounded_log_signals_resync() -> None:
    pool = HybridPrefixPool(10**6, block_tokens=4, needs_state=False, max_events=3)
    for seed in range(5):
        pool.store(chain(seed, 1), 1)
    assert pool.last_seq == 5
    assert pool.events_after(1) == ([], False)
    events, complete = pool.events_after(2)
    assert complete and [e.seq for e in events] == [3, 4, 5]
    last_seq, stored = pool.snapshot()
    assert last_seq == 5 and [e.seq for e in stored] == [1, 2, 3, 4, 5]


def test_event_json_round_trip_and_validation() -> None:
    event = PoolEvent(7, EVENT_REMOVED, 2**64 - 1, S)
    assert PoolEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    with pytest.raises(ValueError, match="kind"):
        PoolEvent.from_dict({**event.to_dict(), "kind": "moved"})
    with pytest.raises(ValueError, match="part"):
        PoolEvent.from_dict({**event.to_dict(), "part": "kv"})
    with pytest.raises(ValueError, match="lacks seq"):
        PoolEvent.from_dict({"kind": "stored", "block_hash": 1, "part": "state"})
    with pytest.raises(ValueError, match="seq"):
        PoolEvent(0, EVENT_STORED, 1, A)
    with pytest.raises(ValueError, match="block_hash"):
        PoolEvent(1, EVENT_STORED, -1, A)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"budget_bytes": -1, "block_tokens": 4, "needs_state": False}, "budget_bytes"),
        ({"budget_bytes": 10, "block_tokens": 0, "needs_state": False}, "block_tokens"),
        ({"budget_bytes": 10, "block_tokens": 4, "needs_state": 1}, "needs_state"),
        ({"budget_bytes": 10, "block_tokens": 4, "needs_state": True, "max_events": 0}, "max_"),
    ],
)
def test_bad_pool_settings_are_value_errors(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        HybridPrefixPool(**kwargs)  # type: ignore[arg-type]


def test_bad_store_arguments_are_value_errors() -> None:
    pool = HybridPrefixPool(1000, block_tokens=4, needs_state=True)
    hashes = chain(1, 2)
    with pytest.raises(ValueError, match="attention_bytes_per_block"):
        pool.store(hashes, -1)
    with pytest.raises(ValueError, match="beyond"):
        pool.store(hashes, 1, {2: 5})
    with pytest.raises(ValueError, match="index"):
        pool.store(hashes, 1, {-1: 5})
    with pytest.raises(ValueError, match="bytes of the state"):
        pool.store(hashes, 1, {0: -5})
    with pytest.raises(ValueError, match="block hash"):
        pool.store([2**64], 1)
    with pytest.raises(ValueError, match="fixed-state"):
        HybridPrefixPool(10, 4, needs_state=False).store(hashes, 1, {0: 1})
    with pytest.raises(ValueError, match="num_bytes"):
        pool.reserve_transfer("t", -1)
    with pytest.raises(ValueError, match="seq"):
        pool.events_after(-1)
    with pytest.raises(ValueError, match="limit"):
        pool.events_after(0, limit=0)
    with pytest.raises(ValueError, match="block_tokens"):
        PrefixMatch(1, 1).num_usable_tokens(0)
    assert len(pool) == 0 and pool.last_seq == 0
