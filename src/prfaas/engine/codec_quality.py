"""What a KV codec costs a model's predictions: the scoring behind `scripts/kv_codec_quality.py`.

One *window* of a token stream is a prefix of `prefix_len` tokens and the `num_positions` tokens
after it. The prefix is prefilled once; its cache is then copied twice, once exact and once with
every attention layer's K and V (full and sliding window alike) replaced by what a transfer
would deliver: `codec.decode(codec.encode(x))`. Recurrent and conv state stay exact, as the
transport sends them. Both copies then score the window's next tokens teacher-forced (one
forward of the continuation with the cache), and the window records:

- per attention layer, the squared error and squared norm of the reconstructed K and V (their
  ratio's square root is the relative error ||x' - x|| / ||x||);
- per attention layer, the same for the attention output (softmax(QK^T)V, before the output gate
  and projection) of the continuation's queries in the exact run, computed with the cached part
  of K/V coded versus exact, so each layer's error is its own, not its predecessors';
- how many positions' argmax agrees between the coded and the exact cache, and the summed
  negative log-likelihood of the true next token under each.

Sums add over windows (`QualityTotals`), so the relative errors and the perplexities of a whole
run are pooled over every position, not averaged per window. The exact run and the coded run use
the model's own attention; the attention output is recomputed with transformers' SDPA function
on queries captured by a registered attention function that calls it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from prfaas.engine.cache_layout import new_cache
from prfaas.engine.kv_codec import CodedTensor, KVCodec
from prfaas.models.kv_codec import KV_CODEC_NONE, KVCodecSpec, get_kv_codec

CAPTURE_ATTENTION = "prfaas_codec_capture"
_KV_NAMES = ("keys", "values")


@dataclass
class ErrorSum:
    """Squared error and squared norm pooled over tensors: sqrt(ratio) is the relative error."""

    squared_error: float = 0.0
    squared_norm: float = 0.0

    def add(self, coded: torch.Tensor, exact: torch.Tensor) -> None:
        self.squared_error += float((coded.double() - exact.double()).square().sum())
        self.squared_norm += float(exact.double().square().sum())

    @property
    def relative(self) -> float:
        return math.sqrt(self.squared_error / self.squared_norm) if self.squared_norm else 0.0


@dataclass
class QualityTotals:
    """One codec's sums over the windows scored so far."""

    codec: str
    num_positions: int = 0
    num_agree: int = 0
    exact_nll: float = 0.0
    coded_nll: float = 0.0
    kv_error: dict[str, ErrorSum] = field(default_factory=dict)  # "L3/keys" -> sums
    attention_error: dict[int, ErrorSum] = field(default_factory=dict)  # layer -> sums

    @property
    def agreement(self) -> float:
        """Share of positions whose argmax is the exact cache's."""
        return self.num_agree / self.num_positions if self.num_positions else 0.0

    @property
    def exact_perplexity(self) -> float:
        return math.exp(self.exact_nll / self.num_positions)

    @property
    def coded_perplexity(self) -> float:
        return math.exp(self.coded_nll / self.num_positions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "num_positions": self.num_positions,
            "next_token_agreement": self.agreement,
            "exact_perplexity": self.exact_perplexity,
            "coded_perplexity": self.coded_perplexity,
            "kv_relative_error": {k: e.relative for k, e in self.kv_error.items()},
            "attention_output_relative_error": {
                str(k): e.relative for k, e in self.attention_error.items()
            },
        }


@dataclass(frozen=True)
class Captured:
    """One attention call of the exact continuation run: what recomputing its output needs."""

    module: Any
    query: torch.Tensor  # [batch, heads, num_positions, head_dim]
    key: torch.Tensor  # [batch, kv_heads, cached + num_positions, head_dim]
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class ZeroedKV:
    """A control, not a codec: every cached K/V value comes back 0, so the prefix reaches the
    attention layers no more (it still reaches the recurrent layers through their state). How far
    its scores fall shows how much a model's predictions depend on the attention cache at all."""

    spec: KVCodecSpec = field(default_factory=lambda: get_kv_codec(KV_CODEC_NONE))

    def encode(self, tensor: torch.Tensor) -> CodedTensor:
        dtype = str(tensor.dtype).removeprefix("torch.")
        return CodedTensor(memoryview(b""), {"shape": list(tensor.shape), "dtype": dtype})

    def decode(
        self, payload: bytes | bytearray | memoryview, metadata: dict[str, Any]
    ) -> torch.Tensor:
        return torch.zeros(metadata["shape"], dtype=getattr(torch, metadata["dtype"]))


def window_starts(num_tokens: int, span: int, num_windows: int) -> list[int]:
    """`num_windows` start offsets spread evenly over a stream, each leaving `span` tokens."""
    last = num_tokens - span
    if last < 0 or num_windows < 1:
        raise ValueError(f"a stream of {num_tokens} tokens holds no window of {span}")
    if num_windows == 1:
        return [0]
    return [round(i * last / (num_windows - 1)) for i in range(num_windows)]


