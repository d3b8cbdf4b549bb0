"""A tiny preset saved as a local checkpoint directory: weights, config and a byte tokenizer.

`save_tiny_checkpoint` writes what `load_model(path)` reads through its local-directory path:
the preset's model with `save_pretrained` (config.json + safetensors) and a transformers fast
tokenizer built offline with the `tokenizers` library. The tokenizer has the ids of
`ByteTokenizer`: ids 0..255 are the 256 bytes, then BOS, EOS and PAD at the config's ids and
unused specials up to the vocabulary size. So a checkpoint gives the same token ids, text and
greedy output as the preset it came from.

Byte ids are exact because the vocabulary is written out, not learned: a byte-level BPE with no
merges whose pre-tokenizer maps each byte to GPT-2's printable stand-in character, and whose
vocabulary gives the stand-in of byte b the id b. The checkpoint also carries a plain chat
template, one block per message and an assistant header for the generation prompt:

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n ... <|assistant|>\\n
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prfaas.engine.loading import load_model
from prfaas.engine.presets import tiny_config_kwargs
from prfaas.engine.tokenizer import NUM_BYTE_TOKENS

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_FAST_TOKENIZER: Any = PreTrainedTokenizerFast  # untyped in transformers
_SPECIAL_NAMES = {"bos_token_id": "<|bos|>", "eos_token_id": "<|eos|>", "pad_token_id": "<|pad|>"}


def byte_symbols() -> list[str]:
    """GPT-2's stand-in character for each byte, in byte order: what ByteLevel maps bytes to.

    Printable Latin-1 bytes stand for themselves; the other bytes, in order, take the
    characters from U+0100 on.
    """
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    symbols: list[str] = []
    num_remapped = 0
    for byte in range(NUM_BYTE_TOKENS):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(NUM_BYTE_TOKENS + num_remapped))
            num_remapped += 1
    return symbols


def special_tokens(config_kwargs: dict[str, Any]) -> list[str]:
    """Names of the special ids 256 .. vocab_size - 1, in id order."""
    names_by_id = {int(config_kwargs[key]): name for key, name in _SPECIAL_NAMES.items()}
    vocab_size = int(config_kwargs["vocab_size"])
    return [names_by_id.get(i, f"<|unused_{i}|>") for i in range(NUM_BYTE_TOKENS, vocab_size)]


def byte_tokenizer(config_kwargs: dict[str, Any]) -> Any:
    """A transformers fast tokenizer with `ByteTokenizer`'s ids, specials at the config's ids."""
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    inner.decoder = decoders.ByteLevel()
    specials = special_tokens(config_kwargs)
    inner.add_special_tokens(specials)
    for token_id, name in enumerate(specials, start=NUM_BYTE_TOKENS):
        if inner.token_to_id(name) != token_id:
            raise RuntimeError(f"special token {name} got id {inner.token_to_id(name)}")
    return _FAST_TOKENIZER(
        tokenizer_object=inner,
        bos_token=_SPECIAL_NAMES["bos_token_id"],
        eos_token=_SPECIAL_NAMES["eos_token_id"],
        pad_token=_SPECIAL_NAMES["pad_token_id"],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_checkpoint(preset: str, path: str | Path, seed: int = 0, dtype: str = "fp32") -> Path:
    """Save a tiny preset's model and byte tokenizer to `path` (created if absent); return it."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    loaded = load_model(preset, dtype, seed)
    loaded.model.save_pretrained(directory)
    byte_tokenizer(tiny_config_kwargs(preset)).save_pretrained(directory)
    return directory
