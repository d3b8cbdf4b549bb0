"""Block-hash prefix index: leading-run hits, recency and LRU eviction by block count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.prefix_cache.index import BlockPrefixIndex


def test_hit_is_the_longest_leading_run() -> None:
    index = BlockPrefixIndex(max_blocks=10)
    index.insert([1, 2, 3])
    assert index.num_prefix_hit_blocks([1, 2, 3, 4]) == 3
    assert index.num_prefix_hit_blocks([1, 9, 3]) == 1
    assert index.num_prefix_hit_blocks([2, 3]) == 2
    assert index.num_prefix_hit_blocks([]) == 0


def test_lru_eviction_keeps_recently_inserted_blocks() -> None:
    index = BlockPrefixIndex(max_blocks=3)
    index.insert([1, 2, 3])
    index.insert([1])  # refresh 1: now 2 is the oldest
    index.insert([4])
    assert 2 not in index
    assert {1, 3, 4} == {b for b in (1, 2, 3, 4) if b in index}
    assert index.num_prefix_hit_blocks([1, 2, 3]) == 1


def test_negative_capacity_is_rejected() -> None:
    with pytest.raises(ValueError):
        BlockPrefixIndex(-1)


@given(st.lists(st.lists(st.integers(0, 20), max_size=6), max_size=30), st.integers(0, 8))
def test_never_holds_more_than_capacity(inserts: list[list[int]], capacity: int) -> None:
    index = BlockPrefixIndex(capacity)
    for blocks in inserts:
        index.insert(blocks)
        assert len(index) <= capacity
