"""The engine: prefill (chunked, with a per-layer callback), export/import, batched decode.

One `Engine` wraps one loaded model. A prefill instance calls `prefill` then `export`; a decode
instance calls `import_` then `step` until its requests finish; a colocated instance does
`add_request` + `step`. Requests prefill one at a time (batch 1, chunked where the architecture is
exact under chunking), and decode together: every `step` runs one forward over all running
requests whose caches can be stacked (see `batching`), with explicit position ids per row.

Requests are checked on entry (`validation`): token ids inside the vocabulary, lengths within the
model's positions, imported state from the same weights (`LoadedModel.fingerprint`). A request
that still fails inside `step` fails alone: it ends with finish_reason "error" and a reason in its
`TokenDelta`, its cache is dropped, and the others go on. When a batched decode forward raises,
the batch cache is rolled back (`rollback`) and its requests are decoded one by one, so only the
culprits end.

With a prefix cache (`PrefixCacheConfig`, `prefix_store`) a prefill starts from the longest
usable cached prefix of its prompt (whole blocks, at least one token left to compute), checkpoints
its fixed-size state at the prompt's last block boundary and stores its complete blocks when it is
done; an export may leave out the first tokens of full-attention/MLA K/V that the receiver holds,
and an import puts this engine's own cached blocks in front of them; a finished request's blocks
(prompt and output) are kept when it is freed.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prfaas.engine import batching
from prfaas.engine.cache_layout import decoder_layers, layer_kinds, new_cache
from prfaas.engine.kv_state import (
    CacheTemplate,
    ExportedState,
    LayerState,
    ManifestMismatch,
    check_manifest,
    export_layer,
    export_state,
    import_state,
)
from prfaas.engine.loading import LoadedModel
from prfaas.engine.prefix_store import PrefixCacheConfig, PrefixMiss, PrefixStore, take_checkpoint
from prfaas.engine.rollback import CacheSnapshot
from prfaas.engine.sampling import sample_token
from prfaas.engine.validation import (
    check_distinct_ids,
    check_exportable,
    check_manifest_request,
    check_prompt,
    check_skip_tokens,
    fingerprint_mismatch,
    one_line,
)
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, KVManifest, SamplingParams, TokenDelta
from prfaas.prefix_cache.pool import HybridPrefixPool

LayerCallback = Callable[[str, LayerState], None]  # (req_id, that layer's state) -> None
STOP_MARGIN_CHARS = 8  # characters decoded beyond the longest stop string


@dataclass
class RequestState:
    """One request's progress inside an engine."""

    req_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    seed: int  # resolved per-request sampling seed
    cache: Any = None  # batch-1 cache, or None while the request sits in a decode batch
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # leading prompt tokens taken from this engine's prefix cache
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logits: list[torch.Tensor] = field(default_factory=list)  # per sampled token, if recorded
    error: str | None = None  # why, when finish_reason is "error"

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1]


@dataclass
class _DecodeBatch:
    req_ids: tuple[str, ...]
    cache: Any


