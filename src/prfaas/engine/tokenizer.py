"""Text <-> token ids: a byte-level tokenizer for tiny models and an adapter for HF tokenizers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

NUM_BYTE_TOKENS = 256


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are tokens 0..255; BOS, EOS and PAD follow; other ids decode to nothing."""

    def __init__(self, bos_token_id: int = 256, eos_token_id: int = 257, pad_token_id: int = 258):
        self.bos_token_id = bos_token_id
        self.eos_token_id: int | None = eos_token_id
        self.pad_token_id = pad_token_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        raw = bytes(t for t in token_ids if 0 <= t < NUM_BYTE_TOKENS)
        return raw.decode("utf-8", errors="replace")


class HFTokenizer:
    """A local transformers tokenizer behind the engine's `Tokenizer` protocol."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.eos_token_id: int | None = inner.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self._inner.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._inner.decode(list(token_ids), skip_special_tokens=True))
