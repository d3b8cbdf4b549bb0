"""What a client is streamed: the first token right after import or prefill (`first_delta`), then
the step deltas; stop strings end a request where they complete, however many tokens each of
their characters takes."""

from __future__ import annotations

import pytest
import torch
from engine_kit import drain, emitted, greedy, prompt, request, tiny

from prfaas.engine.emulated import make_emulated_engine
from prfaas.engine.loading import LoadedModel, load_model
from prfaas.engine.runner import Engine
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.messages.stop_strings import STOP_MARGIN_CHARS

_CYCLE_LOGIT = 100.0  # logit of a byte's successor; random weights give logits of a few units


def _imported(params: SamplingParams) -> tuple[Engine, int]:
    """A decode engine holding request "r" imported from a prefill engine; its first token."""
    a = Engine(tiny("qwen3_next"))
    a.prefill([GenerateRequest("r", prompt(24), params)])
    exported = a.export("r")
    b = Engine(tiny("qwen3_next"))
    b.import_(exported.manifest, [bytearray(x) for x in exported.buffers], params)
    assert exported.manifest.first_token_id is not None
    return b, exported.manifest.first_token_id


def test_first_delta_then_steps_stream_the_local_output() -> None:
    local = Engine(tiny("qwen3_next")).generate([GenerateRequest("r", prompt(24), greedy(6))])
    engine, first = _imported(greedy(6))
    delta = engine.first_delta("r")
    assert (delta.req_id, delta.token_ids, delta.finish_reason) == ("r", (first,), None)
    assert [*delta.token_ids, *emitted(drain(engine)["r"])] == local["r"]


def test_first_delta_carries_the_finish_of_a_one_token_request() -> None:
    engine, first = _imported(greedy(1))
    delta = engine.first_delta("r")
    assert (delta.token_ids, delta.finish_reason) == ((first,), "length")
    assert not engine.has_unfinished()


def test_first_delta_does_not_emit_a_first_token_that_stops() -> None:
    _, first = _imported(greedy(6))
    params = SamplingParams(max_tokens=6, stop_token_ids=(first,), ignore_eos=True)
    engine, _ = _imported(params)
    delta = engine.first_delta("r")
    assert (delta.token_ids, delta.finish_reason) == ((), "stop")


def test_first_delta_after_prefill_and_before_it() -> None:
    engine = Engine(tiny("llama"))
    engine.add_request(request("r", 10))
    with pytest.raises(UserError, match="not been prefilled"):
        engine.first_delta("r")
    (stepped,) = engine.step()
    assert engine.first_delta("r") == stepped


def test_emulated_first_delta() -> None:
    params = SamplingParams(max_tokens=3, seed=4)
    a = make_emulated_engine("qwen3.5-397b", "H200", 8, sleep=lambda _: None)
    b = make_emulated_engine("qwen3.5-397b", "H20", 8, sleep=lambda _: None)
    (first,) = a.prefill([GenerateRequest("r", (1,) * 64, params)])
    exported = a.export("r")
    b.import_(exported.manifest, exported.buffers, params)
    delta = b.first_delta("r")
    assert (delta.token_ids, delta.finish_reason) == ((first,), None)
    local = make_emulated_engine("qwen3.5-397b", "H200", 8, sleep=lambda _: None)
    expected = local.generate([GenerateRequest("r", (1,) * 64, params)])["r"]
    assert [*delta.token_ids, *emitted(drain(b)["r"])] == expected
    stopping = SamplingParams(max_tokens=3, seed=4, stop_token_ids=(first,))
    c = make_emulated_engine("qwen3.5-397b", "H20", 8, sleep=lambda _: None)
    c.import_(exported.manifest, exported.buffers, stopping)
    assert c.first_delta("r").token_ids == ()
    assert c.first_delta("r").finish_reason == "stop"


def _byte_cycle_llama(text: str) -> LoadedModel:
    """The tiny llama with weights set so that greedy decoding repeats `text`'s UTF-8 bytes.

    Random tiny weights almost never emit valid multi-byte UTF-8, so this model is built for it:
    the layers' output projections are zeroed (the last hidden state is the input token's
    embedding), each byte of the cycle embeds as its own basis vector, and the LM head row of
    the byte that follows it reads that vector. The engine runs it like any other model.
    """
    cycle = list(text.encode())
    assert len(set(cycle)) == len(cycle), "each byte needs one successor"
    loaded = load_model("llama")
    model = loaded.model
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding = model.get_input_embeddings().weight  # [vocab_size, hidden]
        head = model.lm_head.weight  # [vocab_size, hidden]
        for k, (byte, successor) in enumerate(zip(cycle, cycle[1:] + cycle[:1], strict=True)):
            embedding[byte] = 0.0
            embedding[byte, k] = 1.0
            head[successor] = 0.0
            head[successor, k] = _CYCLE_LOGIT
    return loaded


def test_multi_byte_stop_string_ends_the_request_where_it_completes() -> None:
    loaded = _byte_cycle_llama("éж日")  # 2 + 2 + 3 bytes, all distinct
    tokenizer = loaded.tokenizer
    full = Engine(loaded).generate([GenerateRequest("r", tuple("ab é".encode()), greedy(40))])["r"]
    stop = "日éж日éж日é"
    assert stop in tokenizer.decode(full[1:])  # a piece of the output after its first token
    assert len(stop.encode()) > len(stop) + STOP_MARGIN_CHARS  # more tokens than a char-sized tail
    completes_at = next(n for n in range(1, len(full) + 1) if stop in tokenizer.decode(full[:n]))
    engine = Engine(loaded)
    params = SamplingParams(max_tokens=40, stop=(stop,), ignore_eos=True)
    engine.add_request(GenerateRequest("r", tuple("ab é".encode()), params))
    deltas = drain(engine)["r"]
    assert emitted(deltas) == full[:completes_at]
    assert deltas[-1].finish_reason == "stop"
    assert completes_at < len(full)
