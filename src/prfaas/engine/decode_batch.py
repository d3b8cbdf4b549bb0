"""The torch engine's decode batch: one forward for many requests, and the way back when it fails.

`DecodeBatcher` keeps the running requests' caches stacked into one batch cache (`batching`:
left-padded K/V with a mask, stacked linear states, a position id per row) for as long as the
same requests decode together; a request leaves it (every member gets its batch-1 cache back)
when the group changes, one of them finishes or fails, or its state is exported. A batched forward
that raises is undone (`rollback.CacheSnapshot`) and every request is run alone, so only the
requests whose own forward fails end; caches that cannot be stacked are decoded one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prfaas.engine import batching
from prfaas.engine.model_runner import ModelRunner, RequestState
from prfaas.engine.rollback import CacheSnapshot
from prfaas.engine.validation import one_line

DecodeOutcome = torch.Tensor | str  # a request's next-token logits [vocab_size], or why it failed


@dataclass
class _DecodeBatch:
    members: tuple[RequestState, ...]
    cache: Any

    @property
    def req_ids(self) -> tuple[str, ...]:
        return tuple(member.req_id for member in self.members)


class DecodeBatcher:
    """The stacked cache of the requests decoding together, and their decode forwards."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner
        self.batch: _DecodeBatch | None = None

    def holds(self, req_id: str) -> bool:
        return self.batch is not None and req_id in self.batch.req_ids

    @torch.inference_mode()
    def forward(self, group: list[RequestState]) -> list[DecodeOutcome]:
        """One decode forward of a group: batched, or one per request if the caches cannot be
        stacked or the batched forward raises (then rolled back first). Every request whose
        forward ran has one more computed token."""
        if len(group) == 1:
            return [self._forward_alone(group[0])]
        try:
            cache, mask = self.batch_cache(group)
        except Exception:  # unstackable caches: each request keeps its own, decode them alone
            return [self._forward_alone(state) for state in group]
        snapshot = CacheSnapshot.take(cache)
        try:
            logits = self._runner.forward_decode(group, cache, mask)  # [batch, vocab_size]
        except Exception:  # some row broke the forward: undo it and find the row(s) alone
            snapshot.restore()
            self.leave()
            return [self._forward_alone(state) for state in group]
        for state in group:  # every row's cache grew; count it before any split
            state.num_computed_tokens += 1
        return [logits[row] for row in range(len(group))]

    def _forward_alone(self, state: RequestState) -> DecodeOutcome:
        if state.cache is None:
            self.leave()
        try:
            logits = self._runner.forward_decode([state], state.cache, None)  # [1, vocab_size]
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return f"decode failed: {one_line(exc)}"
        state.num_computed_tokens += 1
        return logits[0]

    def batch_cache(self, group: list[RequestState]) -> tuple[Any, Any]:
        """The group's stacked cache (stacked now unless it already is) and its mask."""
        lengths = [r.num_computed_tokens for r in group]
        if self.batch is None or self.batch.req_ids != tuple(r.req_id for r in group):
            self.leave()
            merged = batching.merge_caches(self._runner.model, [r.cache for r in group], lengths)
            for r in group:
                r.cache = None
            self.batch = _DecodeBatch(tuple(group), merged)
        return self.batch.cache, batching.decode_mask(self._runner.model, lengths)

    def leave(self) -> None:
        """Give every request in the decode batch its own batch-1 cache back."""
        if self.batch is None:
            return
        members = self.batch.members
        lengths = [r.num_computed_tokens for r in members]
        caches = batching.split_cache(self._runner.model, self.batch.cache, lengths)
        for member, cache in zip(members, caches, strict=True):
            member.cache = cache
        self.batch = None
