"""Prefill: chunked equals one-shot where exact, refused where not; the per-layer callback."""

from __future__ import annotations

import pytest
import torch
from engine_kit import request, tiny

from prfaas.engine.presets import PRESETS
from prfaas.engine.protocol import LayerState
from prfaas.engine.runner import Engine
from prfaas.errors import UserError

CHUNK_EXACT = [name for name, p in PRESETS.items() if p.is_chunk_exact]


@pytest.mark.parametrize("name", CHUNK_EXACT)
def test_chunked_prefill_equals_one_shot(name: str) -> None:
    loaded = tiny(name)
    one_shot = Engine(loaded, record_logits=True)
    chunked = Engine(loaded, chunk_size=32, record_logits=True)
    out_one = one_shot.generate([request("r", 100, max_tokens=6)])["r"]
    out_chunked = chunked.generate([request("r", 100, max_tokens=6)])["r"]
    assert out_chunked == out_one
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(one_shot.requests["r"].logits, chunked.requests["r"].logits, strict=True)
    )
    assert diff < 1e-3


@pytest.mark.parametrize("name", ["mimo_v2_flash", "gpt_oss"])
def test_chunks_longer_than_the_window(name: str) -> None:
    """Sliding layers see 63 cached + 100 new tokens per chunk: still the one-shot answer."""
    one_shot = Engine(tiny(name)).generate([request("r", 250, max_tokens=5)])["r"]
    chunked = Engine(tiny(name), chunk_size=100).generate([request("r", 250, max_tokens=5)])["r"]
    assert chunked == one_shot


@pytest.mark.parametrize("name", ["jamba", "minimax"])
def test_chunking_refused_where_inexact(name: str) -> None:
    with pytest.raises(UserError, match=f"not exact for {name}"):
        Engine(tiny(name), chunk_size=32)
    with pytest.raises(UserError, match="not exact"):
        Engine(tiny(name)).prefill([request("r", 40)], chunk_size=16)


@pytest.mark.parametrize("name", ["qwen3_next", "minimax", "mimo_v2_flash", "nemotron_h"])
def test_layer_callback_fires_in_order_with_final_state(name: str) -> None:
    seen: list[tuple[str, LayerState, list[bytes]]] = []

    def on_layer(req_id: str, state: LayerState) -> None:
        seen.append((req_id, state, [bytes(b) for b in state.buffers]))  # content at fire time

    engine = Engine(tiny(name), chunk_size=None if name == "minimax" else 32)
    engine.prefill([request("a", 70), request("b", 50, offset=1)], on_layer=on_layer)
    for req_id in ("a", "b"):
        fired = [(s, content) for r, s, content in seen if r == req_id]
        exported = engine.export(req_id)
        assert [s.entry.layer_index for s, _ in fired] == list(range(8))
        assert tuple(s.entry for s, _ in fired) == exported.manifest.layers
        sent = [c for _, content in fired for c in content]
        assert sent == [bytes(b) for b in exported.buffers]


def test_callback_only_fires_on_the_last_chunk() -> None:
    calls: list[int] = []
    engine = Engine(tiny("llama"), chunk_size=16)
    engine.prefill([request("r", 64)], on_layer=lambda _, s: calls.append(s.entry.layer_index))
    assert calls == list(range(8))


def test_empty_prompt_and_duplicate_id_are_user_errors() -> None:
    engine = Engine(tiny("llama"))
    with pytest.raises(UserError, match="empty prompt"):
        engine.prefill([request("r", 0)])
    engine.prefill([request("r", 4)])
    with pytest.raises(UserError, match="already"):
        engine.prefill([request("r", 4)])


def test_explicit_positions_continue_after_prefill() -> None:
    engine = Engine(tiny("bamba"))
    engine.prefill([request("r", 33)])
    assert engine.requests["r"].num_computed_tokens == 33
    engine.step()
    assert engine.requests["r"].num_computed_tokens == 34
    assert torch.is_tensor(engine.requests["r"].cache.layers[3].keys)
