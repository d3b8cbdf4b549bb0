"""Text on the router: tokenizing prompts, chat templates, and turning token streams into text.

`load_codec` gives the served model's tokenizer without loading weights: the byte tokenizer of
the tiny presets, or the checkpoint directory's own tokenizer (and its chat template);
`served_codec` is the router's, whose context for an all-emulated deployment is the emulated
model's. Tiny presets have no chat template of their own; they use the plain one below, which a
checkpoint saved by `prfaas.engine.checkpoint` also carries:

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n ... <|assistant|>\\n

`TextStream` detokenizes incrementally (never splitting a multi-byte character), applies stop
strings (the text ends before the first stop string, which is not returned) and holds back the
characters that could still become a stop string, so a streamed client never sees a partial one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prfaas.errors import UserError
from prfaas.messages.stop_strings import StopStrings
from prfaas.topology import ModelConfig, Topology

if TYPE_CHECKING:
    from prfaas.engine.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


def plain_chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The documented template of the tiny presets."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


@dataclass
class TextCodec:
    """The served model's tokenizer, as the router uses it."""

    tokenizer: Tokenizer
    vocab_size: int
    max_model_len: int  # max positions: prompt + generated tokens must fit
    # the checkpoint's transformers tokenizer, for its chat template (untyped in transformers)
    hf_tokenizer: Any = None

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        template = getattr(self.hf_tokenizer, "chat_template", None)
        if not template:
            return plain_chat_prompt(messages)
        text = self.hf_tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return str(text)


def load_codec(model: ModelConfig) -> TextCodec:
    """The tokenizer of a tiny preset (bytes) or of a checkpoint directory."""
    from prfaas.engine.presets import PRESETS, tiny_config_kwargs
    from prfaas.engine.tokenizer import ByteTokenizer

    if model.name in PRESETS:
        cfg = tiny_config_kwargs(model.name)
        tok = ByteTokenizer(cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"])
        return TextCodec(tok, int(cfg["vocab_size"]), int(cfg["max_position_embeddings"]))
    return _checkpoint_codec(Path(model.name))


def served_codec(topology: Topology) -> TextCodec:
    """The router's codec: `load_codec`, with the emulated model's own context when every
    instance is emulated and `model.emulate`'s config gives one (`max_position_embeddings`):
    there no model with the tokenizer's context runs, and the emulated engines take that many
    positions (the paper's lengths, to 128K, with the tiny presets' byte tokenizer)."""
    from prfaas.models import load_model_spec

    codec = load_codec(topology.model)
    if any(instance.engine != "emulated" for instance in topology.instances):
        return codec
    limit = load_model_spec(topology.model.emulate).max_position_embeddings
    return codec if limit is None else replace(codec, max_model_len=limit)


def _checkpoint_codec(path: Path) -> TextCodec:
    from transformers import AutoTokenizer

    from prfaas.engine.tokenizer import HFTokenizer

    try:
        config = json.loads((path / "config.json").read_text())
        inner = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot load the tokenizer of {path}: {exc}") from exc
    text_cfg = config.get("text_config", config)
    max_len = int(text_cfg.get("max_position_embeddings") or 4096)
    vocab = int(text_cfg.get("vocab_size") or len(inner))
    return TextCodec(HFTokenizer(inner), vocab, max_len, hf_tokenizer=inner)


class TextStream:
    """One request's output text, built from token deltas, with stop strings applied."""

    def __init__(self, codec: TextCodec, stop: Sequence[str] = ()) -> None:
        self._codec = codec
        self._stop = StopStrings.of(stop)
        self._token_ids: list[int] = []
        self.text = ""  # decoded so far (stop strings cut)
        self._num_sent_chars = 0
        self.hit_stop = False

    @property
    def num_tokens(self) -> int:
        return len(self._token_ids)

    def add(self, token_ids: Sequence[int], is_final: bool) -> str:
        """Take new tokens; return the text that may be sent now."""
        if self.hit_stop:
            return ""
        self._token_ids.extend(token_ids)
        text = self._codec.decode(self._token_ids)
        if not is_final:
            text = text.rstrip(_REPLACEMENT)  # an incomplete multi-byte character
        cut = self._stop.first_index(text)
        if cut is not None:
            text, self.hit_stop = text[:cut], True
        self.text = text
        held = 0 if (is_final or self.hit_stop) else self._stop.num_hold_chars
        safe_end = len(text) - held
        safe_end = max(safe_end, self._num_sent_chars)
        new = text[self._num_sent_chars : safe_end]
        self._num_sent_chars = safe_end
        return new
