"""Tiny presets: layer patterns derived from real configs, deterministic weights, varied outputs."""

from __future__ import annotations

import pytest
from engine_kit import request, tiny

from prfaas.engine.cache_layout import layer_kinds
from prfaas.engine.loading import load_model, weights_checksum
from prfaas.engine.presets import PRESETS, real_layer_kinds, shrink_pattern
from prfaas.engine.runner import Engine
from prfaas.errors import UserError
from prfaas.types import LayerKind

F, L, S = "full_attention", "linear_attention", "sliding_attention"


def test_shrink_keeps_minority_ratio_and_ends_on_it() -> None:
    assert shrink_pattern(([L] * 3 + [F]) * 12) == ([L] * 3 + [F]) * 2
    assert shrink_pattern([S, F] * 18) == [S, F] * 4
    assert shrink_pattern([F] * 80) == [F] * 8
    assert shrink_pattern(list("MEMEM*EMEMEM*") * 4) == list("MEMEMEM*")


def test_real_kinds_read_every_pattern_style() -> None:
    assert (
        real_layer_kinds({"num_hidden_layers": 8, "full_attention_interval": 4})
        == ([L] * 3 + [F]) * 2
    )
    mimo = {"num_hidden_layers": 3, "hybrid_layer_pattern": [0, 1, 1]}
    assert real_layer_kinds(mimo) == [F, S, S]
    kimi = {"num_hidden_layers": 4, "linear_attn_config": {"full_attn_layers": [4]}}
    assert real_layer_kinds(kimi) == [L, L, L, F]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen3_next", "lllflllf"),
        ("kimi_linear", "lllmlllm"),
        ("mimo_v2_flash", "sssfsssf"),
        ("gpt_oss", "sfsfsfsf"),
        ("nemotron_h", "MpMpMpMf"),
        ("jamba", "MMMMfMMM"),
        ("lfm2", "ccfccfcf"),
        ("llama", "ffffffff"),
    ],
)
def test_tiny_layer_patterns(name: str, expected: str) -> None:
    letter = {
        LayerKind.FULL_ATTENTION: "f",
        LayerKind.MLA: "m",
        LayerKind.LINEAR_ATTENTION: "l",
        LayerKind.SLIDING_WINDOW: "s",
        LayerKind.MAMBA: "M",
        LayerKind.MLP_ONLY: "p",
        LayerKind.SHORT_CONV: "c",
    }
    kinds = layer_kinds(tiny(name).config)
    assert "".join(letter[k] for k in kinds) == expected


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a = weights_checksum(load_model("qwen3_next", "fp32", seed=0).model)
    b = weights_checksum(load_model("qwen3_next", "fp32", seed=0).model)
    c = weights_checksum(load_model("qwen3_next", "fp32", seed=1).model)
    assert a == b != c


def test_unknown_preset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="neither a tiny preset"):
        load_model("no_such_model")
    with pytest.raises(UserError, match="dtype"):
        load_model("llama", "fp8")


@pytest.mark.parametrize("name", list(PRESETS))
def test_greedy_outputs_vary(name: str) -> None:
    out = Engine(tiny(name)).generate([request("r", 24, max_tokens=8)])["r"]
    assert len(set(out)) >= 3, out
