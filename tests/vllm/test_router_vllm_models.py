"""Token identity through the router on the hybrid models: for a gated-delta-net hybrid
(qwen3_next) and a sliding-window model (gemma3_text), tiny, random, bf16, made here, `prfaas up`
starts a PrfaaS prefill r0 and a PD decode d0 on vLLM; every prompt is longer than t, so it is
prefilled by r0, its attention KV and recurrent state cross to d0 over the PrfaaS connector, and
d0 decodes. The text the `openai` client gets, whole and streamed, equals the text of one plain
vLLM process's greedy tokens, for prompts that end mid-block and exactly on a block. (The dense
llama, both routes and the metrics: test_router_vllm.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import read_transfer_log, run_engine
from test_router_vllm import (
    NUM_OUTPUT_TOKENS,
    THRESHOLD_TOKENS,
    _checkpoint,
    _completion,
    _streamed,
    _topology,
    prfaas_up,
)

from polling import wait_until
from prfaas.launch.vllm_serve import VLLM_TRANSFER_LOG_DIR_ENV
from prfaas.service.text import load_codec
from prfaas.topology import ModelConfig
from topologies import Node, decode, pd, prfaas

# CPU vLLM's block: 128 tokens for gemma3_text, 256 for qwen3_next (its attention blocks are
# aligned to the state pages); the other lengths end mid-block
PROMPT_LENGTHS = {"qwen3_next": (100, 256, 300), "gemma3_text": (100, 128, 300)}
TWO_INSTANCES = (prfaas(Node("r0")), pd(decode("d0")))


def _prompt(num_tokens: int, salt: int) -> list[int]:
    """Prompts of different salts differ from their first token: no prompt finds another's
    blocks in a prefix cache, so every one needs its transfer."""
    return [(i * 11 + 5 + 97 * salt) % 240 + 3 for i in range(num_tokens)]


@pytest.fixture(scope="module", params=sorted(PROMPT_LENGTHS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, str, Path]]:
    """(router URL, checkpoint, preset, the connectors' transfer logs) of a running
    two-instance vLLM deployment."""
    preset = str(request.param)
    work = tmp_path_factory.mktemp(f"router-{preset}")
    model = _checkpoint(work, preset)
    config, url = _topology(work, model, clusters=TWO_INSTANCES)
    transfers = work / "transfers"
    transfers.mkdir()
    with prfaas_up(config, url, work, {VLLM_TRANSFER_LOG_DIR_ENV: str(transfers)}):
        yield url, model, preset, transfers


def _reference_texts(model: Path, prompts: list[list[int]], work: Path) -> list[str]:
    """The text of one plain vLLM process's greedy tokens for each prompt."""
    spec = {"prompts": prompts, "num_output_tokens": NUM_OUTPUT_TOKENS, "dtype": "bfloat16"}
    results = run_engine("reference", model, spec, work)["results"]
    codec = load_codec(ModelConfig(str(model)))
    return [codec.decode(r["tokens"]) for r in results]


def test_hybrid_models_through_the_router_equal_one_vllm_instance(
    deployment: tuple[str, Path, str, Path], tmp_path: Path
) -> None:
    url, model, preset, transfers = deployment
    lengths = PROMPT_LENGTHS[preset]
    assert min(lengths) > THRESHOLD_TOKENS  # every prompt takes the PrfaaS route
    whole_prompts = [_prompt(n, salt) for salt, n in enumerate(lengths)]
    streamed_prompts = [_prompt(n, len(lengths) + salt) for salt, n in enumerate(lengths)]
    expected = _reference_texts(model, whole_prompts + streamed_prompts, tmp_path)
    assert len(set(expected)) > 1, "the reference texts do not depend on the prompt"
    for i, num_tokens in enumerate(lengths):
        route, info, whole = _completion(url, whole_prompts[i])
        assert route == "prfaas" and info["prefill_instance"] == "r0", num_tokens
        assert info["decode_instance"] == "d0"
        assert whole == expected[i], (preset, num_tokens)
        _assert_loaded(transfers, str(info["transfer_id"]))
        streamed = _streamed(url, streamed_prompts[i])
        assert streamed == expected[len(lengths) + i], (preset, num_tokens, "streamed")
    records = read_transfer_log(transfers / "d0.jsonl")
    assert [r["event"] for r in records] == ["loaded"] * 2 * len(lengths), records
    assert sorted(r["num_prompt_tokens"] for r in records) == sorted(lengths * 2)


def _assert_loaded(transfers: Path, transfer_id: str) -> None:
    """d0's connector loaded this request's transfer (it was not recomputed), and its bytes
    are r0's."""

    def settled() -> bool:  # r0 writes its record once d0's acknowledgement arrives
        return transfer_id in _by_id(transfers / "r0.jsonl")

    wait_until(settled, 60.0, f"r0's record of transfer {transfer_id}")
    sent, got = _by_id(transfers / "r0.jsonl"), _by_id(transfers / "d0.jsonl")
    assert transfer_id in got, f"d0 never loaded transfer {transfer_id} (recomputed?)"
    assert got[transfer_id]["event"] == "loaded", got[transfer_id]
    assert sent[transfer_id]["event"] == "sent"
    assert got[transfer_id]["num_bytes"] == sent[transfer_id]["num_bytes"] > 0


def _by_id(path: Path) -> dict[str, dict[str, object]]:
    return {str(r["transfer_id"]): r for r in read_transfer_log(path)}
