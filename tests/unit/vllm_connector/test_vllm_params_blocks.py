"""The vLLM connector's pure parts, without vLLM: the kv_transfer_params, which blocks of a
request carry its state, and the model identity hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.types import LayerKind
from prfaas.vllm.blocks import CacheLayer, layer_number, sent_block_positions
from prfaas.vllm.identity import model_fingerprint, unsupported_parallelism
from prfaas.vllm.params import (
    ConsumerParams,
    ProducerParams,
    TransferParamsError,
    consumer_params,
    producer_params,
)


def test_params_round_trip_and_absent_params_mean_no_transfer() -> None:
    sent = ProducerParams("10.0.0.2:15000", "t-1")
    assert producer_params(sent.to_dict()) == sent
    back = ConsumerParams("t-1", 300, 42)
    assert consumer_params(back.to_dict()) == back
    assert producer_params(None) is None and consumer_params({}) is None
    assert producer_params(back.to_dict()) is None  # a decode request's params: nothing to send


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"do_remote_decode": True, "transfer_id": "t"}, "remote_kv_address"),
        ({"do_remote_decode": True, "remote_kv_address": "nohost", "transfer_id": "t"},
         "remote_kv_address"),
        ({"do_remote_decode": True, "remote_kv_address": "h:1", "transfer_id": ""}, "transfer_id"),
    ],
)  # fmt: skip
def test_malformed_producer_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(TransferParamsError, match=field):
        producer_params(params)


def test_malformed_consumer_params_name_the_field() -> None:
    params = {"do_remote_prefill": True, "transfer_id": "t", "first_token_id": 3}
    with pytest.raises(TransferParamsError, match="num_prompt_tokens"):
        consumer_params({**params, "num_prompt_tokens": 0})
    with pytest.raises(TransferParamsError, match="first_token_id"):
        consumer_params({**params, "num_prompt_tokens": 5, "first_token_id": True})


def test_the_decode_prompt_must_be_the_prefilled_prompt_then_the_first_token() -> None:
    params = ConsumerParams("t", num_prompt_tokens=3, first_token_id=9)
    assert params.prompt_mismatch([1, 2, 3, 9]) is None
    assert "has 3 tokens" in str(params.prompt_mismatch([1, 2, 3]))
    assert "not first_token_id 9" in str(params.prompt_mismatch([1, 2, 3, 8]))


def _layer(kind: LayerKind, window: int = 0) -> CacheLayer:
    return CacheLayer("model.layers.5.attn", 5, 0, kind, 4, window, (2, 4, 8), "bfloat16")


def test_full_attention_sends_every_block_of_the_prompt() -> None:
    layer = _layer(LayerKind.FULL_ATTENTION)
    assert sent_block_positions(layer, 9, [7, 8, 9, 10]) == [0, 1, 2]  # 9 tokens: 3 blocks
    assert sent_block_positions(layer, 8, [7, 8, 9]) == [0, 1]  # ends on a block


def test_sliding_window_sends_only_the_window_the_next_token_reads() -> None:
    layer = _layer(LayerKind.SLIDING_WINDOW, window=6)
    # 21 tokens: the next token reads tokens 16..20 (window - 1 of them), blocks 4 and 5
    assert sent_block_positions(layer, 21, [0, 0, 0, 4, 5, 6]) == [4, 5]
    assert sent_block_positions(layer, 3, [3]) == [0]  # shorter than the window: all of it


def test_a_recurrent_layer_sends_its_one_state_block() -> None:
    layer = _layer(LayerKind.LINEAR_ATTENTION)
    assert sent_block_positions(layer, 500, [0, 0, 12]) == [2]
    assert sent_block_positions(layer, 500, [12]) == [0]


def test_layer_numbers_come_from_vllm_layer_names() -> None:
    assert layer_number("model.layers.17.self_attn.attn", 0) == 17
    assert layer_number("lm_head", 4) == 4


def test_the_fingerprint_tells_apart_weights_and_configs(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for directory, weights in ((first, b"\x01" * 100), (second, b"\x02" * 100)):
        directory.mkdir()
        (directory / "config.json").write_text('{"model_type": "llama"}')
        (directory / "model.safetensors").write_bytes(weights)
    assert model_fingerprint(str(first)) == model_fingerprint(str(first))
    assert model_fingerprint(str(first)) != model_fingerprint(str(second))
    (second / "model.safetensors").write_bytes(b"\x01" * 100)
    assert model_fingerprint(str(first)) == model_fingerprint(str(second))
    (second / "config.json").write_text('{"model_type": "qwen3"}')
    assert model_fingerprint(str(first)) != model_fingerprint(str(second))
    assert model_fingerprint("org/model", "r1") != model_fingerprint("org/model", "r2")


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (4, 2)])
def test_more_than_one_worker_is_refused_naming_the_sizes(tp: int, pp: int) -> None:
    refusal = unsupported_parallelism(tp, pp)
    assert refusal is not None
    assert f"tensor_parallel_size {tp}" in refusal and f"pipeline_parallel_size {pp}" in refusal


def test_one_worker_is_served() -> None:
    assert unsupported_parallelism(1, 1) is None
