"""GlobalKVIndex: replaying pool events reproduces pool.match; best instance; resync and drop."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from prfaas.prefix_cache.hashing import block_hashes
from prfaas.prefix_cache.index import GlobalKVIndex
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

STORE_OPS = st.lists(
    st.tuples(
        st.lists(st.integers(0, 2), max_size=5),  # token path (block_tokens 1)
        st.sampled_from([10, 60]),  # attention bytes per block
        st.sets(st.integers(0, 4), max_size=2),  # state checkpoint indexes
    ),
    max_size=25,
)


def run_ops(pool: HybridPrefixPool, ops: list[tuple[list[int], int, set[int]]]) -> list[list[int]]:
    chains = []
    for path, attention_bytes, state_indexes in ops:
        hashes = block_hashes(path, 1)
        states = {i: 15 for i in state_indexes if i < len(hashes)} if pool.needs_state else {}
        pool.store(hashes, attention_bytes, states)
        chains.append(hashes)
    return chains


@settings(max_examples=150, deadline=None)
@given(
    ops=STORE_OPS,
    needs_state=st.booleans(),
    budget=st.integers(0, 400),
    max_events=st.integers(1, 30),
    extra=st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=4), max_size=4),
    data=st.data(),
)
def test_replaying_events_or_snapshot_reproduces_pool_match(
    ops: list[tuple[list[int], int, set[int]]],
    needs_state: bool,
    budget: int,
    max_events: int,
    extra: list[list[int]],
    data: st.DataObject,
) -> None:
    pool = HybridPrefixPool(budget, 1, needs_state, max_events=max_events)
    index = GlobalKVIndex(1, needs_state)
    split = data.draw(st.integers(0, len(ops)))
    chains = run_ops(pool, ops[:split])
    index.replace("a", pool.snapshot()[1])  # resync point mid-way
    reader_seq = pool.last_seq
    chains += run_ops(pool, ops[split:])
    events, complete = pool.events_after(reader_seq, limit=10**6)
    event(f"replay complete: {complete}")
    if complete:
        index.apply("a", events)
    else:  # the bounded log dropped some: resync
        assert pool.last_seq - reader_seq > max_events
        index.replace("a", pool.snapshot()[1])
    # Arbitrary hash lists: the chains, their prefixes, chains with random hashes spliced in.
    known = sorted({h for c in chains for h in c})
    mixed = st.lists(st.sampled_from(known), max_size=5) if known else st.just([])
    queries = [*chains, *extra, *(data.draw(mixed) for _ in range(5))]
    queries += [c[:cut] + e for c in chains[:5] for e in extra[:2] for cut in range(len(c))]
    for hashes in queries:
        assert index.match("a", hashes) == pool.match(hashes)


def stored(seq: int, block_hash: int, part: PoolPart = A) -> PoolEvent:
    return PoolEvent(seq, EVENT_STORED, block_hash, part)


def test_state_rule_on_the_index() -> None:
    index = GlobalKVIndex(4, needs_state=True)
    index.apply("a", [stored(1, 11), stored(2, 12), stored(3, 13), stored(4, 11, S)])
    assert index.match("a", [11, 12, 13, 14]) == PrefixMatch(3, 1)
    assert GlobalKVIndex(4, needs_state=False).match("a", [11]) == PrefixMatch(0, 0)
    plain = GlobalKVIndex(4, needs_state=False)
    plain.apply("a", [stored(1, 11), stored(2, 12)])
    assert plain.match("a", [11, 12, 13]) == PrefixMatch(2, 2)


def test_best_prefers_most_usable_blocks_ties_go_first() -> None:
    index = GlobalKVIndex(4, needs_state=False)
    index.apply("a", [stored(1, 11)])
    index.apply("b", [stored(1, 11), stored(2, 12)])
    index.apply("c", [stored(1, 11), stored(2, 12)])
    assert index.best(["a", "b", "c"], [11, 12, 13]) == ("b", 2)
    assert index.best(["c", "b"], [11, 12]) == ("c", 2)
    assert index.best(["a", "unknown"], [11]) == ("a", 1)
    assert index.best(["a", "b"], [99]) == (None, 0)  # no hit anywhere
    assert index.best([], [11]) == (None, 0)


def test_repeated_events_are_skipped_and_removals_apply() -> None:
    index = GlobalKVIndex(4, needs_state=False)
    index.apply("a", [stored(1, 11), PoolEvent(2, EVENT_REMOVED, 11, A)])
    index.apply("a", [stored(1, 11)])  # a repeat of an applied seq changes nothing
    assert index.match("a", [11]) == PrefixMatch(0, 0)
    assert index.last_seq("a") == 2
    index.apply("a", [stored(3, 11)])
    assert index.match("a", [11]) == PrefixMatch(1, 1)


def test_replace_drop_and_unknown_instances() -> None:
    index = GlobalKVIndex(4, needs_state=False)
    assert index.match("nobody", [11]) == PrefixMatch(0, 0)
    assert index.last_seq("nobody") == 0
    index.apply("a", [stored(1, 11), stored(2, 12)])
    index.replace("a", [stored(5, 13)])
    assert index.match("a", [11]) == PrefixMatch(0, 0)
    assert index.match("a", [13]) == PrefixMatch(1, 1)
    assert index.last_seq("a") == 5
    index.replace("b", [])
    assert index.instances() == ["a", "b"]
    index.drop("a")
    index.drop("a")
    assert index.instances() == ["b"]
    assert index.match("a", [13]) == PrefixMatch(0, 0)


def test_events_travel_as_json_dicts() -> None:
    pool = HybridPrefixPool(10_000, 2, needs_state=True)
    hashes = block_hashes(list(range(6)), 2)
    pool.store(hashes, 100, {2: 50})
    wire = [e.to_dict() for e in pool.events_after(0)[0]]
    index = GlobalKVIndex(2, needs_state=True)
    index.apply("a", [PoolEvent.from_dict(d) for d in wire])
    assert index.match("a", hashes) == pool.match(hashes) == PrefixMatch(3, 3)


@pytest.mark.parametrize(("block_tokens", "needs_state"), [(0, True), (-1, False), (4, "yes")])
def test_bad_index_settings_are_value_errors(block_tokens: int, needs_state: bool) -> None:
    with pytest.raises(ValueError):
        GlobalKVIndex(block_tokens, needs_state)
