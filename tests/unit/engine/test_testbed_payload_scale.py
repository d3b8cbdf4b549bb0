"""Payload scaling of the emulated engine (`[model] payload_scale`, the testbed's scaled link):
every tensor shrinks by the factor, the scaled payload still verifies byte by byte, and an
engine with another scale refuses it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.engine.emulated import layer_tensor_sizes, make_emulated_engine
from prfaas.engine.validation import ManifestMismatch
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.models import load_model_spec

MODEL = "paper-1t"
NUM_TOKENS = 4096


def _engine(payload_scale: float):
    return make_emulated_engine(MODEL, "h200", 8, sleep=lambda _: None, payload_scale=payload_scale)


def _export(engine, num_tokens: int = NUM_TOKENS):
    engine.prefill([GenerateRequest("r", (1,) * num_tokens, SamplingParams(max_tokens=2, seed=1))])
    return engine.export("r")


def test_a_scaled_payload_is_that_fraction_of_the_real_bytes_and_verifies() -> None:
    exported = _export(_engine(0.01))
    real = load_model_spec(MODEL).kv_bytes(NUM_TOKENS)
    assert exported.manifest.total_bytes == pytest.approx(real * 0.01, rel=1e-3)
    receiver = make_emulated_engine(MODEL, "h20", 8, sleep=lambda _: None, payload_scale=0.01)
    receiver.import_(exported.manifest, exported.buffers)  # every byte checked
    assert receiver.has_unfinished()


def test_an_engine_of_another_scale_refuses_the_payload() -> None:
    exported = _export(_engine(0.01))
    with pytest.raises(ManifestMismatch, match="tensors"):
        _engine(1.0).import_(exported.manifest, exported.buffers)


def test_scale_one_keeps_the_model_real_size() -> None:
    exported = _export(_engine(1.0), 256)
    assert exported.manifest.total_bytes == load_model_spec(MODEL).kv_bytes(256)


@pytest.mark.parametrize("scale", [0.0, -0.1, 1.5])
def test_a_scale_outside_zero_to_one_is_refused(scale: float) -> None:
    with pytest.raises(UserError, match="payload_scale"):
        _engine(scale)


@settings(max_examples=50, deadline=None)
@given(
    num_tokens=st.integers(1, 200_000),
    scale=st.floats(1e-6, 1.0, allow_nan=False, allow_infinity=False),
)
def test_every_part_stays_present_and_within_rounding_of_its_share(
    num_tokens: int, scale: float
) -> None:
    spec = load_model_spec(MODEL)
    for layer in spec.layers[:4]:
        args = (layer, num_tokens, "bfloat16", spec.recurrent_state_dtype, spec.activation_dtype)
        real = layer_tensor_sizes(*args)
        scaled = layer_tensor_sizes(*args, 0, scale)
        assert [name for name, _ in scaled] == [name for name, _ in real]
        for (_, want), (_, got) in zip(real, scaled, strict=True):
            assert got >= 1 and abs(got - want * scale) <= max(1.0, 0.5 + 1e-9 * want)
