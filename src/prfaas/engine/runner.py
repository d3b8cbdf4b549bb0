"""The torch engine: prefill (chunked, with a per-layer callback), export/import, batched decode.

One `Engine` wraps one loaded model. A prefill instance calls `prefill` then `export`; a decode
instance calls `import_` then `step` until its requests finish; a colocated instance does
`add_request` + `step`. Requests prefill one at a time (batch 1, chunked where the architecture is
exact under chunking), and decode together: every `step` runs one forward over all running
requests whose caches can be stacked, with explicit position ids per row.

The parts, as small serving engines separate them: `core` and `state_exchange` (the request
table, scheduling, admission, finishing and deltas, export and import, the prefix cache's
per-request side, shared with the emulated engine), `model_runner` (forwards and sampling on one
request's cache, `RequestState`), `decode_batch` (the stacked decode cache and its rollback), and
this module, which puts them together with the model's caches: prefill from a cached prefix,
state export and import through `kv_export`, `kv_checks` and `kv_import`, and moving cached
prefixes (`prefix_store`).

Requests are checked on entry (`validation`): token ids inside the vocabulary, lengths within the
model's positions, imported state from the same weights (`LoadedModel.fingerprint`). A request
that still fails inside `step` fails alone: it ends with finish_reason "error" and a reason in its
`TokenDelta`, its cache is dropped, and the others go on. When a batched decode forward raises,
the batch cache is rolled back and its requests are decoded one by one, so only the culprits end.

With a prefix cache (`PrefixCacheConfig`, `prefix_store`) a prefill starts from the longest
usable cached prefix of its prompt (whole blocks, at least one token left to compute), checkpoints
its fixed-size state at the prompt's last block boundary and stores its complete blocks when it is
done; an export may leave out the first tokens of full-attention/MLA K/V that the receiver holds,
and an import puts this engine's own cached blocks in front of them; a finished request's blocks
(prompt and output) are kept when it is freed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prfaas.engine.cache_layout import layer_kinds
from prfaas.engine.codec_rate import encode_bytes_per_s, measure_tensor
from prfaas.engine.decode_batch import DecodeBatcher
from prfaas.engine.kv_checks import CacheTemplate, check_manifest
from prfaas.engine.kv_export import export_state
from prfaas.engine.kv_import import import_state
from prfaas.engine.loading import LoadedModel
from prfaas.engine.model_runner import (
    ModelRunner,
    RequestState,
    check_chunking,
    check_prefix_caching,
    chunk_bounds,
)
from prfaas.engine.prefix_book import left_out_prefix_text
from prfaas.engine.prefix_store import PrefixCacheConfig, PrefixMiss, PrefixStore, take_checkpoint
from prfaas.engine.protocol import Buffers, ExportedState, LayerCallback
from prfaas.engine.state_exchange import StateExchange, new_transfer_id
from prfaas.engine.validation import (
    ManifestMismatch,
    check_uncoded,
    fingerprint_mismatch,
    one_line,
)
from prfaas.messages import GenerateRequest, KVManifest, SamplingParams, TokenDelta

__all__ = ["Engine", "LayerCallback", "RequestState", "chunk_bounds"]


class Engine(StateExchange[RequestState, PrefixStore]):
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
        kinds = layer_kinds(loaded.model.config)
        super().__init__(
            RequestState,
            seed=seed,
            max_batch_size=max_batch_size,
            vocab_size=loaded.vocab_size,
            max_positions=loaded.max_positions,
            tokenizer=loaded.tokenizer,
            prefix=None if prefix_cache is None else PrefixStore(prefix_cache, kinds, loaded.arch),
        )
        self.loaded = loaded
        self.model = loaded.model
        self.kinds = kinds
        self.chunk_size = chunk_size
        self.record_logits = record_logits
        self._runner = ModelRunner(loaded, kinds, record_logits=record_logits)
        self._batcher = DecodeBatcher(self._runner)
        self._template: CacheTemplate | None = None

    def free(self, req_id: str) -> None:
        self._batcher.leave()
        super().free(req_id)

    def _store_finished(self, state: RequestState, hashes: list[int]) -> None:
        if self._prefix is not None and state.cache is not None:
            self._prefix.store(hashes, state.cache)

    # ---- prefill --------------------------------------------------------------------------
    def _prefill_chunk_size(self, chunk_size: int | None) -> int | None:
        chunk = super()._prefill_chunk_size(chunk_size)
        if chunk is not None:
            check_chunking(self.loaded, chunk)
        return chunk

    @torch.inference_mode()
    def _prefill_one(
        self,
        state: RequestState,
        on_layer: LayerCallback | None,
        chunk_size: int | None,
        skip_tokens: int,
        kv_codec: str,
    ) -> int:
        """Prefill one request from its longest usable cached prefix (if any) and sample its
        first token; with a prefix cache, checkpoint the state and store the prompt's blocks."""
        prompt = state.prompt_token_ids
        hashes = self._block_hashes(state, prompt) if self._prefix is not None else []
        start = self._start_cache(state, hashes)
        cut = self._prefix.checkpoint_tokens(len(prompt)) if self._prefix is not None else 0
        checkpoint = None
        logits = torch.empty(0)
        for begin, end in chunk_bounds(start, len(prompt), chunk_size, cut):
            callback = on_layer if end == len(prompt) else None
            logits = self._runner.forward_chunk(
                state, prompt[begin:end], callback, skip_tokens, kv_codec
            )
            if end == cut:
                checkpoint = take_checkpoint(state.cache, len(self.kinds), cut)
        token = self._runner.sample(state, logits)
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
            state.cache = self._runner.new_cache()
            return 0
        fresh = self._runner.new_cache()
        state.cache = self._prefix.restore(fresh, hashes, num_blocks, self.template())
        state.num_computed_tokens = num_blocks * self._prefix.block_tokens
        state.num_cached_tokens = state.num_computed_tokens
        return state.num_computed_tokens

    # ---- decode ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode(self, group: list[RequestState]) -> list[TokenDelta]:
        """One decode step of a group (see `decode_batch`); a request that fails ends alone."""
        deltas = []
        for state, outcome in zip(group, self._batcher.forward(group), strict=True):
            if isinstance(outcome, str):
                deltas.append(self._fail(state, outcome))
            else:
                deltas.append(self._advance(state, outcome))
        return deltas

    def _advance(self, state: RequestState, logits: torch.Tensor) -> TokenDelta:
        """Sample the request's next token from its logits [vocab_size] and check stopping."""
        try:
            self._runner.sample(state, logits)
            self._finish_if_done(state)
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            return self._fail(state, f"sampling failed: {one_line(exc)}")
        return self._delta(state)

    def _finish_if_done(self, state: RequestState) -> None:
        super()._finish_if_done(state)
        if state.finish_reason is not None and state.cache is None:
            self._batcher.leave()

    def _drop_state(self, state: RequestState) -> None:
        if self._batcher.holds(state.req_id):
            self._batcher.leave()
        state.cache = None

    # ---- export / import ------------------------------------------------------------------
    def _export_state(
        self, state: RequestState, transfer_id: str, num_prefix_tokens: int, kv_codec: str
    ) -> ExportedState:
        """Zero-copy buffers of the request's cache (copied only where a prefix is cut), or the
        coded bytes of its K/V under a codec."""
        self._batcher.leave()
        return export_state(
            state.cache,
            self.kinds,
            arch=self.loaded.arch,
            req_id=state.req_id,
            transfer_id=transfer_id,
            num_computed_tokens=state.num_computed_tokens,
            first_token_id=state.output_token_ids[0],
            model_fingerprint=self.loaded.fingerprint,
            num_prefix_tokens=num_prefix_tokens,
            kv_codec_name=kv_codec,
        )

    def _check_state(self, manifest: KVManifest, buffers: Buffers) -> None:
        """The manifest's layout against this model's cache, then its weights' fingerprint."""
        check_manifest(manifest, self.template())  # layout first: its reasons are the plainer
        if manifest.model_fingerprint:  # hash the weights only when there is something to match
            mismatch = fingerprint_mismatch(manifest, self.loaded.fingerprint)
            if mismatch is not None:
                raise ManifestMismatch(mismatch)

    def _load_state(
        self, manifest: KVManifest, buffers: Buffers, copy: bool, prefix: list[int]
    ) -> object:
        """A fresh cache holding the state, behind this engine's own blocks of a left-out prefix."""
        tensors = None
        if prefix:
            store = self._require_prefix("import a partial state")
            try:
                tensors = store.prefix_tensors(prefix, len(prefix))
            except PrefixMiss as exc:
                raise PrefixMiss(f"{left_out_prefix_text(manifest)}: {exc}") from None
        fresh = self._runner.new_cache()
        template = self.template()
        return import_state(fresh, manifest, buffers, template, copy=copy, prefix_tensors=tensors)

    def _set_cache(self, state: RequestState, cache: object) -> None:
        state.cache = cache

    def import_empty(
        self, manifest: KVManifest, sampling: SamplingParams | None = None
    ) -> RequestState:
        """Adopt a request with an empty cache instead of its state: verify's negative control.

        Decoding it must give other tokens than `import_`; if it does not, the check is vacuous.
        """
        self._check_manifest(manifest, [])
        return self._adopt(manifest, sampling, (), self._runner.new_cache())

    def kv_encode_bytes_per_s(self, codec_name: str) -> float | None:
        """Uncoded bytes per second `codec_name` encodes this model's attention K at, on this
        thread (`engine.codec_rate`, the shape and dtype of its first K); None for a model
        without attention K/V (nothing to code)."""
        key = self.template().first_key()
        if key is None:
            return None
        dtype, shape = key
        return encode_bytes_per_s(codec_name, measure_tensor(getattr(torch, dtype), shape))

    def template(self) -> CacheTemplate:
        """The receiving side's expected manifest layout, probed once with a 2-token prefill."""
        if self._template is None:
            probe = Engine(self.loaded)
            probe.prefill([GenerateRequest("probe", (1, 2), SamplingParams(max_tokens=1))])
            self._template = CacheTemplate.from_manifest(probe.export("probe").manifest)
        return self._template

    # ---- moving a cached prefix -----------------------------------------------------------
    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str | None = None
    ) -> ExportedState:
        """The cached state after the first `num_tokens` tokens of `token_ids` (whole blocks: the
        attention blocks and the state checkpoint at exactly that length), to move to another
        instance's prefix cache (`import_prefix` there). PrefixMiss when it is not all here."""
        store = self._require_prefix("export a prefix")
        manifest, buffers = store.export_prefix(
            token_ids, num_tokens, new_transfer_id(transfer_id), self.loaded.fingerprint
        )
        return ExportedState(manifest, buffers)

    def import_prefix(
        self, manifest: KVManifest, buffers: Buffers, prompt_token_ids: Sequence[int] | None = None
    ) -> int:
        """Store a prefix moved from another instance (`export_prefix`) in this engine's prefix
        cache, as if computed here, so a prefill of a prompt that starts with it reuses it.
        With `prompt_token_ids` the prefix must be theirs. Returns the tokens now reusable.
        Refused (ManifestMismatch / PrefixMiss) for another model or layout, changed bytes, a
        different prompt or block size."""
        store = self._require_prefix("import a prefix")
        check_uncoded(manifest, "a moved prefix")
        self._check_state(manifest, buffers)
        with torch.inference_mode():
            fresh = self._runner.new_cache()
            return store.import_prefix(manifest, buffers, fresh, self.template(), prompt_token_ids)
