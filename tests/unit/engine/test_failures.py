"""A request that breaks inside the engine fails alone: it ends with an error delta and loses its
state, and the healthy requests beside it get exactly the tokens they get when run by themselves.

The broken requests are made past the entry checks, by editing an admitted request's state: a
prompt or last token outside the vocabulary, or a cache holding NaN.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_kit import drain, emitted, request, tiny

from prfaas.engine.presets import PRESETS
from prfaas.engine.rollback import CacheSnapshot
from prfaas.engine.runner import Engine
from prfaas.engine.validation import InvalidRequest

OUT_OF_VOCAB = 10_000


def _solo(name: str, req_id: str, num_tokens: int, offset: int) -> list[int]:
    healthy = request(req_id, num_tokens, max_tokens=8, offset=offset)
    return Engine(tiny(name)).generate([healthy])[req_id]


def _assert_failed_alone(engine: Engine, deltas: dict[str, list[Any]], reason: str) -> None:
    last = deltas["bad"][-1]
    assert last.finish_reason == "error"
    assert last.error is not None and reason in last.error and "\n" not in last.error
    assert engine.requests["bad"].cache is None  # its state is gone
    assert not engine.has_unfinished()


def test_failing_prefill_in_step_ends_only_that_request() -> None:
    engine = Engine(tiny("llama"))
    engine.add_request(request("bad", 12, max_tokens=8, offset=1))
    engine.add_request(request("ok", 30, max_tokens=8, offset=2))
    engine.requests["bad"].prompt_token_ids = (*engine.requests["bad"].prompt_token_ids, 10_000)
    deltas = drain(engine)
    _assert_failed_alone(engine, deltas, "prefill failed: IndexError")
    assert emitted(deltas["bad"]) == []
    assert emitted(deltas["ok"]) == _solo("llama", "ok", 30, 2)


@pytest.mark.parametrize("name", ["llama", "qwen3_next"])
def test_out_of_vocab_token_in_a_batched_decode_ends_only_that_request(name: str) -> None:
    engine = Engine(tiny(name))
    engine.add_request(request("ok", 30, max_tokens=8, offset=2))
    engine.add_request(request("bad", 12, max_tokens=8, offset=1))
    engine.step()
    engine.step()  # both prefilled; the next step decodes them in one batch
    engine.requests["bad"].output_token_ids[-1] = OUT_OF_VOCAB
    deltas = drain(engine)
    _assert_failed_alone(engine, deltas, "decode failed: IndexError")
    assert [engine.requests["ok"].output_token_ids[0], *emitted(deltas["ok"])] == _solo(
        name, "ok", 30, 2
    )


def _poison(tensor: torch.Tensor) -> None:
    with torch.inference_mode():  # the engine's cache tensors are inference tensors
        tensor.fill_(float("nan"))


def _raise_on_nan_rows(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: a decoder layer that refuses non-finite input hidden states."""
    hidden = args[0] if args else kwargs["hidden_states"]  # [batch, tokens, hidden]
    if not bool(torch.isfinite(hidden).all()):
        raise FloatingPointError("non-finite hidden states")


def test_forward_failing_mid_stack_is_rolled_back_before_the_retry() -> None:
    """qwen3_next's layers 0-2 and 4 update their recurrent and conv states in place before the
    check at layer 5 raises; the healthy request is only exact if those updates are undone."""
    loaded = tiny("qwen3_next")
    engine = Engine(loaded)
    engine.prefill([request("ok", 30, max_tokens=8, offset=2), request("bad", 12, offset=1)])
    _poison(engine.requests["bad"].cache.layers[3].keys)  # a full-attention layer
    hook = loaded.model.model.layers[5].register_forward_pre_hook(
        _raise_on_nan_rows, with_kwargs=True
    )
    try:
        deltas = drain(engine)
    finally:
        hook.remove()
    _assert_failed_alone(engine, deltas, "decode failed: FloatingPointError")
    assert [engine.requests["ok"].output_token_ids[0], *emitted(deltas["ok"])] == _solo(
        "qwen3_next", "ok", 30, 2
    )


def test_nan_logits_end_the_request_instead_of_sampling_garbage() -> None:
    engine = Engine(tiny("llama"))
    engine.prefill([request("ok", 30, max_tokens=8, offset=2), request("bad", 12, offset=1)])
    _poison(engine.requests["bad"].cache.layers[2].values)
    deltas = drain(engine)
    _assert_failed_alone(engine, deltas, "sampling failed: FloatingPointError")
    assert [engine.requests["ok"].output_token_ids[0], *emitted(deltas["ok"])] == _solo(
        "llama", "ok", 30, 2
    )


def test_failing_prefill_call_leaves_nothing_behind() -> None:
    """A prefill whose layer callback raises (a transport error) drops its request; before, the
    half-prefilled request stayed and broke every later step."""

    def lost_link(_req_id: str, _state: object) -> None:
        raise ConnectionResetError("decode instance went away")

    engine = Engine(tiny("llama"))
    with pytest.raises(ConnectionResetError):
        engine.prefill([request("r", 20)], on_layer=lost_link)
    assert engine.requests == {}
    assert (
        engine.generate([request("next", 20, max_tokens=4)])["next"]
        == _solo("llama", "next", 20, 0)[:4]
    )


def test_failed_request_cannot_be_exported() -> None:
    engine = Engine(tiny("llama"))
    engine.add_request(request("bad", 12))
    engine.requests["bad"].prompt_token_ids = (OUT_OF_VOCAB,)
    engine.step()
    with pytest.raises(InvalidRequest, match="failed"):
        engine.export("bad")
    assert engine.first_delta("bad").finish_reason == "error"


@pytest.mark.parametrize("name", list(PRESETS))
def test_snapshot_restore_undoes_a_whole_batched_forward(name: str) -> None:
    """Every architecture's cache is back to its exact bytes after a forward and a restore."""
    engine = Engine(tiny(name))
    engine.prefill([request("a", 70, max_tokens=4), request("b", 30, max_tokens=4, offset=1)])
    group = [engine.requests["a"], engine.requests["b"]]
    before = {r.req_id: _state_bytes(engine, r.req_id) for r in group}
    with torch.inference_mode():
        cache, mask = engine._batcher.batch_cache(group)
        snapshot = CacheSnapshot.take(cache)
        engine._runner.forward_decode(group, cache, mask)
        snapshot.restore()
    assert {r.req_id: _state_bytes(engine, r.req_id) for r in group} == before


def _state_bytes(engine: Engine, req_id: str) -> tuple[object, list[bytes]]:
    exported = engine.export(req_id, transfer_id="t")
    return exported.manifest.layers, [bytes(b) for b in exported.buffers]
