"""What an engine refuses at the door: foreign token ids, over-long sequences, exports of decoded
requests and state made by other weights, for the torch engine and the emulated one alike."""

from __future__ import annotations

from dataclasses import replace

import pytest
from engine_kit import drain, emitted, greedy, request, tiny

from prfaas.engine.emulated import make_emulated_engine
from prfaas.engine.loading import LoadedModel, load_model, weights_checksum
from prfaas.engine.presets import TINY_VOCAB_SIZE
from prfaas.engine.runner import Engine
from prfaas.engine.validation import InvalidRequest, ManifestMismatch
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.models import load_model_spec

EMULATED_MODEL = "qwen3.5-397b"


def _short_context_llama(max_positions: int) -> LoadedModel:
    """A fresh tiny llama whose config allows only `max_positions` positions."""
    loaded = load_model("llama")
    loaded.model.config.max_position_embeddings = max_positions
    return loaded


def _emulated(**kwargs: object):  # type: ignore[no-untyped-def]
    return make_emulated_engine(EMULATED_MODEL, "H200", 8, sleep=lambda _: None, **kwargs)


def _bad_prompt(bad_id: int) -> GenerateRequest:
    return GenerateRequest("bad", (5, bad_id, 7), greedy(3))


@pytest.mark.parametrize("bad_id", [-1, TINY_VOCAB_SIZE, 10_000])
def test_out_of_vocab_prompt_is_refused_and_healthy_requests_go_on(bad_id: int) -> None:
    engine = Engine(tiny("llama"))
    with pytest.raises(InvalidRequest, match=rf"'bad'.*id {bad_id} at index 1.*\[0, 264\)"):
        engine.add_request(_bad_prompt(bad_id))
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.prefill([request("early", 8), _bad_prompt(bad_id)])
    assert engine.requests == {}  # every request is checked before any is prefilled
    healthy = request("ok", 20, max_tokens=5)
    assert engine.generate([healthy]) == Engine(tiny("llama")).generate([healthy])


def test_a_request_named_twice_in_one_prefill_is_refused_before_any_prefill() -> None:
    for engine in (Engine(tiny("llama")), _emulated()):
        with pytest.raises(InvalidRequest, match="'r' appears twice"):
            engine.prefill([request("r", 8), request("other", 8), request("r", 8)])
        assert engine.requests == {}


def test_prompt_longer_than_the_model_positions_is_refused() -> None:
    engine = Engine(_short_context_llama(16))
    with pytest.raises(InvalidRequest, match="17 tokens, the model takes at most 16 positions"):
        engine.add_request(request("long", 17))
    with pytest.raises(InvalidRequest, match="at most 16 positions"):
        engine.prefill([request("long", 17)])
    engine.add_request(request("fits", 14, max_tokens=10))
    out = drain(engine)["fits"]
    assert len(emitted(out)) == 3  # prefill's token, then decodes at positions 14 and 15 only
    assert out[-1].finish_reason == "length"


def test_import_refuses_foreign_first_token_and_over_long_state() -> None:
    a = Engine(tiny("llama"))
    a.prefill([request("r", 20)])
    exported = a.export("r")
    buffers = [bytearray(b) for b in exported.buffers]
    receiver = Engine(tiny("llama"))
    for bad_id in (-3, TINY_VOCAB_SIZE):
        bad = replace(exported.manifest, first_token_id=bad_id)
        with pytest.raises(InvalidRequest, match=f"first token id {bad_id}"):
            receiver.import_(bad, buffers, greedy(4))
        with pytest.raises(InvalidRequest, match=f"first token id {bad_id}"):
            receiver.import_empty(bad, greedy(4))
    with pytest.raises(InvalidRequest, match="20 tokens, the model takes at most 16"):
        Engine(_short_context_llama(16)).import_(exported.manifest, buffers, greedy(4))
    assert receiver.requests == {}


def test_emulated_engine_refuses_foreign_ids_and_over_long_prompts() -> None:
    vocab_size = load_model_spec(EMULATED_MODEL).vocab_size
    engine = _emulated()
    with pytest.raises(InvalidRequest, match=f"id {vocab_size} at index 1"):
        engine.add_request(_bad_prompt(vocab_size))
    with pytest.raises(InvalidRequest, match="id -1 at index 1"):
        engine.prefill([_bad_prompt(-1)])
    assert engine.max_positions == 262144  # the spec's own max_position_embeddings
    limited = _emulated(max_positions=64)
    with pytest.raises(InvalidRequest, match="65 tokens, the model takes at most 64"):
        limited.add_request(GenerateRequest("long", (1,) * 65, greedy(2)))
    limited.prefill([GenerateRequest("r", (1,) * 16, SamplingParams(max_tokens=2, seed=1))])
    exported = limited.export("r")
    bad = replace(exported.manifest, req_id="r2", first_token_id=vocab_size)
    with pytest.raises(InvalidRequest, match=f"first token id {vocab_size}"):
        _emulated().import_(bad, exported.buffers)


def test_export_after_decoding_is_refused() -> None:
    engine = Engine(tiny("qwen3_next"))
    engine.prefill([request("r", 20, max_tokens=6)])
    engine.export("r")  # just prefilled: fine
    engine.step()
    with pytest.raises(InvalidRequest, match="decoded 1 tokens past its first"):
        engine.export("r")
    emulated = _emulated()
    emulated.prefill([GenerateRequest("r", (1,) * 16, SamplingParams(max_tokens=4, seed=2))])
    emulated.step()
    with pytest.raises(InvalidRequest, match="decoded 1 tokens past its first"):
        emulated.export("r")


def test_state_of_other_weights_is_refused_naming_both_fingerprints() -> None:
    other = load_model("qwen3_next", "fp32", seed=1)
    a = Engine(other)
    a.prefill([request("r", 20)])
    exported = a.export("r")
    same_shapes = Engine(tiny("qwen3_next"))
    same_shapes.prefill([request("r", 20)])
    local = same_shapes.export("r").manifest
    assert exported.manifest.layers == local.layers  # same layout: only the weights differ
    theirs, ours = other.fingerprint, tiny("qwen3_next").fingerprint
    assert theirs == weights_checksum(other.model) != ours
    assert local.model_fingerprint == ours
    receiver = Engine(tiny("qwen3_next"))
    buffers = [bytearray(b) for b in exported.buffers]
    named_both = f"model {theirs[:12]}, this engine serves {ours[:12]}"
    with pytest.raises(ManifestMismatch, match=named_both):
        receiver.import_(exported.manifest, buffers, greedy(4))
    with pytest.raises(ManifestMismatch, match=theirs[:12]):
        receiver.import_empty(exported.manifest, greedy(4))
    assert receiver.requests == {}
    unstated = replace(exported.manifest, model_fingerprint="")  # a sender that states none
    receiver.import_(unstated, buffers, greedy(4))


def test_emulated_state_of_another_seed_is_refused() -> None:
    sender = _emulated(seed=1)
    sender.prefill([GenerateRequest("r", (1,) * 32, SamplingParams(max_tokens=2, seed=3))])
    exported = sender.export("r")
    assert exported.manifest.model_fingerprint == f"emulated:{EMULATED_MODEL}:1"
    with pytest.raises(ManifestMismatch, match=f"emulated:{EMULATED_MODEL}:1.*:{EMULATED_MODEL}:0"):
        _emulated(seed=0).import_(exported.manifest, exported.buffers)
    _emulated(seed=1).import_(exported.manifest, exported.buffers)
