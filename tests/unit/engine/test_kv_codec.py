"""The KV codecs on fixed seeded K/V: `none` is bit-exact, fp8 and int4-rotated stay within a
measured relative-error bound, every payload has exactly the bytes the model side predicts, and
the rotation comes back from the seed in the metadata."""

from __future__ import annotations

import json

import pytest
import torch

from prfaas.engine.kv_codec import kv_codec, rotation
from prfaas.errors import UserError
from prfaas.models.kv_codec import get_kv_codec

# measured on these inputs: fp8 0.024-0.025, int4-rotated 0.085-0.090 (relative Frobenius error)
FP8_MAX_REL_ERROR = 0.03
INT4_ROTATED_MAX_REL_ERROR = 0.11
SHAPES = [  # [batch, kv_heads, tokens, head_dim], dtype
    ((1, 2, 300, 256), torch.bfloat16),  # qwen3-next full attention
    ((1, 8, 129, 128), torch.float32),
    ((1, 4, 77, 80), torch.float16),  # head_dim not a whole number of groups
]


def _kv(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def _round_trip(name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    codec = kv_codec(name)
    coded = codec.encode(tensor)
    metadata = json.loads(json.dumps(coded.metadata))  # travels as JSON
    return codec.decode(bytes(coded.payload), metadata), len(coded.payload)


def _relative_error(decoded: torch.Tensor, tensor: torch.Tensor) -> float:
    return float((decoded.float() - tensor.float()).norm() / tensor.float().norm())


@pytest.mark.parametrize(("shape", "dtype"), SHAPES)
def test_none_is_bit_exact(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tensor = _kv(shape, dtype)
    decoded, _ = _round_trip("none", tensor)
    assert decoded.dtype == dtype and torch.equal(decoded, tensor)


@pytest.mark.parametrize(
    ("name", "bound"), [("fp8", FP8_MAX_REL_ERROR), ("int4-rotated", INT4_ROTATED_MAX_REL_ERROR)]
)
@pytest.mark.parametrize(("shape", "dtype"), SHAPES)
def test_error_bound_and_exact_size(
    name: str, bound: float, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    tensor = _kv(shape, dtype)
    decoded, num_bytes = _round_trip(name, tensor)
    assert decoded.dtype == dtype and decoded.shape == tensor.shape
    assert 0 < _relative_error(decoded, tensor) < bound
    num_vectors = tensor.numel() // shape[-1]
    dtype_name = str(dtype).removeprefix("torch.")
    assert num_bytes == num_vectors * get_kv_codec(name).vector_bytes(shape[-1], dtype_name)


def test_outlier_channel_does_not_widen_int4_error() -> None:
    """One channel 20x larger: the rotation spreads it, so the error stays at the Gaussian's."""
    tensor = _kv((1, 2, 300, 256), torch.float32)
    outlier = tensor.clone()
    outlier[..., 3] *= 20
    plain = _relative_error(_round_trip("int4-rotated", tensor)[0], tensor)
    spread = _relative_error(_round_trip("int4-rotated", outlier)[0], outlier)
    assert spread < INT4_ROTATED_MAX_REL_ERROR and spread < plain * 1.1


def test_rotation_is_orthogonal_and_comes_from_the_seed() -> None:
    r = rotation(256, 7)
    assert torch.allclose(r @ r.T, torch.eye(256), atol=1e-5)
    assert torch.equal(r, rotation.__wrapped__(256, 7))  # rebuilt, not cached: the same
    assert not torch.equal(r, rotation(256, 8))
    tensor = _kv((1, 2, 16, 256), torch.float32)
    codec = kv_codec("int4-rotated", rotation_seed=7)
    coded = codec.encode(tensor)
    assert coded.metadata["rotation_seed"] == 7
    wrong_seed = {**coded.metadata, "rotation_seed": 8}
    assert _relative_error(codec.decode(coded.payload, wrong_seed), tensor) > 0.5
    assert _relative_error(codec.decode(coded.payload, coded.metadata), tensor) < 0.11


def test_non_contiguous_slice_and_all_zero_groups() -> None:
    window = _kv((1, 2, 64, 128), torch.bfloat16)[:, :, 10:40]  # a sliding window's slice
    for name in ("none", "fp8", "int4-rotated"):
        decoded, _ = _round_trip(name, window)
        assert _relative_error(decoded, window) < INT4_ROTATED_MAX_REL_ERROR
        zeros = torch.zeros(1, 1, 4, 64)
        assert torch.equal(_round_trip(name, zeros)[0], zeros)


def test_truncated_payload_is_refused() -> None:
    codec = kv_codec("fp8")
    coded = codec.encode(_kv((1, 1, 8, 64), torch.float32))
    with pytest.raises(ValueError, match="fp8 payload is 100 bytes, expected"):
        codec.decode(bytes(coded.payload)[:100], coded.metadata)


def test_bad_codec_name_names_the_choices() -> None:
    with pytest.raises(UserError, match="unknown KV codec 'int3'; choose one of: none, fp8, "):
        kv_codec("int3")


def test_int4_refuses_values_beyond_float16_records() -> None:
    """The int4 group records are float16: a group beyond their range is refused, not sent as
    inf; fp8 keeps a float32 scale and codes it."""
    tensor = torch.full((1, 1, 2, 64), 1.0e6)
    with pytest.raises(ValueError, match="exceed float16's range"):
        kv_codec("int4-rotated").encode(tensor)
    decoded, _ = _round_trip("fp8", tensor)
    assert _relative_error(decoded, tensor) < FP8_MAX_REL_ERROR
