"""What the KV frames carry and how they are acknowledged: `KVManifest` (its `LayerEntry`s and
`TensorEntry`s at global byte offsets, the weights fingerprint) and `TransferAck`.

Layer 1: standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prfaas.errors import UserError
from prfaas.messages.fields import JSONDict, parse_int, parse_list, parse_mapping, parse_str
from prfaas.models.kv_codec import KV_CODEC_NONE


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a request's exported state, placed in that request's payload byte range."""

    name: str  # stable id within the request: "L3/keys", "L0/recurrent_states/0", ...
    layer_index: int  # decoder layer the tensor belongs to
    dtype: str  # element type without the "torch." prefix: "float32", "bfloat16"
    shape: tuple[int, ...]  # tensor shape, e.g. [batch=1, num_kv_heads, num_tokens, head_dim]
    offset_bytes: int  # where the tensor starts in the request's payload
    num_bytes: int  # its size: prod(shape) * dtype bytes, or its coded size (`kv_codec`)

    def to_dict(self) -> JSONDict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: JSONDict) -> TensorEntry:
        d = parse_mapping(d, "tensor")
        return cls(
            name=parse_str(d["name"], "name"),
            layer_index=parse_int(d["layer_index"], "layer_index", minimum=0),
            dtype=parse_str(d["dtype"], "dtype"),
            shape=tuple(parse_int(x, "shape", minimum=0) for x in parse_list(d["shape"], "shape")),
            offset_bytes=parse_int(d["offset_bytes"], "offset_bytes", minimum=0),
            num_bytes=parse_int(d["num_bytes"], "num_bytes", minimum=0),
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
        d = parse_mapping(d, "layer")
        return cls(
            layer_index=parse_int(d["layer_index"], "layer_index", minimum=0),
            layer_kind=parse_str(d["layer_kind"], "layer_kind"),
            cache_class=parse_str(d["cache_class"], "cache_class"),
            flags=dict(parse_mapping(d.get("flags", {}), "flags")),
            tensors=tuple(
                TensorEntry.from_dict(parse_mapping(t, "tensors"))
                for t in parse_list(d["tensors"], "tensors")
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
    # codec of every attention K/V tensor ("keys"/"values" of full, MLA and sliding-window
    # layers: `prfaas.models.kv_codec`); their entries keep the tensor's dtype and shape and give
    # the coded bytes. Recurrent and conv state always travel exact.
    kv_codec: str = KV_CODEC_NONE

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
            "kv_codec": self.kv_codec,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> KVManifest:
        d = parse_mapping(d, "manifest")
        first = d.get("first_token_id")
        layers = parse_list(d["layers"], "layers")
        return cls(
            transfer_id=parse_str(d["transfer_id"], "transfer_id", min_chars=1),
            req_id=parse_str(d["req_id"], "req_id"),
            arch=parse_str(d["arch"], "arch"),
            num_layers=parse_int(d["num_layers"], "num_layers", minimum=0),
            layers=tuple(LayerEntry.from_dict(parse_mapping(x, "layers")) for x in layers),
            num_computed_tokens=parse_int(
                d["num_computed_tokens"], "num_computed_tokens", minimum=0
            ),
            first_token_id=None if first is None else parse_int(first, "first_token_id", minimum=0),
            cache_meta=dict(parse_mapping(d.get("cache_meta", {}), "cache_meta")),
            model_fingerprint=parse_str(d.get("model_fingerprint", ""), "model_fingerprint"),
            num_prefix_tokens=parse_int(
                d.get("num_prefix_tokens", 0), "num_prefix_tokens", minimum=0
            ),
            kv_codec=parse_str(d.get("kv_codec", KV_CODEC_NONE), "kv_codec", min_chars=1),
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