def code_attention_kv(cache: Any, codec: KVCodec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Replace every attention layer's K and V in `cache` by their coded round trip; return
    `{"L{i}/keys": (coded, exact), ...}`."""
    replaced: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for index, layer in enumerate(cache.layers):
        for name in _KV_NAMES:
            exact = getattr(layer, name, None)
            if not isinstance(exact, torch.Tensor) or exact.numel() == 0:
                continue
            coded_tensor = codec.encode(exact)
            coded = codec.decode(coded_tensor.payload, coded_tensor.metadata)
            setattr(layer, name, coded)
            replaced[f"L{index}/{name}"] = (coded, exact)
    return replaced


def _forward(model: Any, token_ids: torch.Tensor, start: int, cache: Any) -> torch.Tensor:
    """Logits [num_tokens, vocab] of `token_ids` [num_tokens] at positions from `start`."""
    positions = torch.arange(start, start + token_ids.numel()).unsqueeze(0)
    out = model(
        input_ids=token_ids.unsqueeze(0), position_ids=positions, cache=cache, use_cache=True
    )
    logits: torch.Tensor = out.logits[0].float()
    return logits


def _capture_attention(
    records: list[Captured],
) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    def attend(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        records.append(Captured(module, query, key, value, attention_mask, kwargs))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return attend


@contextmanager
def capturing_attention(model: Any) -> Iterator[list[Captured]]:
    """Within the block, every attention call of `model` runs SDPA and is recorded."""
    records: list[Captured] = []
    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention(records))
    ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_ATTENTION, sdpa_mask)
    configs = _sub_configs(model.config)
    previous = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = CAPTURE_ATTENTION
    try:
        yield records
    finally:
        for config, name in zip(configs, previous, strict=True):
            config._attn_implementation = name


def _sub_configs(config: Any) -> list[Any]:
    text = config.get_text_config(decoder=True)
    return [config] if text is config else [config, text]


def _attention_error(
    records: list[Captured], replaced: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (output with the cached K/V coded, exact output) for each captured call."""
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for record in records:
        index = int(record.module.layer_idx)
        coded_keys, _ = replaced[f"L{index}/keys"]
        coded_values, _ = replaced[f"L{index}/values"]
        num_cached = coded_keys.shape[2]
        key = torch.cat([coded_keys, record.key[:, :, num_cached:]], dim=2)
        value = torch.cat([coded_values, record.value[:, :, num_cached:]], dim=2)
        args = (record.module, record.query)
        exact, _ = sdpa_attention_forward(
            *args, record.key, record.value, record.attention_mask, **record.kwargs
        )
        coded, _ = sdpa_attention_forward(*args, key, value, record.attention_mask, **record.kwargs)
        outputs[index] = (coded, exact)
    return outputs


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))


@torch.no_grad()
def score_window(
    model: Any,
    tokens: Sequence[int],
    prefix_len: int,
    num_positions: int,
    codecs: dict[str, KVCodec],
    totals: dict[str, QualityTotals],
) -> None:
    """Score one window `tokens[:prefix_len + num_positions + 1]` for each codec into `totals`."""
    span = prefix_len + num_positions + 1
    if len(tokens) < span:
        raise ValueError(f"a window needs {span} tokens, got {len(tokens)}")
    window = torch.tensor(list(tokens[:span]))
    continuation, targets = window[prefix_len:-1], window[prefix_len + 1 :]
    prefilled = new_cache(model)
    _forward(model, window[:prefix_len], 0, prefilled)
    exact_logits = _forward(model, continuation, prefix_len, copy.deepcopy(prefilled))
    with capturing_attention(model) as records:
        _forward(model, continuation, prefix_len, copy.deepcopy(prefilled))
    exact_nll = _nll(exact_logits, targets)
    for name, codec in codecs.items():
        coded_cache = copy.deepcopy(prefilled)
        replaced = code_attention_kv(coded_cache, codec)
        coded_logits = _forward(model, continuation, prefix_len, coded_cache)
        total = totals.setdefault(name, QualityTotals(name))
        total.num_positions += num_positions
        total.num_agree += int((coded_logits.argmax(-1) == exact_logits.argmax(-1)).sum())
        total.exact_nll += exact_nll
        total.coded_nll += _nll(coded_logits, targets)
        _add_errors(total, replaced, _attention_error(records, replaced))


def _add_errors(
    total: QualityTotals,
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
    attention: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    for key, (coded, exact) in kv.items():
        total.kv_error.setdefault(key, ErrorSum()).add(coded, exact)
    for index, (coded, exact) in attention.items():
        total.attention_error.setdefault(index, ErrorSum()).add(coded, exact)
