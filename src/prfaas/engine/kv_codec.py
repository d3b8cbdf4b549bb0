"""The KV codecs themselves: one attention K/V tensor to a compact payload and back.

A codec works on the last axis (`head_dim` of a `[batch, heads, tokens, head_dim]` K or V, an MLA
latent), cut into groups of at most `GROUP_ELEMENTS` elements, each with its own scale record, so
a layer's tensor is coded on its own, as it streams. The sizes are those of
`prfaas.models.kv_codec` (the model side's formula), checked by the tests byte for byte.

- `none`: the tensor's own bytes, bit-exact.
- `fp8`: `x / s` as float8 e4m3 with `s = max|x| / 448` per group (a float32 scale).
- `int4-rotated`: each group `g` of a vector becomes `g @ R` with `R` a random orthogonal matrix
  of the group's size (QR of a seeded Gaussian, signs fixed by `R`'s diagonal, the same on both
  sides from the seed in the metadata), then an asymmetric 4-bit code `round((y - min) / step)`,
  `step = (max - min) / 15`, two codes per byte (low nibble first) and the float16 step and
  minimum. The rotation spreads an outlier channel over its group, so the group's range is not
  set by one channel. Rotating each group rather than the whole vector costs 64 multiply-adds per
  element instead of `head_dim`, and keeps each group's code self-contained.

Two conversions avoid torch's own, which are several times slower on a CPU: bfloat16 to
float32 is a 16-bit shift of the bits, e4m3 to float32 a lookup in a 256-entry table.

Payload layout: the codes of every element in row-major order, then the scale records of every
group in the same order. Recurrent and conv state are never coded (they compound through decode).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from prfaas.models.kv_codec import GROUP_ELEMENTS, KV_CODEC_NONE, KVCodecSpec, get_kv_codec

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT4_LEVELS = 15  # codes 0..15
DEFAULT_ROTATION_SEED = 0x5EED


@dataclass(frozen=True)
class CodedTensor:
    """A coded tensor: its payload and what decoding needs (JSON-able `metadata`)."""

    payload: memoryview
    metadata: dict[str, Any]


class KVCodec(Protocol):
    @property
    def spec(self) -> KVCodecSpec: ...

    def encode(self, tensor: torch.Tensor) -> CodedTensor: ...

    def decode(
        self, payload: bytes | bytearray | memoryview, metadata: dict[str, Any]
    ) -> torch.Tensor: ...


def kv_codec(name: str, rotation_seed: int = DEFAULT_ROTATION_SEED) -> KVCodec:
    """The codec called `name` (UserError naming the choices otherwise)."""
    spec = get_kv_codec(name)
    if spec.name == KV_CODEC_NONE:
        return IdentityCodec(spec)
    if spec.name == "fp8":
        return Fp8Codec(spec)
    return RotatedInt4Codec(spec, rotation_seed)


def _metadata(spec: KVCodecSpec, tensor: torch.Tensor, **extra: Any) -> dict[str, Any]:
    dtype = str(tensor.dtype).removeprefix("torch.")
    return {"codec": spec.name, "dtype": dtype, "shape": list(tensor.shape), **extra}


def _as_bytes(parts: list[torch.Tensor]) -> memoryview:
    flat = torch.cat([p.contiguous().reshape(-1).view(torch.uint8) for p in parts])
    return flat.numpy().data


def _byte_tensor(payload: bytes | bytearray | memoryview) -> torch.Tensor:
    view = memoryview(payload)
    if view.readonly:
        view = memoryview(bytearray(view))
    return torch.frombuffer(view, dtype=torch.uint8)  # [num_bytes]


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [vectors, d] float32 on the CPU."""
    x = tensor.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        x = (x.view(torch.int16).to(torch.int32) << 16).view(torch.float32)
    return x.float().reshape(-1, x.shape[-1])


@functools.lru_cache(maxsize=1)
def _fp8_values() -> torch.Tensor:
    """The float32 value of each of the 256 e4m3fn bit patterns."""
    return torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()


def _fp8_to_float32(codes: torch.Tensor) -> torch.Tensor:
    """uint8 bits of e4m3fn -> float32, by table."""
    return torch.take(_fp8_values(), codes.long())


