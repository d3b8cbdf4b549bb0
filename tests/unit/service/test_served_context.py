"""The context an emulated deployment accepts is its emulated model's own, not the tiny byte
tokenizer's: the emulated 1T example takes paper-scale prompts (an 11K-word prompt is about 66K
byte tokens; the paper's lengths go to 128K) while a deployment running a real model keeps its
model's context."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.engine.emulated import make_emulated_engine
from prfaas.router.intake import ApiError, RequestIntake
from prfaas.service.text import served_codec
from prfaas.topology import Topology, load_topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PAPER_CONTEXT_TOKENS = 131072  # paper-1t's max_position_embeddings
WORDS_11K = "lorem " * 11_000  # 66,000 byte tokens: past the tiny presets' 65,536


def _prepare(topology: Topology, prompt: str) -> int:
    intake = RequestIntake(topology, served_codec(topology))
    body = {"model": topology.model.served_name, "prompt": prompt, "max_tokens": 16}
    return len(intake.prepare(body, is_chat=False).request.prompt_token_ids)


def test_the_emulated_1t_example_accepts_a_paper_scale_prompt() -> None:
    topology = load_topology(EXAMPLES / "emulated-1t.toml")
    assert served_codec(topology).max_model_len == PAPER_CONTEXT_TOKENS
    assert _prepare(topology, WORDS_11K) == len(WORDS_11K)


def test_the_emulated_engine_takes_the_same_context() -> None:
    engine = make_emulated_engine("paper-1t", "h20", 8)
    assert engine.max_positions == PAPER_CONTEXT_TOKENS


def test_a_deployment_of_a_real_model_keeps_its_models_context() -> None:
    topology = load_topology(EXAMPLES / "local-tiny.toml")
    assert served_codec(topology).max_model_len == 65536
    with pytest.raises(ApiError, match="maximum context length is 65536"):
        _prepare(topology, WORDS_11K)
