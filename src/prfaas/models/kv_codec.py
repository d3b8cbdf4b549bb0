"""The KV codecs' sizes: what a compressed attention K/V vector costs on the wire.

Owns the codec names and the byte formula the model side uses (`prfaas kv`, the planner, the
simulator): a codec stores `bits_per_element` per element plus one scale record of
`scale_bytes_per_group` bytes per group of at most `group_elements` consecutive elements of one
vector (a head's K or V, an MLA latent). Groups never cross a vector, so a vector of `n` elements
costs `ceil(n * bits / 8) + ceil(n / group_elements) * scale_bytes_per_group` bytes. "none" is
the KV dtype itself. Only attention K/V (full, MLA, sliding window) is coded; recurrent and conv
state always travel exact. The torch encoder and decoder that produce these bytes live in
`prfaas.engine.kv_codec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.types import dtype_bytes

KV_CODEC_NONE = "none"
GROUP_ELEMENTS = 64  # elements of one vector sharing a scale record


@dataclass(frozen=True, slots=True)
class KVCodecSpec:
    """One codec's size model; `bits_per_element` 0 means the KV dtype's own width (no coding)."""

    name: str
    bits_per_element: int
    scale_bytes_per_group: int
    group_elements: int = GROUP_ELEMENTS

    @property
    def is_identity(self) -> bool:
        return self.bits_per_element == 0

    def bytes_per_element(self, kv_dtype: str = "bfloat16") -> float:
        """Code bytes per element, without the scales."""
        if self.is_identity:
            return float(dtype_bytes(kv_dtype))
        return self.bits_per_element / 8

    @property
    def scale_overhead(self) -> float:
        """Scale bytes per element when vectors are whole groups."""
        return self.scale_bytes_per_group / self.group_elements

    def vector_bytes(self, num_elements: int, kv_dtype: str = "bfloat16") -> int:
        """Exact bytes of one coded vector of `num_elements` elements."""
        if self.is_identity:
            return num_elements * dtype_bytes(kv_dtype)
        code_bytes = math.ceil(num_elements * self.bits_per_element / 8)
        num_groups = math.ceil(num_elements / self.group_elements)
        return code_bytes + num_groups * self.scale_bytes_per_group


KV_CODECS: dict[str, KVCodecSpec] = {
    KV_CODEC_NONE: KVCodecSpec(KV_CODEC_NONE, bits_per_element=0, scale_bytes_per_group=0),
    # e4m3 codes, one float32 scale per group
    "fp8": KVCodecSpec("fp8", bits_per_element=8, scale_bytes_per_group=4),
    # rotated, then 4-bit asymmetric codes two per byte, a float16 scale and minimum per group
    "int4-rotated": KVCodecSpec("int4-rotated", bits_per_element=4, scale_bytes_per_group=4),
}
KV_CODEC_NAMES = tuple(KV_CODECS)
# `[transport] compression`: a codec, or "auto" (the router picks fp8 or none per offloaded
# request from its link view, `prfaas.policy.compression`)
COMPRESSION_AUTO = "auto"
COMPRESSION_CHOICES = (*KV_CODEC_NAMES, COMPRESSION_AUTO)


def get_kv_codec(name: str) -> KVCodecSpec:
    """The codec called `name`; UserError naming the choices otherwise."""
    if name not in KV_CODECS:
        raise UserError(f"unknown KV codec {name!r}; choose one of: {', '.join(KV_CODEC_NAMES)}")
    return KV_CODECS[name]
