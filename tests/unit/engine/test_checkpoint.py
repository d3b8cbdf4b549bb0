"""A tiny preset saved as a checkpoint directory loads back through the local path with the same
weights, the byte tokenizer's ids and text, a chat template, and the same greedy output."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_kit import tiny
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from prfaas.engine.checkpoint import byte_symbols, save_tiny_checkpoint
from prfaas.engine.loading import load_model
from prfaas.engine.runner import Engine
from prfaas.engine.tokenizer import ByteTokenizer
from prfaas.messages import GenerateRequest, SamplingParams

TEXTS = ["hello, PrfaaS", "日本語テキスト héllo ñ 😀", "  two spaces\n\ttab\r\n"]
BYTE_RUNS = [[0xE6, 0x97], [0xE6, 0x97, 0xA5, 0x41], [0xC0, 0x80, 0xFF, 0x41], list(range(256))]


def test_byte_symbols_are_the_byte_level_alphabet() -> None:
    assert len(set(byte_symbols())) == 256
    assert set(byte_symbols()) == set(pre_tokenizers.ByteLevel.alphabet())


@pytest.mark.parametrize("preset", ["llama", "qwen3_next"])
def test_checkpoint_loads_with_the_preset_ids_and_greedy_output(
    preset: str, tmp_path: Path
) -> None:
    path = save_tiny_checkpoint(preset, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file()
    loaded = load_model(str(path))
    source = tiny(preset)
    assert loaded.fingerprint == source.fingerprint
    byte_tokenizer = ByteTokenizer()
    for text in TEXTS:
        ids = loaded.tokenizer.encode(text)
        assert ids == byte_tokenizer.encode(text)
        assert loaded.tokenizer.decode(ids) == text
    for raw in BYTE_RUNS:  # partial and invalid UTF-8 decode the same way too
        assert loaded.tokenizer.decode(raw) == byte_tokenizer.decode(raw)
    text_prompt = tuple(loaded.tokenizer.encode("Prefill-as-a-Service: 日本語"))
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    request = GenerateRequest("r", text_prompt, params)
    assert Engine(loaded).generate([request]) == Engine(source).generate([request])


def test_checkpoint_tokenizer_specials_and_chat_template(tmp_path: Path) -> None:
    path = save_tiny_checkpoint("llama", tmp_path)
    loaded = load_model(str(path))
    inner = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = tiny("llama").config
    assert (inner.bos_token_id, inner.eos_token_id, inner.pad_token_id) == (
        config.bos_token_id,
        config.eos_token_id,
        config.pad_token_id,
    )
    assert len(inner) == config.vocab_size
    assert loaded.tokenizer.eos_token_id == 257
    assert loaded.tokenizer.decode([104, 257, 105, 256, 263]) == "hi"  # specials are skipped
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = inner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
