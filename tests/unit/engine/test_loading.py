"""Loading a local checkpoint directory: same weights, its own tokenizer, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_kit import tiny
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prfaas.engine.loading import load_model, weights_checksum
from prfaas.engine.tokenizer import ByteTokenizer
from prfaas.errors import UserError


def _save_word_tokenizer(directory: Path) -> None:
    vocab = {f"w{i}": i for i in range(256)} | {"<unk>": 256, "</s>": 257}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(directory)


def test_local_directory_loads_weights_and_tokenizer(tmp_path: Path) -> None:
    source = tiny("llama")
    source.model.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="tokenizer"):
        load_model(str(tmp_path))
    _save_word_tokenizer(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.arch == "llama"
    assert weights_checksum(loaded.model) == weights_checksum(source.model)
    assert loaded.tokenizer.encode("w1 w2 w3") == [1, 2, 3]
    assert loaded.tokenizer.eos_token_id == 257


def test_byte_tokenizer_round_trips_text() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo, PrfaaS")
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode([*ids, tok.eos_token_id or 0]) == "héllo, PrfaaS"