class Engine:
    """Serve one model: prefill, export, import and continuous-batching decode."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        chunk_size: int | None = None,
        max_batch_size: int = 64,
        seed: int = 0,
        record_logits: bool = False,
        prefix_cache: PrefixCacheConfig | None = None,
    ):
        if chunk_size is not None:
            check_chunking(loaded, chunk_size)
        if prefix_cache is not None:
            check_prefix_caching(loaded)
        self.loaded = loaded
        self.model = loaded.model
        self.kinds = layer_kinds(self.model.config)
        self.chunk_size = chunk_size
        self.max_batch_size = max_batch_size
        self.record_logits = record_logits
        self.requests: dict[str, RequestState] = {}
        self._waiting: list[str] = []
        self._batch: _DecodeBatch | None = None
        self._rng = random.Random(seed)
        self._template: CacheTemplate | None = None
        self._vocab_size = loaded.vocab_size
        self._max_positions = loaded.max_positions
        self._prefix: PrefixStore | None = None
        if prefix_cache is not None:
            self._prefix = PrefixStore(prefix_cache, self.kinds, loaded.arch)
        self._transfers: dict[str, list[str]] = {}  # req_id -> transfers reserved in the pool

    # ---- requests -------------------------------------------------------------------------
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

    def _register(
        self, req_id: str, prompt: Sequence[int], sampling: SamplingParams
    ) -> RequestState:
        self._check_new_id(req_id)
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(31)
        state = RequestState(req_id, tuple(prompt), sampling, seed)
        self.requests[req_id] = state
        return state

    def free(self, req_id: str) -> None:
        """Drop a request and its state.

        With a prefix cache: its pin and transfer reservations are released, and a request that
        finished well ("stop" or "length") leaves its complete blocks of prompt and output in
        the cache (attention K/V only) if the engine knows its prompt ids.
        """
        self._leave_batch()
        state = self.requests.pop(req_id, None)
        if req_id in self._waiting:
            self._waiting.remove(req_id)
        if self._prefix is not None:
            self._prefix.unpin(req_id)
            for transfer_id in self._transfers.pop(req_id, []):
                self._prefix.release_transfer(transfer_id)
            if state is not None:
                self._retain(state)

    def _retain(self, state: RequestState) -> None:
        """Store the attention blocks of a finished request's computed tokens: the prompt and
        every output token but the last, whose K/V was never computed."""
        if self._prefix is None or state.cache is None or not state.prompt_token_ids:
            return
        if state.finish_reason not in ("stop", "length"):
            return
        tokens = (*state.prompt_token_ids, *state.output_token_ids)[: state.num_computed_tokens]
        if len(tokens) == state.num_computed_tokens:
            self._prefix.store(self._prefix.hashes(tokens), state.cache)

    def has_unfinished(self) -> bool:
        return any(r.finish_reason is None for r in self.requests.values())

    # ---- prefill --------------------------------------------------------------------------
    def prefill(
        self,
        requests: Sequence[GenerateRequest],
        on_layer: LayerCallback | None = None,
        chunk_size: int | None = None,
        skip_tokens: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Prefill each request (batch 1, chunked if asked) and sample its first token.

        `on_layer(req_id, LayerState)` fires for layer i as soon as its state is final (during the
        last chunk), in layer order, with global payload offsets; return values are first tokens.
        `skip_tokens[req_id]` = p > 0 leaves the first p tokens of full-attention/MLA K/V out of
        that request's layer states (the receiver holds them), as `export(num_prefix_tokens=p)`.
        Every request is checked before any is prefilled. If a prefill raises (the model or
        `on_layer`), that request is dropped from the engine and the error propagates; requests
        before it stay prefilled.
        """
        chunk = chunk_size if chunk_size is not None else self.chunk_size
        if chunk is not None:
            check_chunking(self.loaded, chunk)
        check_distinct_ids([request.req_id for request in requests])
        for request in requests:
            self._check_request(request)
        skips = dict(skip_tokens or {})
        _check_skip_tokens(requests, skips)
        first_tokens = []
        for request in requests:
            state = self._register(request.req_id, request.prompt_token_ids, request.sampling)
            try:
                skip = skips.get(request.req_id, 0)
                first_tokens.append(self._prefill_one(state, on_layer, chunk, skip))
            except BaseException:
                self.free(state.req_id)
                raise
        return first_tokens

    @torch.inference_mode()
    def _prefill_one(
        self,
        state: RequestState,
        on_layer: LayerCallback | None,
        chunk: int | None,
        skip_tokens: int = 0,
    ) -> int:
        """Prefill one request from its longest usable cached prefix (if any) and sample its
        first token; with a prefix cache, checkpoint the state and store the prompt's blocks."""
        prompt = state.prompt_token_ids
        hashes = self._prefix.hashes(prompt) if self._prefix is not None else []
        start = self._start_cache(state, hashes)
        cut = self._prefix.checkpoint_tokens(len(prompt)) if self._prefix is not None else 0
        checkpoint = None
        logits = torch.empty(0)
        for begin, end in chunk_bounds(start, len(prompt), chunk, cut):
            callback = on_layer if end == len(prompt) else None
            logits = self._forward_chunk(state, prompt[begin:end], callback, skip_tokens)
            if end == cut:
                checkpoint = take_checkpoint(state.cache, len(self.kinds), cut)
        token = self._sample(state, logits)
        if self._prefix is not None:
            self._prefix.store(hashes, state.cache, checkpoint)
        self._finish_if_done(state)
        return token

    def _start_cache(self, state: RequestState, hashes: Sequence[int]) -> int:
        """Give the request a fresh cache, or one holding its longest usable cached prefix;
        return the number of prompt tokens that cache already holds."""
        num_blocks = 0
        if self._prefix is not None:
            num_blocks = self._prefix.usable_blocks(hashes, len(state.prompt_token_ids))
        if self._prefix is None or num_blocks == 0:
            state.cache = new_cache(self.model)
            return 0
        fresh = new_cache(self.model)
        state.cache = self._prefix.restore(fresh, hashes, num_blocks, self.template())
        state.num_computed_tokens = num_blocks * self._prefix.block_tokens
        state.num_cached_tokens = state.num_computed_tokens
        return state.num_computed_tokens

    def _forward_chunk(
        self,
        state: RequestState,
        token_ids: Sequence[int],
        on_layer: LayerCallback | None,
        skip_tokens: int = 0,
    ) -> torch.Tensor:
        start = state.num_computed_tokens
        input_ids = torch.tensor([list(token_ids)])  # [1, chunk_len]
        positions = torch.arange(start, start + len(token_ids)).unsqueeze(0)  # [1, chunk_len]
        hooks = self._layer_hooks(state, on_layer, skip_tokens) if on_layer is not None else []
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
        self, state: RequestState, on_layer: LayerCallback, skip_tokens: int = 0
    ) -> list[Any]:
        offset = [0]

        def make_hook(index: int) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                kind = self.kinds[index]
                layer_state = export_layer(state.cache, index, kind, offset[0], skip_tokens)
                offset[0] += layer_state.entry.num_bytes
                on_layer(state.req_id, layer_state)

            return hook

        layers = decoder_layers(self.model)
        return [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]

    # ---- export / import ------------------------------------------------------------------
    def export(
        self, req_id: str, transfer_id: str | None = None, *, num_prefix_tokens: int = 0
    ) -> ExportedState:
        """Manifest and zero-copy buffers of one prefilled request's state.

        Only a request that holds just its first output token can be exported: the manifest
        resumes decoding from that token, so state that has decoded further would continue wrong.
        `num_prefix_tokens` p > 0 leaves the first p tokens of every full-attention/MLA K/V out
        (the receiver holds them; those slices are copied); fixed-size states travel whole. With
        a prefix cache, the exported bytes are reserved in its pool until `free(req_id)`.
        """
        state = self._get(req_id)
        check_exportable(req_id, len(state.output_token_ids), state.finish_reason, state.error)
        check_skip_tokens(req_id, num_prefix_tokens, state.num_computed_tokens)
        self._leave_batch()
        exported = export_state(
            state.cache,
            self.kinds,
            arch=self.loaded.arch,
            req_id=req_id,
            transfer_id=transfer_id or uuid.uuid4().hex,
            num_computed_tokens=state.num_computed_tokens,
            first_token_id=state.output_token_ids[0],
            model_fingerprint=self.loaded.fingerprint,
            num_prefix_tokens=num_prefix_tokens,
        )
        self._reserve_transfer(req_id, exported.manifest)
        return exported

    def _reserve_transfer(self, req_id: str, manifest: KVManifest) -> None:
        """Count an outgoing transfer's bytes in the prefix pool until the request is freed.

        Never fails the export: bytes that do not fit are simply not reserved.
        """
        if self._prefix is None:
            return
        transfer_id = manifest.transfer_id
        self._prefix.release_transfer(transfer_id)  # a repeated export replaces its reservation
        if self._prefix.reserve_transfer(transfer_id, manifest.total_bytes):
            reserved = self._transfers.setdefault(req_id, [])
            if transfer_id not in reserved:
                reserved.append(transfer_id)

    def import_(
        self,
        manifest: KVManifest,
        buffers: Sequence[Any],
        sampling: SamplingParams | None = None,
        *,
        copy: bool = False,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> RequestState:
        """Adopt a request prefilled elsewhere; it decodes on the next `step`.

        Writable buffers are used in place (the engine owns them afterwards) unless `copy`.
        `prompt_token_ids` (the request's prompt, num_computed_tokens long) lets the engine find
        a prefix the manifest left out (`num_prefix_tokens` p > 0: this engine's cached blocks
        0..p/B-1 go in front of the received K/V; PrefixMiss if one is missing) and keep the
        request's blocks when it is freed. Any pin of this request is released.
        """
        try:
            self._check_manifest(manifest)
            prompt = self._checked_import_prompt(manifest, prompt_token_ids)
            prefix = self._local_prefix(manifest, prompt)
            cache = import_state(
                new_cache(self.model),
                manifest,
                buffers,
                self.template(),
                copy=copy,
                prefix_tensors=prefix,
            )
        finally:
            if self._prefix is not None:
                self._prefix.unpin(manifest.req_id)
        state = self._adopt(manifest, cache, sampling, prompt)
        state.num_cached_tokens = manifest.num_prefix_tokens
        return state

    def _checked_import_prompt(
        self, manifest: KVManifest, prompt_token_ids: Sequence[int] | None
    ) -> tuple[int, ...]:
        """The imported request's prompt ids (empty when not given), checked against it."""
        if prompt_token_ids is None:
            return ()
        prompt = tuple(prompt_token_ids)
        check_prompt(manifest.req_id, prompt, self._vocab_size, self._max_positions)
        if len(prompt) != manifest.num_computed_tokens:
            raise UserError(
                f"request {manifest.req_id!r}: {len(prompt)} prompt token ids for a state of "
                f"{manifest.num_computed_tokens} computed tokens"
            )
        return prompt

    def _local_prefix(
        self, manifest: KVManifest, prompt: tuple[int, ...]
    ) -> dict[str, torch.Tensor] | None:
        """This engine's cached K/V of the prefix a manifest left out, by manifest tensor name."""
        num_prefix = manifest.num_prefix_tokens
        if num_prefix == 0:
            return None
        what = f"manifest of {manifest.req_id!r} leaves out {num_prefix} prefix tokens"
        if self._prefix is None:
            raise PrefixMiss(f"{what}, but this engine has no prefix cache")
        if not prompt:
            raise PrefixMiss(f"{what}; finding them needs the prompt's token ids")
        block_tokens = self._prefix.block_tokens
        if num_prefix % block_tokens:
            raise PrefixMiss(f"{what}, not a whole number of {block_tokens}-token blocks")
        hashes = self._prefix.hashes(prompt[:num_prefix])
        try:
            return self._prefix.prefix_tensors(hashes, len(hashes))
        except PrefixMiss as exc:
            raise PrefixMiss(f"{what}: {exc}") from None

    def import_empty(
        self, manifest: KVManifest, sampling: SamplingParams | None = None
    ) -> RequestState:
        """Adopt a request with an empty cache instead of its state: verify's negative control.

        Decoding it must give other tokens than `import_`; if it does not, the check is vacuous.
        """
        self._check_manifest(manifest)
        return self._adopt(manifest, new_cache(self.model), sampling)

    def _check_manifest(self, manifest: KVManifest) -> None:
        """Refuse a manifest this engine cannot continue: bad first token, too long, other model."""
        check_manifest_request(manifest, self._vocab_size, self._max_positions)
        self._check_new_id(manifest.req_id)
        check_manifest(manifest, self.template())  # layout first: its reasons are the plainer
        if manifest.model_fingerprint:  # hash the weights only when there is something to match
            mismatch = fingerprint_mismatch(manifest, self.loaded.fingerprint)
            if mismatch is not None:
                raise ManifestMismatch(mismatch)

    def _adopt(
        self,
        manifest: KVManifest,
        cache: Any,
        sampling: SamplingParams | None,
        prompt: tuple[int, ...] = (),
    ) -> RequestState:
        """Register a request whose prompt was computed elsewhere (its ids, when the caller
        passes them, are kept for the prefix cache; they are not shipped with the state)."""
        state = self._register(manifest.req_id, prompt, sampling or SamplingParams())
        state.cache = cache
        state.num_computed_tokens = manifest.num_computed_tokens
        state.output_token_ids.append(int(manifest.first_token_id or 0))
        self._finish_if_done(state)
        return state

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

    # ---- prefix cache ---------------------------------------------------------------------
    @property
    def prefix_pool(self) -> HybridPrefixPool | None:
        """The prefix cache's bookkeeping (events, stats), or None without a prefix cache."""
        return None if self._prefix is None else self._prefix.pool

    def num_cached_tokens(self, req_id: str) -> int:
        """Leading prompt tokens of a request taken from this engine's prefix cache (0: none)."""
        return self._get(req_id).num_cached_tokens

    def cached_prefix_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Leading prompt tokens this engine could supply as a receiver: whole blocks whose
        attention K/V it holds, at least one token short of the prompt. Fixed-size states come
        whole with every transfer, so no state checkpoint is needed."""
        if self._prefix is None or not prompt_token_ids:
            return 0
        hashes = self._prefix.hashes(prompt_token_ids)
        num_blocks = self._prefix.held_blocks(hashes, len(prompt_token_ids))
        return num_blocks * self._prefix.block_tokens

    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str | None = None
    ) -> ExportedState:
        """The cached state after the first `num_tokens` tokens of `token_ids` (whole blocks: the
        attention blocks and the state checkpoint at exactly that length), to move to another
        instance's prefix cache (`import_prefix` there). PrefixMiss when it is not all here."""
        store = self._require_prefix("export a prefix")
        manifest, buffers = store.export_prefix(
            token_ids, num_tokens, transfer_id or uuid.uuid4().hex, self.loaded.fingerprint
        )
        return ExportedState(manifest, buffers)

    def import_prefix(
        self,
        manifest: KVManifest,
        buffers: Sequence[Any],
        prompt_token_ids: Sequence[int] | None = None,
    ) -> int:
        """Store a prefix moved from another instance (`export_prefix`) in this engine's prefix
        cache, as if computed here, so a prefill of a prompt that starts with it reuses it.
        With `prompt_token_ids` the prefix must be theirs. Returns the tokens now reusable.
        Refused (ManifestMismatch / PrefixMiss) for another model or layout, changed bytes, a
        different prompt or block size."""
        store = self._require_prefix("import a prefix")
        check_manifest(manifest, self.template())
        if manifest.model_fingerprint:  # hash the weights only when there is something to match
            mismatch = fingerprint_mismatch(manifest, self.loaded.fingerprint)
            if mismatch is not None:
                raise ManifestMismatch(mismatch)
        with torch.inference_mode():
            return store.import_prefix(
                manifest, buffers, new_cache(self.model), self.template(), prompt_token_ids
            )

    def _require_prefix(self, what: str) -> PrefixStore:
        if self._prefix is None:
            raise PrefixMiss(f"cannot {what}: this engine has no prefix cache")
        return self._prefix

    def pin_prefix(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Hold the cached blocks of the first `num_tokens` prompt tokens for `req_id` until its
        `import_` or `free`; False (nothing pinned) when they are not all here, `num_tokens` is
        not a whole number of blocks, or the prompt would be left with no token to transfer.
        A request has at most one pin: pinning again replaces it."""
        if self._prefix is None:
            return False
        self._prefix.unpin(req_id)
        block_tokens = self._prefix.block_tokens
        if not 0 <= num_tokens < len(prompt_token_ids) or num_tokens % block_tokens:
            return False
        hashes = self._prefix.hashes(prompt_token_ids[:num_tokens])
        return self._prefix.pin(req_id, hashes, len(hashes))

    def template(self) -> CacheTemplate:
        """The receiving side's expected manifest layout, probed once with a 2-token prefill."""
        if self._template is None:
            probe = Engine(self.loaded)
            probe.prefill([GenerateRequest("probe", (1, 2), SamplingParams(max_tokens=1))])
            self._template = CacheTemplate.from_manifest(probe.export("probe").manifest)
        return self._template

    # ---- decode ---------------------------------------------------------------------------
    def step(self) -> list[TokenDelta]:
        """Prefill one waiting request if any, else one decode step of all running requests.

        A request whose prefill or decode raises ends with finish_reason "error" (the delta says
        why) and loses its cache; the other requests are not affected.
        """
        if self._waiting:
            state = self.requests[self._waiting.pop(0)]
            return [self._prefill_waiting(state)]
        running = [r for r in self.requests.values() if r.finish_reason is None]
        deltas = []
        for group in _chunks(running, self.max_batch_size):
            deltas.extend(self._decode(group))
        return deltas

    def _prefill_waiting(self, state: RequestState) -> TokenDelta:
        try:
            self._prefill_one(state, None, self.chunk_size)
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return self._fail(state, f"prefill failed: {one_line(exc)}")
        return self._delta(state, 1)

    @torch.inference_mode()
    def _decode(self, group: list[RequestState]) -> list[TokenDelta]:
        """One decode step of a group: one batched forward, or one forward per request if the
        caches cannot be stacked or the batched forward raises (then rolled back first)."""
        if len(group) == 1:
            return [self._decode_alone(group[0])]
        try:
            cache, mask = self._batch_cache(group)
        except Exception:  # unstackable caches: each request keeps its own, decode them alone
            return [self._decode_alone(state) for state in group]
        snapshot = CacheSnapshot.take(cache)
        try:
            logits = self._forward_decode(group, cache, mask)  # [batch, vocab_size]
        except Exception:  # some row broke the forward: undo it and find the row(s) alone
            snapshot.restore()
            self._leave_batch()
            return [self._decode_alone(state) for state in group]
        for state in group:  # every row's cache grew; count it before any split
            state.num_computed_tokens += 1
        return [self._advance(state, logits[row]) for row, state in enumerate(group)]

    def _decode_alone(self, state: RequestState) -> TokenDelta:
        if state.cache is None:
            self._leave_batch()
        try:
            logits = self._forward_decode([state], state.cache, None)  # [1, vocab_size]
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return self._fail(state, f"decode failed: {one_line(exc)}")
        state.num_computed_tokens += 1
        return self._advance(state, logits[0])

    def _forward_decode(self, group: list[RequestState], cache: Any, mask: Any) -> torch.Tensor:
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

    def _advance(self, state: RequestState, logits: torch.Tensor) -> TokenDelta:
        """Sample the request's next token from its logits [vocab_size] and check stopping."""
        try:
            self._sample(state, logits)
            self._finish_if_done(state)
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return self._fail(state, f"sampling failed: {one_line(exc)}")
        return self._delta(state, 1)

    def _fail(self, state: RequestState, reason: str) -> TokenDelta:
        """End a request with an error and drop its cache; the delta carries the reason."""
        state.finish_reason = "error"
        state.error = reason
        if self._batch is not None and state.req_id in self._batch.req_ids:
            self._leave_batch()
        state.cache = None
        return self._token_delta(state, [], "error")

    def _batch_cache(self, group: list[RequestState]) -> tuple[Any, Any]:
        ids = tuple(r.req_id for r in group)
        if len(group) == 1:
            self._leave_batch()
            return group[0].cache, None
        if self._batch is None or self._batch.req_ids != ids:
            self._leave_batch()
            caches = [r.cache for r in group]
            merged = batching.merge_caches(
                self.model, caches, [r.num_computed_tokens for r in group]
            )
            for r in group:
                r.cache = None
            self._batch = _DecodeBatch(ids, merged)
        return self._batch.cache, batching.decode_mask(
            self.model, [r.num_computed_tokens for r in group]
        )

    def _leave_batch(self) -> None:
        """Give every request in the decode batch its own batch-1 cache back."""
        if self._batch is None:
            return
        members = [self.requests[i] for i in self._batch.req_ids]
        lengths = [r.num_computed_tokens for r in members]
        caches = batching.split_cache(self.model, self._batch.cache, lengths)
        for member, cache in zip(members, caches, strict=True):
            member.cache = cache
        self._batch = None

    # ---- sampling and stopping ------------------------------------------------------------
    def _sample(self, state: RequestState, logits: torch.Tensor) -> int:
        if self.record_logits:
            state.logits.append(logits.detach().float().clone())
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the model's logits hold NaN or infinity")
        token = sample_token(logits, state.sampling, state.seed, len(state.output_token_ids))
        state.output_token_ids.append(token)
        return token

    def _is_stop_token(self, params: SamplingParams, token: int) -> bool:
        """A token that ends the request and is not emitted: a stop token id, or EOS."""
        eos = self.loaded.tokenizer.eos_token_id
        return token in params.stop_token_ids or (token == eos and not params.ignore_eos)

    def _finish_if_done(self, state: RequestState) -> None:
        params = state.sampling
        if self._is_stop_token(params, state.last_token_id) or self._hits_stop_string(state):
            state.finish_reason = "stop"
        elif len(state.output_token_ids) >= params.max_tokens:
            state.finish_reason = "length"
        elif self._max_positions is not None and state.num_computed_tokens >= self._max_positions:
            state.finish_reason = "length"  # the next token would need a position past the model's
        if state.finish_reason is not None and state.cache is None:
            self._leave_batch()

    def _hits_stop_string(self, state: RequestState) -> bool:
        stops = [s for s in state.sampling.stop if s]
        if not stops:
            return False
        text = self._output_tail_text(state, max(len(s) for s in stops) + STOP_MARGIN_CHARS)
        return any(s in text for s in stops)

    def _output_tail_text(self, state: RequestState, num_chars: int) -> str:
        """The decoded end of the output, at least `num_chars` characters long (or all of it).

        Tokens per character vary: one per ASCII byte and three per CJK character with the byte
        tokenizer, fractions of one with BPE, none for skipped specials. So the tail starts at
        `num_chars` tokens and doubles until its text is long enough.
        """
        output = state.output_token_ids
        num_tokens = num_chars
        while True:
            text = self.loaded.tokenizer.decode(output[-num_tokens:])
            if len(text) >= num_chars or num_tokens >= len(output):
                return text
            num_tokens *= 2

    def _delta(self, state: RequestState, num_new: int) -> TokenDelta:
        return self._token_delta(state, state.output_token_ids[-num_new:], state.finish_reason)

    def _token_delta(
        self, state: RequestState, new: Sequence[int], finish_reason: str | None
    ) -> TokenDelta:
        """A delta of `new` tokens; a stop token that ended the request is not emitted."""
        drops_last = (
            finish_reason == "stop" and bool(new) and self._is_stop_token(state.sampling, new[-1])
        )
        emitted = tuple(new[:-1] if drops_last else new)
        error = state.error if finish_reason == "error" else None
        return TokenDelta(state.req_id, emitted, finish_reason, error)

    def _get(self, req_id: str) -> RequestState:
        if req_id not in self.requests:
            raise UserError(f"unknown request {req_id!r}")
        return self.requests[req_id]

    def generate(self, requests: Sequence[GenerateRequest]) -> dict[str, list[int]]:
        """Run requests to completion locally; emitted token ids per request."""
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.req_id: [] for r in requests}
        while self.has_unfinished() or self._waiting:
            for delta in self.step():
                outputs[delta.req_id].extend(delta.token_ids)
        return outputs


def check_prefix_caching(loaded: LoadedModel) -> None:
    """Refuse a prefix cache where resuming from cached state is not exact."""
    if not loaded.is_chunk_exact:
        raise UserError(
            f"a prefix cache is not exact for {loaded.arch}: resuming a prefill from a cached "
            "prefix is a multi-token update of existing state, which transformers does not "
            "compute exactly for it (as with chunked prefill)"
        )


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


def _check_skip_tokens(requests: Sequence[GenerateRequest], skips: Mapping[str, int]) -> None:
    lengths = {request.req_id: len(request.prompt_token_ids) for request in requests}
    for req_id, num_prefix_tokens in skips.items():
        if req_id not in lengths:
            raise UserError(f"skip_tokens names request {req_id!r}, which is not being prefilled")
        check_skip_tokens(req_id, num_prefix_tokens, lengths[req_id])


def check_chunking(loaded: LoadedModel, chunk_size: int) -> None:
    """Refuse chunked prefill where transformers' multi-token-with-state path is not exact."""
    if chunk_size < 1:
        raise UserError(f"chunk size must be >= 1, got {chunk_size}")
    if not loaded.is_chunk_exact:
        raise UserError(
            f"chunked prefill is not exact for {loaded.arch} (transformers' multi-token update "
            "of existing state differs from a one-shot prefill); prefill it in one chunk"
        )


def _chunks(items: list[RequestState], size: int) -> list[list[RequestState]]:
    it = iter(items)
    return list(iter(lambda: list(itertools.islice(it, size)), []))
