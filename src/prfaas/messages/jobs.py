"""The router's jobs to instances and what comes back: `PrefillJob` / `PrefillResult`,
`DecodeJob`, and the polled `InstanceStats`.

Layer 1: standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prfaas.messages.fields import (
    JSONDict,
    parse_bool,
    parse_mapping,
    parse_non_negative_int,
    parse_number,
    parse_seconds,
    parse_str,
)
from prfaas.messages.requests import GenerateRequest
from prfaas.models.kv_codec import KV_CODEC_NONE


@dataclass(frozen=True, slots=True)
class PrefillJob:
    """Router -> prefill instance: prefill the request, stream its state to a decode instance."""

    request: GenerateRequest
    transfer_id: str  # names the KV shipment; the decode instance waits for this id
    decode_kv_address: str  # "host:port" of the chosen decode instance's KV receiver
    deadline_s: float  # the transfer must be acknowledged within this many seconds
    # leading prompt tokens whose full-attention KV the decode instance already caches: the
    # payload leaves them out (fixed-size states always travel whole)
    num_receiver_prefix_tokens: int = 0
    # codec of the payload's attention K/V (`prfaas.models.kv_codec`): the router's choice
    kv_codec: str = KV_CODEC_NONE

    def to_dict(self) -> JSONDict:
        return {
            "request": self.request.to_dict(),
            "transfer_id": self.transfer_id,
            "decode_kv_address": self.decode_kv_address,
            "deadline_s": self.deadline_s,
            "num_receiver_prefix_tokens": self.num_receiver_prefix_tokens,
            "kv_codec": self.kv_codec,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefillJob:
        d = parse_mapping(d, "prefill job")
        num_prefix = parse_non_negative_int(
            d.get("num_receiver_prefix_tokens", 0), "num_receiver_prefix_tokens"
        )
        return cls(
            GenerateRequest.from_dict(parse_mapping(d["request"], "request")),
            parse_str(d["transfer_id"], "transfer_id", min_chars=1),
            parse_str(d["decode_kv_address"], "decode_kv_address", min_chars=1),
            parse_seconds(d["deadline_s"], "deadline_s"),
            num_prefix,
            parse_str(d.get("kv_codec", KV_CODEC_NONE), "kv_codec", min_chars=1),
        )


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """Prefill instance -> router: how the prefill and its KV transfer went."""

    req_id: str
    transfer_id: str
    ok: bool  # state computed, sent and acknowledged by the decode instance
    first_token_id: int | None = None
    num_kv_bytes: int = 0  # payload bytes sent
    queue_s: float = 0.0  # waited in the instance's FCFS queue
    prefill_s: float = 0.0  # forward pass, layer callback included
    transfer_tail_s: float = 0.0  # from the end of the forward pass to the receiver's ACK
    error: str | None = None  # why, when not ok
    num_cached_tokens: int = 0  # prompt tokens reused from the instance's prefix cache

    def to_dict(self) -> JSONDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefillResult:
        first = d.get("first_token_id")
        return cls(
            req_id=str(d["req_id"]),
            transfer_id=str(d["transfer_id"]),
            ok=bool(d["ok"]),
            first_token_id=None if first is None else int(first),
            num_kv_bytes=int(d.get("num_kv_bytes", 0)),
            queue_s=float(d.get("queue_s", 0.0)),
            prefill_s=float(d.get("prefill_s", 0.0)),
            transfer_tail_s=float(d.get("transfer_tail_s", 0.0)),
            error=d.get("error"),
            num_cached_tokens=int(d.get("num_cached_tokens", 0)),
        )


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """Router -> decode instance: decode this request from the state `transfer_id` brings.

    With `transfer_id` None the decode instance prefills the prompt itself (a colocated request).
    """

    request: GenerateRequest
    transfer_id: str | None
    deadline_s: float  # how long to wait for the state before the failure policy applies
    failure_policy: str = "recompute"  # "recompute": prefill locally; "fail": end with an error
    stream: bool = True  # deltas as they come; False: all of them in one response at the end
    num_prefix_tokens: int = 0  # prefix KV expected from this instance's cache, not in transfer

    def to_dict(self) -> JSONDict:
        return {
            "request": self.request.to_dict(),
            "transfer_id": self.transfer_id,
            "deadline_s": self.deadline_s,
            "failure_policy": self.failure_policy,
            "stream": self.stream,
            "num_prefix_tokens": self.num_prefix_tokens,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> DecodeJob:
        d = parse_mapping(d, "decode job")
        tid = d.get("transfer_id")
        policy = d.get("failure_policy", "recompute")
        if policy not in ("recompute", "fail"):
            raise ValueError(f"failure_policy must be recompute or fail, got {str(policy)[:40]}")
        return cls(
            GenerateRequest.from_dict(parse_mapping(d["request"], "request")),
            None if tid is None else parse_str(tid, "transfer_id", min_chars=1),
            parse_seconds(d["deadline_s"], "deadline_s"),
            policy,
            parse_bool(d.get("stream", True), "stream"),
            parse_non_negative_int(d.get("num_prefix_tokens", 0), "num_prefix_tokens"),
        )


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """Instance -> router, polled: the load numbers the routing policy reads, and link stats."""

    instance_id: str
    role: str  # "prefill" | "decode"
    num_requests_waiting: int  # queued, not started
    num_requests_running: int  # prefilling or decoding now
    num_queued_tokens: int  # prompt tokens waiting or in prefill
    queued_prefill_s: float  # expected seconds to finish the queued prefill work
    num_transfers_in_flight: int = 0  # KV transfers sent and not yet acknowledged
    links: tuple[JSONDict, ...] = ()  # per destination: measured LinkStats as a dict
    prefix_cache_bytes: int = 0  # bytes held by the instance's prefix cache (0: none)
    prefill_tokens_per_s: float = 0.0  # measured prefill rate of this instance (0: unknown)
    draining_to: str | None = None  # changing role: takes no new work until it serves this one
    kv_pool_in_use_bytes: int = 0  # decode: receive-pool bytes held by transfers not yet freed
    # prefill: per KV codec, uncoded K/V bytes/s its engine encodes (measured at start); a codec
    # absent here is not coded by this engine (emulated: payloads of the coded size, unlimited)
    kv_encode_bytes_per_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> JSONDict:
        return {**asdict(self), "links": list(self.links)}

    @classmethod
    def from_dict(cls, d: JSONDict) -> InstanceStats:
        return cls(
            instance_id=str(d["instance_id"]),
            role=str(d["role"]),
            num_requests_waiting=int(d["num_requests_waiting"]),
            num_requests_running=int(d["num_requests_running"]),
            num_queued_tokens=int(d["num_queued_tokens"]),
            queued_prefill_s=float(d["queued_prefill_s"]),
            num_transfers_in_flight=int(d.get("num_transfers_in_flight", 0)),
            links=tuple(dict(x) for x in d.get("links", ())),
            prefix_cache_bytes=int(d.get("prefix_cache_bytes", 0)),
            prefill_tokens_per_s=float(d.get("prefill_tokens_per_s", 0.0)),
            draining_to=None if d.get("draining_to") is None else str(d["draining_to"]),
            kv_pool_in_use_bytes=int(d.get("kv_pool_in_use_bytes", 0)),
            kv_encode_bytes_per_s=_encode_rates(d.get("kv_encode_bytes_per_s", {})),
        )


def _encode_rates(value: object) -> dict[str, float]:
    """`kv_encode_bytes_per_s`: codec name -> a finite rate >= 0."""
    rates = {}
    for name, rate in parse_mapping(value, "kv_encode_bytes_per_s").items():
        rates[name] = parse_number(rate, f"kv_encode_bytes_per_s[{name!r}]")
        if rates[name] < 0:
            raise ValueError(f"kv_encode_bytes_per_s[{name!r}] must be >= 0, got {rate}")
    return rates
