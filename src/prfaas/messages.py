"""Every object that crosses a process boundary, one type per arrow of the request flow.

```
client --HTTP--> router            GenerateRequest  (req_id, prompt_token_ids, SamplingParams)
router (policy)                    RouteDecision    (in prfaas.policy: a decision, not a message)
router --> decode                  DecodeJob        (request, transfer_id to wait for, policy)
router --> prefill                 PrefillJob       (request, decode KV address, transfer_id)
router --> prefix holder           PrefixExportJob  (prefix token ids, target KV address)
holder --TCP--> prefill instance   KVManifest       (+ PrefixTransferInfo: a cached prefix)
holder --> router                  PrefixExportResult (tokens and bytes moved | error)
prefill --TCP--> decode            KVManifest       (what the KV frames carry, layer by layer)
                                   + KV frames      (prfaas.transport.frames: header + payload)
decode --> prefill                 TransferAck      (transfer_id, ok | error)
prefill --> router                 PrefillResult    (first token, KV bytes, timings | error)
decode --> router --SSE--> client  TokenDelta       (req_id, token_ids, finish_reason | None)
instance --> router (polled)       InstanceStats    (queues, transfers in flight, link stats)
```

Control messages are JSON (`to_dict`/`from_dict`); KV payload bytes never pass through them.
`from_dict` of what a peer sends (jobs, sampling, manifests and their layers) checks types and
ranges strictly: integers are JSON integers (no strings, booleans or floats), numbers finite,
deadlines positive; anything else is a ValueError (or UserError) naming the field.
Layer 1: standard library only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from prfaas.errors import UserError

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens; defaults are greedy decoding of 16 tokens."""

    max_tokens: int = 16  # tokens to generate after the prompt (first token included)
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None  # per-request RNG seed; None draws from the engine's RNG
    stop: tuple[str, ...] = ()  # stop strings, matched on detokenized text
    stop_token_ids: tuple[int, ...] = ()  # token ids that end the request (not emitted)
    ignore_eos: bool = False  # keep generating past the tokenizer's EOS

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:  # NaN fails too
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")

    def to_dict(self) -> JSONDict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> SamplingParams:
        unknown = set(_mapping(d, "sampling")) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"sampling: unknown fields {sorted(unknown)}")
        seed = d.get("seed")
        return cls(
            max_tokens=_int(d.get("max_tokens", 16), "max_tokens"),
            temperature=_number(d.get("temperature", 0.0), "temperature"),
            top_p=_number(d.get("top_p", 1.0), "top_p"),
            top_k=_int(d.get("top_k", 0), "top_k"),
            seed=None if seed is None else _int(seed, "seed"),
            stop=tuple(_str(s, "stop") for s in _list(d.get("stop", []), "stop")),
            stop_token_ids=_token_ids(d.get("stop_token_ids", []), "stop_token_ids"),
            ignore_eos=_bool(d.get("ignore_eos", False), "ignore_eos"),
        )


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One user generation, as the router hands it on."""

    req_id: str  # unique per request, carried in every log line
    prompt_token_ids: tuple[int, ...]  # tokenized prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrived_at: float = 0.0  # monotonic seconds at the router

    def to_dict(self) -> JSONDict:
        return {
            "req_id": self.req_id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "sampling": self.sampling.to_dict(),
            "arrived_at": self.arrived_at,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> GenerateRequest:
        d = _mapping(d, "request")
        return cls(
            req_id=_str(d["req_id"], "req_id", min_chars=1),
            prompt_token_ids=_token_ids(d["prompt_token_ids"], "prompt_token_ids"),
            sampling=SamplingParams.from_dict(d.get("sampling", {})),
            arrived_at=_number(d.get("arrived_at", 0.0), "arrived_at"),
        )


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a request's exported state, placed in that request's payload byte range."""

    name: str  # stable id within the request: "L3/keys", "L0/recurrent_states/0", ...
    layer_index: int  # decoder layer the tensor belongs to
    dtype: str  # element type without the "torch." prefix: "float32", "bfloat16"
    shape: tuple[int, ...]  # tensor shape, e.g. [batch=1, num_kv_heads, num_tokens, head_dim]
    offset_bytes: int  # where the tensor starts in the request's payload
    num_bytes: int  # its size: prod(shape) * dtype bytes

    def to_dict(self) -> JSONDict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: JSONDict) -> TensorEntry:
        d = _mapping(d, "tensor")
        return cls(
            name=_str(d["name"], "name"),
            layer_index=_int(d["layer_index"], "layer_index", minimum=0),
            dtype=_str(d["dtype"], "dtype"),
            shape=tuple(_int(x, "shape", minimum=0) for x in _list(d["shape"], "shape")),
            offset_bytes=_int(d["offset_bytes"], "offset_bytes", minimum=0),
            num_bytes=_int(d["num_bytes"], "num_bytes", minimum=0),
        )


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One decoder layer's exported state: its kind, its cache class, its flags, its tensors."""

    layer_index: int  # position in the decoder stack
    layer_kind: str  # prfaas.types.LayerKind value
    cache_class: str  # engine-side class name of the layer's cache object
    flags: JSONDict  # small non-tensor state that must travel (e.g. has_previous_state)
    tensors: tuple[TensorEntry, ...]  # in payload order

    @property
    def num_bytes(self) -> int:
        return sum(t.num_bytes for t in self.tensors)

    def to_dict(self) -> JSONDict:
        return {
            "layer_index": self.layer_index,
            "layer_kind": self.layer_kind,
            "cache_class": self.cache_class,
            "flags": self.flags,
            "tensors": [t.to_dict() for t in self.tensors],
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> LayerEntry:
        d = _mapping(d, "layer")
        return cls(
            layer_index=_int(d["layer_index"], "layer_index", minimum=0),
            layer_kind=_str(d["layer_kind"], "layer_kind"),
            cache_class=_str(d["cache_class"], "cache_class"),
            flags=dict(_mapping(d.get("flags", {}), "flags")),
            tensors=tuple(
                TensorEntry.from_dict(_mapping(t, "tensors"))
                for t in _list(d["tensors"], "tensors")
            ),
        )


@dataclass(frozen=True, slots=True)
class KVManifest:
    """What one request's transferred state is: enough to allocate, verify and import it.

    Tensors of layer i lie before those of layer i+1 in the payload, so layer i can be described
    and sent as soon as it is final, before later layers exist.
    """

    transfer_id: str  # one shipment of one request's state
    req_id: str  # the request it belongs to
    arch: str  # model_type of the producing model ("qwen3_next", ...)
    num_layers: int  # decoder layers of the producing model
    layers: tuple[LayerEntry, ...]  # every layer, in order, even those without tensors
    num_computed_tokens: int  # prompt tokens whose state is included
    first_token_id: int | None  # token sampled from the last prefill logits, if any
    cache_meta: JSONDict = field(default_factory=dict)  # cache-level metadata (class name, ...)
    model_fingerprint: str = ""  # identity of the producing weights; importers refuse a mismatch
    # tokens at the start of every full-attention/MLA layer that this payload does NOT carry
    # because the receiver holds them in its prefix cache (0: the payload carries all of them)
    num_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.num_prefix_tokens < 0 or (
            self.num_prefix_tokens > 0 and self.num_prefix_tokens >= self.num_computed_tokens
        ):
            raise UserError(
                f"manifest of {self.req_id!r}: num_prefix_tokens must be in "
                f"[0, num_computed_tokens={self.num_computed_tokens}), got {self.num_prefix_tokens}"
            )

    @property
    def total_bytes(self) -> int:
        return sum(layer.num_bytes for layer in self.layers)

    def to_dict(self) -> JSONDict:
        return {
            "transfer_id": self.transfer_id,
            "req_id": self.req_id,
            "arch": self.arch,
            "num_layers": self.num_layers,
            "layers": [layer.to_dict() for layer in self.layers],
            "num_computed_tokens": self.num_computed_tokens,
            "first_token_id": self.first_token_id,
            "cache_meta": self.cache_meta,
            "model_fingerprint": self.model_fingerprint,
            "num_prefix_tokens": self.num_prefix_tokens,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> KVManifest:
        d = _mapping(d, "manifest")
        first = d.get("first_token_id")
        layers = _list(d["layers"], "layers")
        return cls(
            transfer_id=_str(d["transfer_id"], "transfer_id", min_chars=1),
            req_id=_str(d["req_id"], "req_id"),
            arch=_str(d["arch"], "arch"),
            num_layers=_int(d["num_layers"], "num_layers", minimum=0),
            layers=tuple(LayerEntry.from_dict(_mapping(x, "layers")) for x in layers),
            num_computed_tokens=_int(d["num_computed_tokens"], "num_computed_tokens", minimum=0),
            first_token_id=None if first is None else _int(first, "first_token_id", minimum=0),
            cache_meta=dict(_mapping(d.get("cache_meta", {}), "cache_meta")),
            model_fingerprint=_str(d.get("model_fingerprint", ""), "model_fingerprint"),
            num_prefix_tokens=_int(d.get("num_prefix_tokens", 0), "num_prefix_tokens", minimum=0),
        )


@dataclass(frozen=True, slots=True)
class TransferAck:
    """Decode side's answer to a transfer: its state arrived complete and verified, or why not."""

    transfer_id: str
    ok: bool
    error: str | None = None  # reason when not ok

    def to_dict(self) -> JSONDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JSONDict) -> TransferAck:
        return cls(str(d["transfer_id"]), bool(d["ok"]), d.get("error"))


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New tokens of one request, streamed back to the client."""

    req_id: str
    token_ids: tuple[int, ...]  # tokens produced since the previous delta
    finish_reason: str | None = None  # "stop" | "length" | "error" when the request ends
    error: str | None = None  # why, when finish_reason is "error"

    def to_dict(self) -> JSONDict:  # on every streamed delta: explicit, not dataclasses.asdict
        return {
            "req_id": self.req_id,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> TokenDelta:
        return cls(
            str(d["req_id"]),
            tuple(int(t) for t in d["token_ids"]),
            d.get("finish_reason"),
            d.get("error"),
        )


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

    def to_dict(self) -> JSONDict:
        return {
            "request": self.request.to_dict(),
            "transfer_id": self.transfer_id,
            "decode_kv_address": self.decode_kv_address,
            "deadline_s": self.deadline_s,
            "num_receiver_prefix_tokens": self.num_receiver_prefix_tokens,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> PrefillJob:
        d = _mapping(d, "prefill job")
        num_prefix = _non_negative_int(
            d.get("num_receiver_prefix_tokens", 0), "num_receiver_prefix_tokens"
        )
        return cls(
            GenerateRequest.from_dict(_mapping(d["request"], "request")),
            _str(d["transfer_id"], "transfer_id", min_chars=1),
            _str(d["decode_kv_address"], "decode_kv_address", min_chars=1),
            _seconds(d["deadline_s"], "deadline_s"),
            num_prefix,
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
        d = _mapping(d, "decode job")
        tid = d.get("transfer_id")
        policy = d.get("failure_policy", "recompute")
        if policy not in ("recompute", "fail"):
            raise ValueError(f"failure_policy must be recompute or fail, got {str(policy)[:40]}")
        return cls(
            GenerateRequest.from_dict(_mapping(d["request"], "request")),
            None if tid is None else _str(tid, "transfer_id", min_chars=1),
            _seconds(d["deadline_s"], "deadline_s"),
            policy,
            _bool(d.get("stream", True), "stream"),
            _non_negative_int(d.get("num_prefix_tokens", 0), "num_prefix_tokens"),
        )


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
        d = _mapping(d, "prefix transfer")
        hashes = _list(d["block_hashes"], "block_hashes")
        if not 0 < len(hashes) <= MAX_PREFIX_BLOCKS:
            raise ValueError(f"block_hashes must hold 1 to {MAX_PREFIX_BLOCKS} hashes")
        return cls(
            block_tokens=_int(d["block_tokens"], "block_tokens", minimum=1),
            block_hashes=tuple(_int(h, "block_hashes", minimum=0) for h in hashes),
            payload_blake2b=_str(d["payload_blake2b"], "payload_blake2b", min_chars=1),
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
        d = _mapping(d, "prefix export job")
        token_ids = _token_ids(d["token_ids"], "token_ids")
        if not token_ids:
            raise ValueError("token_ids must not be empty")
        return cls(
            _str(d["transfer_id"], "transfer_id", min_chars=1),
            token_ids,
            _str(d["target_kv_address"], "target_kv_address", min_chars=1),
            _seconds(d["deadline_s"], "deadline_s"),
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
        d = _mapping(d, "prefix export result")
        error = d.get("error")
        return cls(
            transfer_id=_str(d["transfer_id"], "transfer_id"),
            ok=_bool(d["ok"], "ok"),
            num_tokens=_non_negative_int(d.get("num_tokens", 0), "num_tokens"),
            num_kv_bytes=_non_negative_int(d.get("num_kv_bytes", 0), "num_kv_bytes"),
            transfer_s=_number(d.get("transfer_s", 0.0), "transfer_s"),
            error=None if error is None else _str(error, "error"),
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
        )


def _non_negative_int(value: object, name: str) -> int:
    return _int(value, name, minimum=0)


# ---- strict field readers for from_dict (ValueError naming the field) ----------------------


def _int(value: object, name: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {_short(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"{name} must be finite, got {_short(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _seconds(value: object, name: str) -> float:
    seconds = _number(value, name)
    if seconds <= 0:
        raise ValueError(f"{name} must be > 0, got {seconds}")
    return seconds


def _str(value: object, name: str, min_chars: int = 0) -> str:
    if not isinstance(value, str) or len(value) < min_chars:
        raise ValueError(f"{name} must be a string of at least {min_chars} characters")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_short(value)}")
    return value


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list, got {_short(value)}")
    return list(value)


def _mapping(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {_short(value)}")
    return value


def _token_ids(value: object, name: str) -> tuple[int, ...]:
    return tuple(_int(t, name, minimum=0) for t in _list(value, name))


def _short(value: object) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"
