"""Cached prefixes moved between instances: `PrefixTransferInfo` (the manifest marker that tells a
prefix from a request's state), `PrefixExportJob` (router -> holder) and `PrefixExportResult`.

Layer 1: standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prfaas.messages.fields import (
    JSONDict,
    parse_bool,
    parse_int,
    parse_list,
    parse_mapping,
    parse_non_negative_int,
    parse_number,
    parse_seconds,
    parse_str,
    parse_token_ids,
)
from prfaas.messages.manifest import KVManifest

PREFIX_META_KEY = "prefix_transfer"  # KVManifest.cache_meta key that marks a prefix transfer
MAX_PREFIX_BLOCKS = 1 << 20  # block hashes one prefix transfer may name


@dataclass(frozen=True, slots=True)
class PrefixTransferInfo:
    """What makes a KVManifest a *prefix transfer* (cached prefix moved between instances)
    rather than a request's state: carried in `cache_meta[PREFIX_META_KEY]`.

    The receiver stores the blocks under `block_hashes` (chained, so they name the tokens) and
    refuses a payload whose blake2b digest differs from `payload_blake2b`.
    """

    block_tokens: int  # tokens per block, as the sender's prefix cache counts them
    block_hashes: tuple[int, ...]  # chained hashes of blocks 0..k-1, k * block_tokens tokens
    payload_blake2b: str  # hex blake2b (16 bytes) of the payload, tensors in manifest order

    @property
    def num_tokens(self) -> int:
        return self.block_tokens * len(self.block_hashes)

    def to_dict(self) -> JSONDict:
        return {
            "block_tokens": self.block_tokens,
            "block_hashes": list(self.block_hashes),
            "payload_blake2b": self.payload_blake2b,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefixTransferInfo:
        d = parse_mapping(d, "prefix transfer")
        hashes = parse_list(d["block_hashes"], "block_hashes")
        if not 0 < len(hashes) <= MAX_PREFIX_BLOCKS:
            raise ValueError(f"block_hashes must hold 1 to {MAX_PREFIX_BLOCKS} hashes")
        return cls(
            block_tokens=parse_int(d["block_tokens"], "block_tokens", minimum=1),
            block_hashes=tuple(parse_int(h, "block_hashes", minimum=0) for h in hashes),
            payload_blake2b=parse_str(d["payload_blake2b"], "payload_blake2b", min_chars=1),
        )

    @classmethod
    def of(cls, manifest: KVManifest) -> PrefixTransferInfo | None:
        """The manifest's prefix-transfer info; None for a request's state (ValueError when the
        marker is there but malformed)."""
        raw = manifest.cache_meta.get(PREFIX_META_KEY)
        return None if raw is None else cls.from_dict(raw)


@dataclass(frozen=True, slots=True)
class PrefixExportJob:
    """Router -> instance holding a cached prefix: send the first `num_tokens` tokens of
    `token_ids` from your prefix cache to the KV receiver at `target_kv_address`."""

    transfer_id: str  # names the shipment (the router's log and the receiver's counters)
    token_ids: tuple[int, ...]  # the prefix's token ids, exactly num_tokens of them
    target_kv_address: str  # "host:port" of the receiving instance's KV receiver
    deadline_s: float  # the transfer must be acknowledged within this many seconds

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> JSONDict:
        return {
            "transfer_id": self.transfer_id,
            "token_ids": list(self.token_ids),
            "target_kv_address": self.target_kv_address,
            "deadline_s": self.deadline_s,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefixExportJob:
        d = parse_mapping(d, "prefix export job")
        token_ids = parse_token_ids(d["token_ids"], "token_ids")
        if not token_ids:
            raise ValueError("token_ids must not be empty")
        return cls(
            parse_str(d["transfer_id"], "transfer_id", min_chars=1),
            token_ids,
            parse_str(d["target_kv_address"], "target_kv_address", min_chars=1),
            parse_seconds(d["deadline_s"], "deadline_s"),
        )


@dataclass(frozen=True, slots=True)
class PrefixExportResult:
    """Holder -> router: how a prefix transfer went."""

    transfer_id: str
    ok: bool  # sent and acknowledged by the receiver (which then imports it)
    num_tokens: int = 0  # prefix tokens sent
    num_kv_bytes: int = 0  # payload bytes sent
    transfer_s: float = 0.0  # from the job's start to the receiver's ACK
    error: str | None = None  # why, when not ok

    def to_dict(self) -> JSONDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefixExportResult:
        d = parse_mapping(d, "prefix export result")
        error = d.get("error")
        return cls(
            transfer_id=parse_str(d["transfer_id"], "transfer_id"),
            ok=parse_bool(d["ok"], "ok"),
            num_tokens=parse_non_negative_int(d.get("num_tokens", 0), "num_tokens"),
            num_kv_bytes=parse_non_negative_int(d.get("num_kv_bytes", 0), "num_kv_bytes"),
            transfer_s=parse_number(d.get("transfer_s", 0.0), "transfer_s"),
            error=None if error is None else parse_str(error, "error"),
        )
