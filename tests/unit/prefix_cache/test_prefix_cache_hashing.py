"""Chained block hashes: pinned values, the chain property, parent sensitivity, bad input."""

from __future__ import annotations

import struct
from hashlib import blake2b

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.prefix_cache.hashing import block_hashes

TOKENS = st.lists(st.integers(0, 2**32 - 1), max_size=40)


def test_pinned_values_never_change() -> None:
    # Pinned literals: any change to the byte layout breaks every cache shared across processes.
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == [658132497017838498, 7641984106258271874]
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, parent_hash=7) == [
        5694565308160110911,
        8418668093175567209,
    ]


def test_first_hash_follows_the_documented_byte_layout() -> None:
    data = (0).to_bytes(8, "little") + struct.pack("<4I", 1, 2, 3, 2**32 - 1)
    expected = int.from_bytes(blake2b(data, digest_size=8).digest(), "little")
    assert block_hashes([1, 2, 3, 2**32 - 1], 4) == [expected]
    second = (expected).to_bytes(8, "little") + struct.pack("<4I", 5, 6, 7, 8)
    expected_second = int.from_bytes(blake2b(second, digest_size=8).digest(), "little")
    assert block_hashes([1, 2, 3, 2**32 - 1, 5, 6, 7, 8], 4)[1] == expected_second


def test_only_complete_blocks_are_hashed() -> None:
    assert block_hashes([], 4) == []
    assert block_hashes([1, 2, 3], 4) == []
    assert len(block_hashes(list(range(11)), 4)) == 2
    assert len(block_hashes(list(range(12)), 1)) == 12


@given(TOKENS, TOKENS, st.integers(1, 5))
def test_hashes_of_a_prefix_are_a_prefix(
    head: list[int], tail: list[int], block_tokens: int
) -> None:
    whole = block_hashes(head + tail, block_tokens)
    part = block_hashes(head, block_tokens)
    assert whole[: len(part)] == part
    assert all(0 <= h < 2**64 for h in whole)


@given(TOKENS, st.integers(1, 4), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_different_parent_changes_every_hash(
    tokens: list[int], block_tokens: int, parent_a: int, parent_b: int
) -> None:
    hashes_a = block_hashes(tokens, block_tokens, parent_a)
    hashes_b = block_hashes(tokens, block_tokens, parent_b)
    if parent_a == parent_b:
        assert hashes_a == hashes_b
    else:
        assert all(a != b for a, b in zip(hashes_a, hashes_b, strict=True))


@given(TOKENS, st.integers(1, 4))
def test_chaining_from_the_last_hash_continues_the_chain(
    tokens: list[int], block_tokens: int
) -> None:
    cut = len(tokens) // 2 // block_tokens * block_tokens
    first = block_hashes(tokens[:cut], block_tokens)
    parent = first[-1] if first else 0
    assert first + block_hashes(tokens[cut:], block_tokens, parent) == block_hashes(
        tokens, block_tokens
    )


def test_one_changed_token_changes_its_block_and_all_later() -> None:
    tokens = list(range(16))
    changed = [*tokens[:5], 999, *tokens[6:]]
    base, other = block_hashes(tokens, 4), block_hashes(changed, 4)
    assert base[0] == other[0]
    assert all(a != b for a, b in zip(base[1:], other[1:], strict=True))


@pytest.mark.parametrize(
    ("tokens", "block_tokens", "parent", "reason"),
    [
        ([1, 2], 0, 0, "block_tokens"),
        ([1, 2], -3, 0, "block_tokens"),
        ([1, -1], 1, 0, "position 1"),
        ([2**32], 1, 0, "position 0"),
        ([1, 2, 3, 2**32], 2, 0, "position 3"),  # also in a trailing partial block
        ([1, 2], 1, -1, "parent_hash"),
        ([1, 2], 1, 2**64, "parent_hash"),
        ([1.5], 1, 0, "must be an int"),
    ],
)
def test_bad_input_is_a_value_error_with_a_reason(
    tokens: list[int], block_tokens: int, parent: int, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        block_hashes(tokens, block_tokens, parent)


TRACE_IDS = st.lists(st.integers(0, 5), min_size=1, max_size=6)


@given(
    ids_a=TRACE_IDS,
    ids_b=TRACE_IDS,
    cut_a=st.integers(0, 511),
    cut_b=st.integers(0, 511),
    block_tokens=st.sampled_from([64, 100, 512, 700]),
)
def test_regridded_trace_hashes_share_what_the_trace_prompts_share(
    ids_a: list[int], ids_b: list[int], cut_a: int, cut_b: int, block_tokens: int
) -> None:
    """Two trace requests' regridded hashes agree exactly where the block hashes of the prompts
    `prfaas bench` builds for them (one seeded 512-token block per hash id) agree."""
    import random

    from prfaas.bench.schedule import TRACE_BLOCK_TOKENS, synthetic_prompt
    from prfaas.prefix_cache.hashing import regrid_hashes

    def both(ids: list[int], cut: int) -> tuple[list[int], list[int]]:
        num_tokens = max(1, len(ids) * TRACE_BLOCK_TOKENS - cut)  # the last id partly used
        prompt = synthetic_prompt(num_tokens, random.Random(0), ids)
        regridded = regrid_hashes(ids, num_tokens, TRACE_BLOCK_TOKENS, block_tokens)
        return regridded, block_hashes(prompt, block_tokens)

    regrid_a, real_a = both(ids_a, cut_a)
    regrid_b, real_b = both(ids_b, cut_b)
    assert len(regrid_a) == len(real_a) and len(regrid_b) == len(real_b)
    shared = [x == y for x, y in zip(real_a, real_b, strict=False)]
    assert [x == y for x, y in zip(regrid_a, regrid_b, strict=False)] == shared


def test_regridded_hashes_stop_where_the_ids_end() -> None:
    from prfaas.prefix_cache.hashing import regrid_hashes

    assert len(regrid_hashes([1, 2], 2000, 512, 64)) == 16  # 1024 known tokens
    assert regrid_hashes([1, 2], 1000, 512, 64)[:8] == regrid_hashes([1], 512, 512, 64)
    with pytest.raises(ValueError, match="block sizes"):
        regrid_hashes([1], 10, 512, 0)
