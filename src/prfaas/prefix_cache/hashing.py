"""Chained block hashes of a token sequence: the identity of a cached prefix block.

Owns `block_hashes`, and `regrid_hashes`: chained hashes for a prompt known only by the ids of
its blocks of another size (a trace's hash ids). Block i's hash covers its own token ids and,
through the previous hash, every token before it, so two prompts share block i's hash exactly when
they share their first (i + 1) * block_tokens tokens. The hash is blake2b (8-byte digest) over
fixed little-endian bytes, so it is the same in every process and under every PYTHONHASHSEED.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from hashlib import blake2b

HASH_LIMIT = 2**64  # block hashes (and parent hashes) are unsigned 64-bit integers
TOKEN_ID_LIMIT = 2**32  # token ids are hashed as unsigned 32-bit integers
ROOT_HASH = 0  # parent hash of the first block of a sequence


def check_block_hash(block_hash: int, what: str = "block hash") -> None:
    """Raise ValueError unless `block_hash` is an int in [0, 2**64)."""
    if isinstance(block_hash, bool) or not isinstance(block_hash, int):
        raise ValueError(f"{what} must be an int, got {type(block_hash).__name__}")
    if not 0 <= block_hash < HASH_LIMIT:
        raise ValueError(f"{what} must be in [0, 2**64), got {block_hash}")


def _check_token_ids(token_ids: Sequence[int]) -> None:
    for position, token_id in enumerate(token_ids):
        if not isinstance(token_id, int):
            raise ValueError(
                f"token id at position {position} must be an int, got {type(token_id).__name__}"
            )
        if not 0 <= token_id < TOKEN_ID_LIMIT:
            raise ValueError(
                f"token id at position {position} must be in [0, 2**32), got {token_id}"
            )


def chain_hash(parent_hash: int, block_bytes: bytes | memoryview) -> int:
    """One link of the chain: blake2b-64 of the parent hash (8 bytes LE) and the block's bytes."""
    hasher = blake2b(parent_hash.to_bytes(8, "little"), digest_size=8)
    hasher.update(block_bytes)
    return int.from_bytes(hasher.digest(), "little")


def block_hashes(
    token_ids: Sequence[int], block_tokens: int, parent_hash: int = ROOT_HASH
) -> list[int]:
    """Chained hashes of the complete blocks of `token_ids` (len(token_ids) // block_tokens).

    h_i = blake2b(h_{i-1} as 8 LE bytes + block i's ids as LE uint32, digest 8) read LE, with
    h_{-1} = parent_hash. A trailing partial block is not hashed (its ids are still checked).
    Raises ValueError for block_tokens < 1, a parent hash outside [0, 2**64) or a token id that is
    not an int in [0, 2**32).
    """
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
        raise ValueError(f"block_tokens must be an int >= 1, got {block_tokens!r}")
    check_block_hash(parent_hash, "parent_hash")
    try:
        data = struct.pack(f"<{len(token_ids)}I", *token_ids)
    except struct.error as exc:
        _check_token_ids(token_ids)  # names the bad id
        raise ValueError(f"token ids cannot be packed as uint32: {exc}") from exc
    block_bytes = 4 * block_tokens
    hashes: list[int] = []
    previous = parent_hash
    view = memoryview(data)
    for start in range(0, len(token_ids) // block_tokens * block_bytes, block_bytes):
        previous = chain_hash(previous, view[start : start + block_bytes])
        hashes.append(previous)
    return hashes


def regrid_hashes(
    ids: Sequence[int], num_tokens: int, id_block_tokens: int, block_tokens: int
) -> list[int]:
    """Chained hashes of the complete `block_tokens`-token blocks of a `num_tokens`-token prompt
    known by `ids`, the ids of its `id_block_tokens`-token blocks (equal ids: equal tokens, as in
    a Mooncake trace): two prompts share block i's hash exactly when their ids say they share
    every token up to its end. A block that reaches past the ids' tokens ends the list (its
    tokens are unknown). Block i's hash chains the ids of the id blocks it overlaps (which of
    their tokens it holds follows from i, the chain's length)."""
    if block_tokens < 1 or id_block_tokens < 1:
        raise ValueError(f"block sizes must be >= 1, got {block_tokens} and {id_block_tokens}")
    num_known = min(num_tokens, len(ids) * id_block_tokens)
    hashes: list[int] = []
    previous = ROOT_HASH
    for start in range(0, num_known // block_tokens * block_tokens, block_tokens):
        overlapped = ids[
            start // id_block_tokens : (start + block_tokens - 1) // id_block_tokens + 1
        ]
        parts = struct.pack(f"<{len(overlapped)}Q", *(i % HASH_LIMIT for i in overlapped))
        previous = chain_hash(previous, parts)
        hashes.append(previous)
    return hashes
