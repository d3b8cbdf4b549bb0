"""Export, import and the prefix cache's per-request side, as both engines do them.

`StateExchange` adds to `core.EngineCore` what crosses instances: `export` (a just-prefilled
request's state, its bytes reserved in the prefix pool until the request is freed), `import_`
(a state from another instance, checked whole before anything is registered, with this engine's
own cached blocks in front of a prefix the manifest leaves out, found by the hashes the request's
pin made), and the prefix-cache queries the services and the router's dispatch ask (`pin_prefix`,
`cached_prefix_tokens`, `num_cached_tokens`, `prefix_pool`). A subclass says how a state is built
(`_export_state`), checked (`_check_state`) and loaded (`_load_state`).
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import Sequence

from prfaas.engine.core import EngineCore, P, R
from prfaas.engine.prefix_book import left_out_hashes
from prfaas.engine.protocol import Buffers, ExportedState
from prfaas.engine.validation import (
    check_exportable,
    check_import_prompt,
    check_manifest_request,
    check_skip_tokens,
)
from prfaas.messages import KVManifest, SamplingParams
from prfaas.models.kv_codec import KV_CODEC_NONE, get_kv_codec
from prfaas.prefix_cache.pool import HybridPrefixPool


class StateExchange(EngineCore[R, P]):
    """An engine whose requests' states move between instances."""

    @abstractmethod
    def _export_state(
        self, state: R, transfer_id: str, num_prefix_tokens: int, kv_codec: str
    ) -> ExportedState:
        """The manifest and buffers of a checked, just-prefilled request (K/V coded by the codec
        `kv_codec`)."""

    @abstractmethod
    def _check_state(self, manifest: KVManifest, buffers: Buffers) -> None:
        """Refuse a state this engine cannot continue: other model or layout, changed bytes."""

    @abstractmethod
    def _load_state(
        self, manifest: KVManifest, buffers: Buffers, copy: bool, prefix: list[int]
    ) -> object:
        """Load a checked state (the cache `_set_cache` gets), with this engine's cached blocks
        (hashes `prefix`) in front of what the manifest leaves out."""

    def _set_cache(self, state: R, cache: object) -> None:
        """Give an imported request the cache `_load_state` made (nothing to do without one)."""

    # ---- export / import --------------------------------------------------------------------
    def export(
        self,
        req_id: str,
        transfer_id: str | None = None,
        *,
        num_prefix_tokens: int = 0,
        kv_codec: str = KV_CODEC_NONE,
    ) -> ExportedState:
        """Manifest and buffers of one prefilled request's state.

        Only a request that holds just its first output token can be exported: the manifest
        resumes decoding from that token, so state that has decoded further would continue wrong.
        `num_prefix_tokens` p > 0 leaves the first p tokens of every full-attention/MLA K/V out
        (the receiver holds them); fixed-size states travel whole. `kv_codec` codes the
        attention K/V (`prfaas.models.kv_codec`; the manifest names it). With a prefix cache, the
        exported bytes are reserved in its pool until `free(req_id)`.
        """
        state = self._get(req_id)
        check_exportable(req_id, len(state.output_token_ids), state.finish_reason, state.error)
        check_skip_tokens(req_id, num_prefix_tokens, state.num_computed_tokens)
        get_kv_codec(kv_codec)
        tid = new_transfer_id(transfer_id)
        exported = self._export_state(state, tid, num_prefix_tokens, kv_codec)
        if self._prefix is not None:  # never fails the export: what does not fit is not reserved
            manifest = exported.manifest
            self._prefix.reserve_for(req_id, manifest.transfer_id, manifest.total_bytes)
        return exported

    def import_(
        self,
        manifest: KVManifest,
        buffers: Buffers,
        sampling: SamplingParams | None = None,
        *,
        copy: bool = False,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> R:
        """Adopt a request prefilled elsewhere; it decodes on the next `step`.

        Writable buffers are used in place (the engine owns them afterwards) unless `copy`.
        `prompt_token_ids` (the request's prompt, num_computed_tokens long) lets the engine find
        a prefix the manifest left out (`num_prefix_tokens` p > 0: this engine's cached blocks
        0..p/B-1 go in front of the received K/V; PrefixMiss if one is missing) and keep the
        request's blocks when it is freed (not those of a state coded by a KV codec: they hold
        approximate K/V). Any pin of this request is released.
        """
        try:
            self._check_manifest(manifest, buffers)
            prompt = check_import_prompt(
                manifest, prompt_token_ids, self._vocab_size, self._max_positions
            )
            prefix_hashes = left_out_hashes(self._prefix, manifest, prompt)
            cache = self._load_state(manifest, buffers, copy, prefix_hashes)
        finally:
            self._unpin(manifest.req_id)
        state = self._adopt(manifest, sampling, prompt, cache)
        state.num_cached_tokens = manifest.num_prefix_tokens
        state.block_hashes = prefix_hashes
        state.has_coded_kv = manifest.kv_codec != KV_CODEC_NONE
        return state

    def _check_manifest(self, manifest: KVManifest, buffers: Buffers) -> None:
        """Refuse a manifest this engine cannot continue: bad first token, too long, other model."""
        check_manifest_request(manifest, self._vocab_size, self._max_positions)
        self._check_new_id(manifest.req_id)
        self._check_state(manifest, buffers)

    def _adopt(
        self,
        manifest: KVManifest,
        sampling: SamplingParams | None,
        prompt: tuple[int, ...],
        cache: object,
    ) -> R:
        """Register a request whose prompt was computed elsewhere (its ids, when the caller
        passes them, are kept for the prefix cache; they are not shipped with the state)."""
        state = self._register(manifest.req_id, prompt, sampling or SamplingParams())
        self._set_cache(state, cache)
        state.num_computed_tokens = manifest.num_computed_tokens
        state.output_token_ids.append(int(manifest.first_token_id or 0))
        self._finish_if_done(state)
        return state

    # ---- prefix cache -----------------------------------------------------------------------
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
        return self._prefix.receiver_tokens(prompt_token_ids)

    def pin_prefix(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Hold the cached blocks of the first `num_tokens` prompt tokens for `req_id` until its
        `import_` or `free`; False (nothing pinned) when they are not all here, `num_tokens` is
        not a whole number of blocks, or the prompt would be left with no token to transfer.
        A request has at most one pin: pinning again replaces it."""
        if self._prefix is None:
            return False
        return self._prefix.pin_prompt(req_id, prompt_token_ids, num_tokens)

    def _unpin(self, req_id: str) -> None:
        if self._prefix is not None:
            self._prefix.unpin(req_id)


def new_transfer_id(transfer_id: str | None) -> str:
    """The transfer id an export was given, or a fresh random one."""
    return transfer_id or uuid.uuid4().hex
