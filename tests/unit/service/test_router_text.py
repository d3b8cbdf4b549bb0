"""The router's text handling and request checks, without processes: incremental detokenizing,
stop strings, the hold-back that keeps partial stop strings out of a stream, request parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.errors import UserError
from prfaas.router.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    check_unsupported,
    parse_body,
    sampling_params,
)
from prfaas.service.text import TextStream, load_codec, plain_chat_prompt
from prfaas.topology import ModelConfig

CODEC = load_codec(ModelConfig("qwen3_next"))


def _stream_all(text: str, stop: tuple[str, ...], split_every: int) -> tuple[str, bool]:
    ids = CODEC.encode(text)
    stream = TextStream(CODEC, stop)
    out = []
    for start in range(0, len(ids), split_every):
        is_final = start + split_every >= len(ids)
        out.append(stream.add(ids[start : start + split_every], is_final))
        if stream.hit_stop:
            break
    return "".join(out), stream.hit_stop


def test_codec_of_a_tiny_preset_is_bytes_with_its_context() -> None:
    assert CODEC.encode("é") == [0xC3, 0xA9]
    assert CODEC.vocab_size == 264 and CODEC.max_model_len == 65536
    assert CODEC.eos_token_id == 257


@given(st.text(max_size=40), st.integers(1, 5))
def test_streamed_text_equals_whole_decode(text: str, split_every: int) -> None:
    """Chunks never split a character and add up to the whole text."""
    streamed, _ = _stream_all(text, (), split_every)
    assert streamed == text


def test_stop_string_cuts_the_text_and_is_not_returned() -> None:
    streamed, hit = _stream_all("hello 日本語 world, and more", ("語 w",), 1)
    assert hit and streamed == "hello 日本"


def test_the_last_characters_are_held_back_while_a_stop_string_could_still_form() -> None:
    """As vLLM does: hold back len(longest stop) - 1 characters until the request ends."""
    stream = TextStream(CODEC, ("STOP",))
    assert stream.add(CODEC.encode("abcST"), is_final=False) == "ab"  # "cST" could become STOP
    assert stream.add(CODEC.encode("x"), is_final=False) == "c"
    assert stream.add(CODEC.encode("y"), is_final=True) == "STxy"


def test_plain_chat_template() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert plain_chat_prompt(messages) == "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"
    assert CODEC.chat_prompt(messages) == plain_chat_prompt(messages)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "m", "prompt": {"a": 1}}, "prompt"),
        ({"model": "m"}, "prompt"),
        ("just a string", "JSON object"),
    ],
)
def test_malformed_bodies_are_refused_with_the_field(body: object, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse_body(CompletionRequest, body)


def test_chat_needs_messages_and_text_parts() -> None:
    with pytest.raises(UserError, match="messages"):
        parse_body(ChatCompletionRequest, {"model": "m", "messages": []})
    req = parse_body(
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    )
    with pytest.raises(UserError, match="text content"):
        req.messages[0].text()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"n": 2}, "n must be 1"),
        ({"echo": True}, "echo"),
        ({"logprobs": 3}, "logprobs"),
        ({"presence_penalty": 0.5}, "penalty"),
    ],
)
def test_unsupported_features_are_refused(extra: dict[str, object], needle: str) -> None:
    req = parse_body(CompletionRequest, {"model": "m", "prompt": "x", **extra})
    with pytest.raises(UserError, match=needle):
        check_unsupported(req)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"stop": ["x"] * 17}, "stop"),
    ],
)
def test_sampling_values_out_of_range_are_user_errors(
    extra: dict[str, object], needle: str
) -> None:
    req = parse_body(CompletionRequest, {"model": "m", "prompt": "x", **extra})
    with pytest.raises(UserError, match=needle):
        sampling_params(req, 4)


def test_top_k_minus_one_means_off_and_stop_becomes_a_tuple() -> None:
    req = parse_body(CompletionRequest, {"model": "m", "prompt": "x", "top_k": -1, "stop": "\n"})
    params = sampling_params(req, 4)
    assert params.top_k == 0 and params.stop == ("\n",) and params.max_tokens == 4