def _grouped(vectors: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[vectors, d] float32 -> ([vectors, groups, GROUP_ELEMENTS], d); a last partial group is
    padded with copies of its last element, which widen neither its maximum nor its range."""
    dim = vectors.shape[-1]
    num_groups = math.ceil(dim / GROUP_ELEMENTS)
    padding = num_groups * GROUP_ELEMENTS - dim
    if padding:
        replicate = torch.nn.functional.pad(vectors.unsqueeze(0), (0, padding), mode="replicate")
        vectors = replicate.squeeze(0)
    return vectors.reshape(vectors.shape[0], num_groups, GROUP_ELEMENTS), dim


def _ungrouped(groups: torch.Tensor, dim: int) -> torch.Tensor:
    """[vectors, groups, GROUP_ELEMENTS] -> [vectors, d] (the padding cut off)."""
    return groups.reshape(groups.shape[0], -1)[:, :dim]


def _split(raw: torch.Tensor, sizes: list[int], what: str) -> list[torch.Tensor]:
    if raw.numel() != sum(sizes):
        raise ValueError(f"{what} payload is {raw.numel()} bytes, expected {sum(sizes)}")
    return list(torch.split(raw, sizes))


@dataclass(frozen=True)
class IdentityCodec:
    """`none`: the tensor's own bytes."""

    spec: KVCodecSpec

    def encode(self, tensor: torch.Tensor) -> CodedTensor:
        return CodedTensor(_as_bytes([tensor.detach().cpu()]), _metadata(self.spec, tensor))

    def decode(
        self, payload: bytes | bytearray | memoryview, metadata: dict[str, Any]
    ) -> torch.Tensor:
        dtype = getattr(torch, metadata["dtype"])
        raw = _byte_tensor(payload)
        return raw.view(dtype).reshape(metadata["shape"]).clone()


@dataclass(frozen=True)
class Fp8Codec:
    """`fp8`: e4m3 codes with a float32 scale per group."""

    spec: KVCodecSpec

    def encode(self, tensor: torch.Tensor) -> CodedTensor:
        groups, dim = _grouped(_float32(tensor))
        amax = groups.abs().amax(dim=-1, keepdim=True)  # [vectors, groups, 1]
        scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        codes = _ungrouped((groups / scales).to(torch.float8_e4m3fn), dim)
        return CodedTensor(_as_bytes([codes, scales]), _metadata(self.spec, tensor))

    def decode(
        self, payload: bytes | bytearray | memoryview, metadata: dict[str, Any]
    ) -> torch.Tensor:
        shape, dim = metadata["shape"], metadata["shape"][-1]
        num_vectors, num_groups = math.prod(shape[:-1]), math.ceil(dim / GROUP_ELEMENTS)
        code_bytes, scale_bytes = _split(
            _byte_tensor(payload), [num_vectors * dim, num_vectors * num_groups * 4], "fp8"
        )
        codes = _fp8_to_float32(code_bytes).view(num_vectors, dim)
        scales = scale_bytes.view(torch.float32).view(num_vectors, num_groups, 1)
        groups, _ = _grouped(codes)
        values = _ungrouped(groups * scales, dim)
        return values.to(getattr(torch, metadata["dtype"])).reshape(shape)


@functools.lru_cache(maxsize=32)
def rotation(dim: int, seed: int) -> torch.Tensor:
    """A [dim, dim] float32 orthogonal matrix, the same in every process for (dim, seed)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    orthogonal: torch.Tensor = q * torch.sign(torch.diagonal(r))
    return orthogonal.float()


def rotate_groups(vectors: torch.Tensor, seed: int, *, inverse: bool = False) -> torch.Tensor:
    """[vectors, d] -> each whole group of GROUP_ELEMENTS, and a last partial group, times its
    size's rotation (its transpose with `inverse`)."""
    dim = vectors.shape[-1]
    whole = dim - dim % GROUP_ELEMENTS
    parts = []
    for start, size in ((0, whole), (whole, dim - whole)):
        if size == 0:
            continue
        width = min(size, GROUP_ELEMENTS)
        matrix = rotation(width, seed)
        part = vectors[:, start : start + size].reshape(-1, width)
        parts.append((part @ (matrix.T if inverse else matrix)).view(vectors.shape[0], size))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 -> two per byte, low nibble first (a last odd code pairs with 0)."""
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack_nibbles(packed: torch.Tensor, num_codes: int) -> torch.Tensor:
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(-1)
    return codes[:num_codes]


@dataclass(frozen=True)
class RotatedInt4Codec:
    """`int4-rotated`: seeded orthogonal rotation and 4-bit asymmetric codes, per group."""

    spec: KVCodecSpec
    seed: int = DEFAULT_ROTATION_SEED

    def encode(self, tensor: torch.Tensor) -> CodedTensor:
        groups, dim = _grouped(rotate_groups(_float32(tensor), self.seed))
        low = groups.amin(dim=-1, keepdim=True).to(torch.float16)
        high = groups.amax(dim=-1, keepdim=True)
        step = ((high - low.float()) / INT4_LEVELS).to(torch.float16)
        _check_finite(low, step)
        inverse_step = torch.where(step > 0, 1 / step.float(), torch.zeros_like(high))
        codes = groups.sub(low.float()).mul_(inverse_step).round_().clamp_(0, INT4_LEVELS)
        packed = _pack_nibbles(_ungrouped(codes.to(torch.uint8), dim))
        records = torch.cat([step, low], dim=-1)  # [vectors, groups, 2] float16
        metadata = _metadata(self.spec, tensor, rotation_seed=self.seed)
        return CodedTensor(_as_bytes([packed, records]), metadata)

    def decode(
        self, payload: bytes | bytearray | memoryview, metadata: dict[str, Any]
    ) -> torch.Tensor:
        shape, dim = metadata["shape"], metadata["shape"][-1]
        num_vectors, num_groups = math.prod(shape[:-1]), math.ceil(dim / GROUP_ELEMENTS)
        num_codes = num_vectors * dim
        packed, record_bytes = _split(
            _byte_tensor(payload), [math.ceil(num_codes / 2), num_vectors * num_groups * 4], "int4"
        )
        codes = _unpack_nibbles(packed, num_codes).float().view(num_vectors, dim)
        records = record_bytes.view(torch.float16).float().view(num_vectors, num_groups, 2)
        groups, _ = _grouped(codes)
        rotated = _ungrouped(groups * records[..., :1] + records[..., 1:], dim)
        values = rotate_groups(rotated, int(metadata["rotation_seed"]), inverse=True)
        return values.to(getattr(torch, metadata["dtype"])).reshape(shape)


def _check_finite(low: torch.Tensor, step: torch.Tensor) -> None:
    if not (torch.isfinite(low).all() and torch.isfinite(step).all()):
        raise ValueError("int4-rotated: K/V values exceed float16's range for the group records")
