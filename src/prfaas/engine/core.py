"""What both engines do the same way: the request table, admission, scheduling, finishing, deltas,
and keeping a finished request's blocks in the prefix cache.

`EngineCore` implements `protocol.ServingEngine` up to the model and the state's travels
(`state_exchange.StateExchange` adds export, import and the prefix-cache queries): a subclass
names its request type and says how a request prefills (`_prefill_one`), how a group of running
requests decodes one token (`_decode`), and how a finished request's blocks are kept
(`_store_finished`). The torch engine
(`runner.Engine`) and the emulated one (`emulated.EmulatedEngine`) are such subclasses.

Scheduling: `step` prefills the oldest waiting request if there is one, else decodes every
running request, `max_batch_size` at a time. Admission (`validation`): every request and manifest
is checked before it is registered, so a bad one is refused whole with one line naming it; these
are cheap guards (the router's intake is the check users see). Finishing: `stopping`.

Prefix cache (`prefix_book.PrefixBook`): each request's block hashes are computed once in this
process and extended as it grows (`RequestProgress.block_hashes`); a pin keeps the hashes it made
for the import that follows. A finished request ("stop" or "length") leaves its computed blocks
(prompt and output) in the cache when it is freed, unless its K/V came through a lossy KV codec;
exports reserve their bytes until then.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from prfaas.engine.prefix_book import PrefixBook
from prfaas.engine.protocol import LayerCallback
from prfaas.engine.sequence import RequestProgress
from prfaas.engine.stopping import finish_reason, token_delta
from prfaas.engine.tokenizer import Tokenizer
from prfaas.engine.validation import (
    PrefixMiss,
    check_distinct_ids,
    check_prefill_skips,
    check_prompt,
    one_line,
)
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, SamplingParams, TokenDelta
from prfaas.models.kv_codec import KV_CODEC_NONE, get_kv_codec

R = TypeVar("R", bound=RequestProgress)
P = TypeVar("P", bound=PrefixBook)
_KEPT_FINISH_REASONS = ("stop", "length")  # requests whose blocks stay cached when freed


class EngineCore(ABC, Generic[R, P]):
    """The request-level half of an engine; subclasses run (or emulate) the model."""

    chunk_size: int | None = None  # prefill chunk when `prefill` is not given one

    def __init__(
        self,
        request_type: type[R],
        *,
        seed: int,
        max_batch_size: int,
        vocab_size: int | None,
        max_positions: int | None,
        tokenizer: Tokenizer | None,
        prefix: P | None,
    ) -> None:
        """`request_type(req_id, prompt, sampling, seed)` makes a request's state; `tokenizer`:
        for EOS and stop strings (None: neither applies)."""
        self._request_type = request_type
        self.max_batch_size = max_batch_size
        self.requests: dict[str, R] = {}
        self._waiting: list[str] = []
        self._rng = random.Random(seed)
        self._vocab_size = vocab_size
        self._max_positions = max_positions
        self._tokenizer = tokenizer
        self._eos_token_id = None if tokenizer is None else tokenizer.eos_token_id
        self._prefix = prefix

    # ---- what a subclass provides ---------------------------------------------------------
    @abstractmethod
    def _prefill_one(
        self,
        state: R,
        on_layer: LayerCallback | None,
        chunk_size: int | None,
        skip_tokens: int,
        kv_codec: str,
    ) -> int:
        """Prefill one registered request and sample its first token; its layer states leave
        out `skip_tokens` prefix tokens and code their K/V with the codec `kv_codec`."""

    @abstractmethod
    def _decode(self, group: list[R]) -> list[TokenDelta]:
        """One decode step of a group of running requests."""

    @abstractmethod
    def _store_finished(self, state: R, hashes: list[int]) -> None:
        """Keep the blocks `hashes` of a request that finished well in the prefix cache."""

    def _drop_state(self, state: R) -> None:
        """Let go of what a failed request computed (nothing to do without tensors)."""

    # ---- requests ---------------------------------------------------------------------------
    def add_request(self, request: GenerateRequest) -> None:
        """Queue a request for local prefill + decode by `step`."""
        self._check_request(request)
        self._register(request.req_id, request.prompt_token_ids, request.sampling)
        self._waiting.append(request.req_id)

    def _check_request(self, request: GenerateRequest) -> None:
        check_prompt(
            request.req_id, request.prompt_token_ids, self._vocab_size, self._max_positions
        )
        self._check_new_id(request.req_id)

    def _check_new_id(self, req_id: str) -> None:
        if req_id in self.requests:
            raise UserError(f"request {req_id!r} is already in this engine")

    def _register(self, req_id: str, prompt: Sequence[int], sampling: SamplingParams) -> R:
        self._check_new_id(req_id)
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(31)
        state = self._request_type(req_id, tuple(prompt), sampling, seed)
        self.requests[req_id] = state
        return state

    def _get(self, req_id: str) -> R:
        if req_id not in self.requests:
            raise UserError(f"unknown request {req_id!r}")
        return self.requests[req_id]

    def free(self, req_id: str) -> None:
        """Drop a request and its state.

        With a prefix cache: its pin and transfer reservations are released, and a request that
        finished well ("stop" or "length") leaves its complete blocks of prompt and output in
        the cache if the engine knows its prompt ids.
        """
        state = self.requests.pop(req_id, None)
        if req_id in self._waiting:
            self._waiting.remove(req_id)
        if self._prefix is None:
            return
        self._prefix.release_owner(req_id)
        if state is not None:
            self._retain(state)

    def _retain(self, state: R) -> None:
        """Store the blocks of a finished request's computed tokens: the prompt and every output
        token but the last, whose K/V was never computed."""
        if not state.prompt_token_ids or state.finish_reason not in _KEPT_FINISH_REASONS:
            return
        if state.has_coded_kv:
            return
        tokens = (*state.prompt_token_ids, *state.output_token_ids)[: state.num_computed_tokens]
        if len(tokens) == state.num_computed_tokens:
            self._store_finished(state, self._block_hashes(state, tokens))

    def has_unfinished(self) -> bool:
        return any(r.finish_reason is None for r in self.requests.values())

    def unfinished_req_ids(self) -> list[str]:
        return [req_id for req_id, r in self.requests.items() if r.finish_reason is None]

    def predicted_prefill_s(self, num_tokens: int) -> float | None:
        """None: this engine's prefill time is measured, not known in advance."""
        return None

    def kv_encode_bytes_per_s(self, codec_name: str) -> float | None:
        """None: this engine does not code its K/V (the torch engine does)."""
        return None

    # ---- prefill ----------------------------------------------------------------------------
    def prefill(
        self,
        requests: Sequence[GenerateRequest],
        on_layer: LayerCallback | None = None,
        chunk_size: int | None = None,
        skip_tokens: Mapping[str, int] | None = None,
        kv_codecs: Mapping[str, str] | None = None,
    ) -> list[int]:
        """Prefill each request (batch 1) and sample its first token; the first tokens.

        `on_layer(req_id, LayerState)` fires for layer i as soon as its state is final, in layer
        order, with global payload offsets. `skip_tokens[req_id]` = p > 0 leaves the first p
        tokens of full-attention/MLA K/V out of that request's layer states (the receiver holds
        them), as `export(num_prefix_tokens=p)`; `kv_codecs[req_id]` codes its attention K/V
        (`prfaas.models.kv_codec`), as `export(kv_codec=...)`. Every request is checked before
        any is prefilled. If a prefill raises (the model or `on_layer`), that request is dropped
        from the engine and the error propagates; requests before it stay prefilled.
        """
        chunk = self._prefill_chunk_size(chunk_size)
        check_distinct_ids([request.req_id for request in requests])
        for request in requests:
            self._check_request(request)
        skips = dict(skip_tokens or {})
        check_prefill_skips(requests, skips)
        codecs = dict(kv_codecs or {})
        for name in codecs.values():
            get_kv_codec(name)
        first_tokens = []
        for request in requests:
            state = self._register(request.req_id, request.prompt_token_ids, request.sampling)
            try:
                skip = skips.get(request.req_id, 0)
                codec = codecs.get(request.req_id, KV_CODEC_NONE)
                first_tokens.append(self._prefill_one(state, on_layer, chunk, skip, codec))
            except BaseException:
                self.free(state.req_id)
                raise
        return first_tokens

    def _prefill_chunk_size(self, chunk_size: int | None) -> int | None:
        """The chunk size a `prefill` call runs with (checked by engines that chunk)."""
        return chunk_size if chunk_size is not None else self.chunk_size

    # ---- steps ------------------------------------------------------------------------------
    def step(self) -> list[TokenDelta]:
        """Prefill one waiting request if any, else one decode step of all running requests.

        A request whose prefill or decode raises ends with finish_reason "error" (the delta says
        why); the other requests are not affected.
        """
        if self._waiting:
            state = self.requests[self._waiting.pop(0)]
            return [self._prefill_waiting(state)]
        running = [r for r in self.requests.values() if r.finish_reason is None]
        deltas: list[TokenDelta] = []
        for start in range(0, len(running), self.max_batch_size):
            deltas.extend(self._decode(running[start : start + self.max_batch_size]))
        return deltas

    def _prefill_waiting(self, state: R) -> TokenDelta:
        try:
            self._prefill_one(state, None, self.chunk_size, 0, KV_CODEC_NONE)
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return self._fail(state, f"prefill failed: {one_line(exc)}")
        return self._delta(state)

    def _fail(self, state: R, reason: str) -> TokenDelta:
        """End a request with an error and drop its state; the delta carries the reason."""
        state.finish_reason = "error"
        state.error = reason
        self._drop_state(state)
        return self._token_delta(state, [], "error")

    def first_delta(self, req_id: str) -> TokenDelta:
        """The delta of the request's first output token, to stream right after `import_` or
        prefill: with its finish reason when the request ended on it (a stop token or EOS is
        then not emitted, as in `step`'s deltas)."""
        state = self._get(req_id)
        if not state.output_token_ids:
            if state.finish_reason == "error":
                return self._token_delta(state, [], "error")
            raise UserError(f"request {req_id!r} has not been prefilled")
        finish_reason = state.finish_reason if len(state.output_token_ids) == 1 else None
        return self._token_delta(state, state.output_token_ids[:1], finish_reason)

    def _require_prefix(self, what: str) -> P:
        if self._prefix is None:
            raise PrefixMiss(f"cannot {what}: this engine has no prefix cache")
        return self._prefix

    def _block_hashes(self, state: R, tokens: Sequence[int]) -> list[int]:
        """Hashes of the complete blocks of `tokens` (the request's prompt, then its output),
        extending the request's known hashes."""
        prefix = self._require_prefix("hash blocks")
        state.block_hashes = prefix.extend_hashes(state.block_hashes, tokens)
        return state.block_hashes

    # ---- finishing and deltas ---------------------------------------------------------------
    def _finish_if_done(self, state: R) -> None:
        reason = finish_reason(state, self._tokenizer, self._max_positions)
        if reason is not None:
            state.finish_reason = reason

    def _delta(self, state: R) -> TokenDelta:
        return self._token_delta(state, state.output_token_ids[-1:], state.finish_reason)

    def _token_delta(self, state: R, new: Sequence[int], reason: str | None) -> TokenDelta:
        return token_delta(state, new, reason, self._eos_token_id)

    def generate(self, requests: Sequence[GenerateRequest]) -> dict[str, list[int]]:
        """Run requests to completion locally; emitted token ids per request."""
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.req_id: [] for r in requests}
        while self.has_unfinished() or self._waiting:
            for delta in self.step():
                outputs[delta.req_id].extend(delta.token_ids)
        return outputs
