"""Emulated engine: cost-model durations, real-size payloads, every byte verified on import."""

from __future__ import annotations

import pytest

from prfaas.engine.emulated import make_emulated_engine
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.models import load_model_spec
from prfaas.perf import CostModel, get_hardware

MODEL = "qwen3.5-397b"


def _pair(slept: list[float]):
    a = make_emulated_engine(MODEL, "H200", 8, sleep=slept.append)
    b = make_emulated_engine(MODEL, "H20", 8, sleep=slept.append)
    return a, b


class _Clock:
    """A clock that sleeping and the test's own "work" advance."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds

    def work(self, seconds: float) -> None:
        self.now_s += seconds


def test_a_prefill_takes_the_cost_models_time_its_own_work_included() -> None:
    """Handing each layer over takes 1 ms (payloads, the transport's queue): the prefill still
    ends the cost model's time after it began, as a GPU's would; relative sleeps would add the
    1 ms per layer (60 ms over the model's 60 layers) to every prefill."""
    clock = _Clock()
    engine = make_emulated_engine(MODEL, "H200", 8, sleep=clock.sleep, clock=lambda: clock.now_s)
    started_s = clock.now_s
    params = SamplingParams(max_tokens=2, seed=5)
    request = GenerateRequest("r", (1,) * 8192, params)
    engine.prefill([request], on_layer=lambda _, __: clock.work(0.001))
    predicted_s = engine.predicted_prefill_s(8192)
    num_layers = load_model_spec(MODEL).num_layers
    assert predicted_s / num_layers > 0.001  # each layer's time holds its work
    assert clock.now_s - started_s == pytest.approx(predicted_s + 0.001)  # the last hand-over


def test_payload_has_the_model_real_size_and_round_trips() -> None:
    slept: list[float] = []
    a, b = _pair(slept)
    params = SamplingParams(max_tokens=4, seed=5)
    fired = []
    a.prefill([GenerateRequest("r", (1,) * 2048, params)], on_layer=lambda _, s: fired.append(s))
    exported = a.export("r")
    spec = load_model_spec(MODEL)
    assert exported.manifest.total_bytes == spec.kv_bytes(2048) > 0
    assert tuple(s.entry for s in fired) == exported.manifest.layers
    cost = CostModel(spec, get_hardware("H200"), 8)
    assert sum(slept) == pytest.approx(cost.t_prefill_s(2048))
    b.import_(exported.manifest, exported.buffers, params)
    tokens = [exported.manifest.first_token_id]
    while b.has_unfinished():
        tokens.extend(t for d in b.step() for t in d.token_ids)
    local = make_emulated_engine(MODEL, "H200", 8, sleep=lambda _: None)
    assert tokens == local.generate([GenerateRequest("r", (1,) * 2048, params)])["r"]


def test_corrupted_or_misrouted_payload_is_caught() -> None:
    a, b = _pair([])
    a.prefill([GenerateRequest("r", (1,) * 512, SamplingParams(max_tokens=2))])
    exported = a.export("r")
    payload = bytearray(b"".join(exported.buffers))
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises(ManifestMismatch, match="differ"):
        b.import_(exported.manifest, [payload])
    other = make_emulated_engine("llama-3.1-70b", "H20", 8, sleep=lambda _: None)
    with pytest.raises(ManifestMismatch, match="emulates"):
        other.import_(exported.manifest, exported.buffers)


def test_decode_step_time_comes_from_the_cost_model() -> None:
    slept: list[float] = []
    engine = make_emulated_engine(MODEL, "H20", 8, sleep=slept.append)
    for i in range(3):
        engine.add_request(GenerateRequest(f"r{i}", (1,) * 100, SamplingParams(max_tokens=3)))
    for _ in range(3):
        engine.step()  # three prefills
    slept.clear()
    engine.step()
    cost = CostModel(load_model_spec(MODEL), get_hardware("H20"), 8)
    assert slept == [pytest.approx(cost.t_decode_step_s(3, 100))]


def test_generated_ids_come_from_the_given_output_ids() -> None:
    allowed = (40, 41, 42)
    params = SamplingParams(max_tokens=64, seed=3)
    request = GenerateRequest("r", (1,) * 64, params)
    narrow = make_emulated_engine(MODEL, "H20", 8, sleep=lambda _: None, output_token_ids=allowed)
    tokens = narrow.generate([request])["r"]
    assert len(tokens) == 64 and set(tokens) <= set(allowed) and len(set(tokens)) > 1
    wide = make_emulated_engine(MODEL, "H20", 8, sleep=lambda _: None)
    assert not set(wide.generate([request])["r"]) <= set(allowed)  # the whole vocabulary
