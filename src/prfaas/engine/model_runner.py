"""The torch engine's forward passes and sampling: one loaded model, one request's cache at a time.

Owns `RequestState` (a `sequence.RequestProgress` with its batch-1 cache and recorded logits),
`ModelRunner` (a prefill chunk with the per-layer callback fired from forward hooks, a decode
forward over stacked caches, sampling with the request's seed) and the rules of chunked prefill:
`chunk_bounds`, and `check_chunking` / `check_prefix_caching`, which refuse chunking and prefix
reuse where transformers' multi-token update of existing state is not exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prfaas.engine.cache_layout import decoder_layers, new_cache
from prfaas.engine.kv_export import export_layer
from prfaas.engine.loading import LoadedModel
from prfaas.engine.protocol import LayerCallback
from prfaas.engine.sampling import sample_token
from prfaas.engine.sequence import RequestProgress
from prfaas.errors import UserError
from prfaas.models.kv_codec import KV_CODEC_NONE
from prfaas.types import LayerKind


@dataclass
class RequestState(RequestProgress):
    """One request's progress inside the torch engine, with its cache."""

    cache: Any = None  # batch-1 cache, or None while the request sits in a decode batch
    logits: list[torch.Tensor] = field(default_factory=list)  # per sampled token, if recorded


class ModelRunner:
    """Runs one loaded model's forwards for the engine and samples from their logits."""

    def __init__(
        self, loaded: LoadedModel, kinds: Sequence[LayerKind], *, record_logits: bool
    ) -> None:
        self.model = loaded.model
        self.kinds = tuple(kinds)
        self.record_logits = record_logits

    def new_cache(self) -> Any:
        return new_cache(self.model)

    def forward_chunk(
        self,
        state: RequestState,
        token_ids: Sequence[int],
        on_layer: LayerCallback | None,
        skip_tokens: int = 0,
        kv_codec: str = KV_CODEC_NONE,
    ) -> torch.Tensor:
        """Prefill the next `token_ids` of a request into its cache; the last position's logits
        [vocab_size]. `on_layer` gets each layer's state as that layer's forward ends (its K/V
        coded by the codec `kv_codec`)."""
        start = state.num_computed_tokens
        input_ids = torch.tensor([list(token_ids)])  # [1, chunk_len]
        positions = torch.arange(start, start + len(token_ids)).unsqueeze(0)  # [1, chunk_len]
        hooks = []
        if on_layer is not None:
            hooks = self._layer_hooks(state, on_layer, skip_tokens, kv_codec)
        try:
            out = self.model(
                input_ids=input_ids,
                position_ids=positions,
                cache=state.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            for hook in hooks:
                hook.remove()
        state.num_computed_tokens += len(token_ids)
        logits: torch.Tensor = out.logits[0, -1]  # [vocab_size]
        return logits

    def _layer_hooks(
        self, state: RequestState, on_layer: LayerCallback, skip_tokens: int, kv_codec: str
    ) -> list[Any]:
        offset = [0]

        def make_hook(index: int) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                kind = self.kinds[index]
                layer_state = export_layer(
                    state.cache, index, kind, offset[0], skip_tokens, kv_codec
                )
                offset[0] += layer_state.entry.num_bytes
                on_layer(state.req_id, layer_state)

            return hook

        layers = decoder_layers(self.model)
        return [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]

    def forward_decode(self, group: list[RequestState], cache: Any, mask: Any) -> torch.Tensor:
        """Last-position logits [batch, vocab_size] of one decode forward over the group."""
        out = self.model(
            input_ids=torch.tensor([[r.last_token_id] for r in group]),  # [batch, 1]
            position_ids=torch.tensor([[r.num_computed_tokens] for r in group]),  # [batch, 1]
            attention_mask=mask,
            cache=cache,
            use_cache=True,
        )
        logits: torch.Tensor = out.logits[:, -1]  # [batch, vocab_size]
        return logits

    def sample(self, state: RequestState, logits: torch.Tensor) -> int:
        """Append the request's next token, drawn from its logits [vocab_size]."""
        if self.record_logits:
            state.logits.append(logits.detach().float().clone())
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the model's logits hold NaN or infinity")
        token = sample_token(logits, state.sampling, state.seed, len(state.output_token_ids))
        state.output_token_ids.append(token)
        return token


def chunk_bounds(
    start: int, end: int, chunk_size: int | None, cut_at: int = 0
) -> list[tuple[int, int]]:
    """(begin, end) token ranges of a prefill from `start` to `end`: chunks end at the multiples
    of `chunk_size` (counted from token 0), at `cut_at` if it lies inside, and at `end`."""
    ends = {end}
    if chunk_size is not None:
        first = (start // chunk_size + 1) * chunk_size
        ends.update(range(first, end, chunk_size))
    if start < cut_at < end:
        ends.add(cut_at)
    ordered = sorted(ends)
    return list(zip([start, *ordered[:-1]], ordered, strict=True))


def check_chunking(loaded: LoadedModel, chunk_size: int) -> None:
    """Refuse chunked prefill where transformers' multi-token-with-state path is not exact."""
    if chunk_size < 1:
        raise UserError(f"chunk size must be >= 1, got {chunk_size}")
    if not loaded.is_chunk_exact:
        raise UserError(
            f"chunked prefill is not exact for {loaded.arch} (transformers' multi-token update "
            "of existing state differs from a one-shot prefill); prefill it in one chunk"
        )


def check_prefix_caching(loaded: LoadedModel) -> None:
    """Refuse a prefix cache where resuming from cached state is not exact."""
    if not loaded.is_chunk_exact:
        raise UserError(
            f"a prefix cache is not exact for {loaded.arch}: resuming a prefill from a cached "
            "prefix is a multi-token update of existing state, which transformers does not "
            "compute exactly for it (as with chunked prefill)"
        )
