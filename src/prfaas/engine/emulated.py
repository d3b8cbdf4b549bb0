"""An engine with the real engine's interface whose time and bytes are those of a large model.

`EmulatedEngine` runs no model. Prefill and decode take the durations `prfaas.perf.CostModel`
predicts for the chosen model on the chosen hardware, or for prefill a given latency curve
(slept through an injectable `sleep`, so services feel them and tests can record them), and
`export` hands out payloads of exactly the byte size of that model's KV cache and state at the
request's length (`ModelSpec.kv_bytes`): per layer, full-attention/MLA KV or the sliding
window, recurrent and conv state; under a KV codec the attention parts have their coded size, so
the link carries what a coded payload would. The content is synthetic but checkable: every
tensor repeats an 8-byte pattern derived from (seed, req_id, tensor name), and `import_` verifies
every byte, so a misrouted or corrupted transfer is caught (sizes and patterns: `emulated_payload`).
Output tokens are drawn from the request's seed.

The request table, scheduling, admission, finishing, export/import bookkeeping and the prefix
cache's per-request side are the torch engine's own (`core`, `state_exchange`): requests are
checked on entry as the real engine checks them (`validation`): prompt ids inside the spec's
vocabulary, lengths within a position limit when one is known, and manifests from the same
emulated model (fingerprint `emulated:{spec name}:{seed}`).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from prfaas.engine.emulated_payload import EmulatedPayload, layer_tensor_sizes
from prfaas.engine.emulated_prefix import EmulatedPrefixCache
from prfaas.engine.prefix_book import check_prefix_payload, left_out_prefix_text, payload_digest
from prfaas.engine.protocol import Buffers, ExportedState, LayerCallback
from prfaas.engine.sequence import RequestProgress
from prfaas.engine.state_exchange import StateExchange, new_transfer_id
from prfaas.engine.validation import (
    ManifestMismatch,
    PrefixMiss,
    check_uncoded,
    fingerprint_mismatch,
)
from prfaas.errors import UserError
from prfaas.messages import (
    PREFIX_META_KEY,
    KVManifest,
    PrefixTransferInfo,
    TokenDelta,
)
from prfaas.models import ModelSpec, load_model_spec
from prfaas.perf import CostModel, get_hardware
from prfaas.prefix_cache.config import PrefixCacheConfig

__all__ = [
    "EMULATED_KV_DTYPE",
    "EMULATED_MAX_BATCH_SIZE",
    "EmulatedEngine",
    "emulated_cost_model",
    "layer_tensor_sizes",
    "make_emulated_engine",
]

_SEED_STRIDE = 1_000_003
EMULATED_KV_DTYPE = "bfloat16"  # the K/V dtype an emulated engine sizes payloads and its cache in
EMULATED_MAX_BATCH_SIZE = 256  # requests one decode forward takes; more run several per step


def emulated_cost_model(spec: ModelSpec, hardware: str, num_gpus: int) -> CostModel:
    """The cost model an emulated engine of `spec` on `num_gpus` GPUs of `hardware` sleeps by
    (the simulator's replay of a topology takes its decode step from the same)."""
    return CostModel(spec, get_hardware(hardware), num_gpus)


def make_emulated_engine(
    model: str, hardware: str, num_gpus: int, *, seed: int = 0, **kwargs: Any
) -> EmulatedEngine:
    """An emulated engine for a `prfaas.models` preset on `num_gpus` GPUs of a hardware preset."""
    spec = load_model_spec(model)
    return EmulatedEngine(spec, emulated_cost_model(spec, hardware, num_gpus), seed=seed, **kwargs)


class EmulatedEngine(StateExchange[RequestProgress, EmulatedPrefixCache]):
    """Same methods as `Engine`; cost-model durations and real-size, verifiable payloads."""

    def __init__(
        self,
        spec: ModelSpec,
        cost: CostModel,
        *,
        kv_dtype: str = EMULATED_KV_DTYPE,
        seed: int = 0,
        max_batch_size: int = EMULATED_MAX_BATCH_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] | None = None,
        max_positions: int | None = None,
        prefix_cache: PrefixCacheConfig | None = None,
        payload_scale: float = 1.0,
        time_scale: float = 1.0,
        output_token_ids: Sequence[int] = (),
        prefill_latency: Callable[[int], float] | None = None,
    ):
        """`max_positions` caps prompt + generated tokens; None takes the spec's
        `max_position_embeddings` when it has one, else there is no limit. With `prefix_cache`
        the engine keeps the bookkeeping of a hybrid prefix cache (`EmulatedPrefixCache`).
        `payload_scale` in (0, 1] shrinks exported payloads (and what imports expect) to that
        fraction of the model's real bytes, per tensor (`layer_tensor_sizes`). The engine
        sleeps `time_scale` x the cost model's durations (0: it does not sleep), to deadlines on
        `clock` (default: `time.monotonic` with `time.sleep`, else the sum of what `sleep` was
        asked to sleep), so its own work (payloads, handing layers over) runs inside a prefill's
        time instead of adding to it. Generated ids
        are drawn from `output_token_ids` when given (the served tokenizer's printable tokens, so
        that clients see text), else from the model's whole vocabulary. `prefill_latency`, when
        given, is the seconds of one prefill of that many computed tokens on this instance and
        replaces `cost.t_prefill_s` (decode steps keep the cost model's times)."""
        if not 0 < payload_scale <= 1:
            raise UserError(f"payload_scale must be in (0, 1], got {payload_scale}")
        if not time_scale >= 0:
            raise UserError(f"time_scale must be >= 0, got {time_scale}")
        spec_limit = getattr(spec, "max_position_embeddings", None)
        prefix = None if prefix_cache is None else EmulatedPrefixCache(spec, kv_dtype, prefix_cache)
        super().__init__(
            RequestProgress,
            seed=seed,
            max_batch_size=max_batch_size,
            vocab_size=spec.vocab_size if spec.vocab_size > 0 else None,
            max_positions=max_positions if max_positions is not None else spec_limit,
            tokenizer=None,  # no text: stop strings are the router's to apply
            prefix=prefix,
        )
        self.time_scale = time_scale
        self.payload_scale = payload_scale
        self.spec = spec
        self.cost = cost
        # the cost model is pure: remember its answers (steady traffic repeats them)
        t_prefill_s = cost.t_prefill_s if prefill_latency is None else prefill_latency
        self._t_prefill_s = functools.lru_cache(maxsize=4096)(t_prefill_s)
        self._t_decode_step_s = functools.lru_cache(maxsize=4096)(cost.t_decode_step_s)
        self.kv_dtype = kv_dtype
        self.seed = seed
        self._sleep = sleep
        self._slept_s = 0.0  # what `sleep` was asked for: the clock of an injected `sleep`
        self._clock = clock or (time.monotonic if sleep is time.sleep else self._slept_clock)
        self._output_token_ids = tuple(output_token_ids)
        self._payload = EmulatedPayload(spec, kv_dtype, seed, payload_scale)

    @property
    def max_positions(self) -> int | None:
        return self._max_positions

    @property
    def prefix(self) -> EmulatedPrefixCache | None:
        return self._prefix

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        """The emulated model's identity: its spec and the seed of its payload patterns."""
        return f"emulated:{self.spec.name}:{self.seed}"

    def predicted_prefill_s(self, num_tokens: int) -> float:
        """Seconds this engine takes to prefill `num_tokens` from scratch (what it sleeps)."""
        return float(self._t_prefill_s(num_tokens)) * self.time_scale

    def _slept_clock(self) -> float:
        return self._slept_s

    def _sleep_until(self, start_s: float, model_s: float) -> None:
        """Sleep until `time_scale` x `model_s` after `start_s` on the engine's clock (not at all
        when that has passed, or with time scale 0)."""
        remaining_s = start_s + model_s * self.time_scale - self._clock()
        if self.time_scale > 0 and remaining_s > 0:
            self._sleep(remaining_s)
            self._slept_s += remaining_s

    def _store_finished(self, state: RequestProgress, hashes: list[int]) -> None:
        if self._prefix is not None:
            self._prefix.store(hashes)

    def pin_prefix(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Keep the full-attention KV of the prompt's first `num_tokens` tokens cached until
        `req_id` is imported or freed; False when they are not (all) cached. A length that is
        not a positive multiple of the block size is refused (UserError)."""
        if self._prefix is not None:
            block_tokens = self._prefix.block_tokens
            if num_tokens % block_tokens or num_tokens <= 0:
                raise UserError(
                    f"a pinned prefix must be a positive multiple of {block_tokens} tokens, "
                    f"got {num_tokens}"
                )
        return super().pin_prefix(req_id, prompt_token_ids, num_tokens)

    # ---- prefill and decode -----------------------------------------------------------------
    def _prefill_one(
        self,
        state: RequestProgress,
        on_layer: LayerCallback | None,
        chunk_size: int | None,
        skip_tokens: int,
        kv_codec: str,
    ) -> int:
        """Sleep the request's predicted prefill time, layer by layer; its first token. With a
        prefix cache only the tokens after the longest usable cached prefix are computed (and
        timed), and the prompt's blocks are stored."""
        prompt = state.prompt_token_ids
        hashes: list[int] = []
        if self._prefix is not None:
            hashes = self._block_hashes(state, prompt)
            num_blocks = self._prefix.usable_blocks(hashes, len(prompt))
            state.num_cached_tokens = num_blocks * self._prefix.block_tokens
        num_computed = len(prompt) - state.num_cached_tokens
        per_layer_s = self._t_prefill_s(num_computed) / self.spec.num_layers
        state.num_computed_tokens = len(prompt)
        offset, start_s = 0, self._clock()
        for k, layer in enumerate(self.spec.layers):
            self._sleep_until(start_s, (k + 1) * per_layer_s)  # layer k is final
            if on_layer is not None:
                layer_state = self._payload.layer_state(
                    state.req_id, layer, len(prompt), offset, skip_tokens, kv_codec
                )
                offset += layer_state.entry.num_bytes
                on_layer(state.req_id, layer_state)
        if self._prefix is not None:
            self._prefix.store(hashes, self._prefix.checkpoint_tokens(len(prompt)))
        token = self._next_token(state)
        self._finish_if_done(state)
        return token

    def _decode(self, group: list[RequestProgress]) -> list[TokenDelta]:
        """Sleep one decode step's predicted time for the group; one token each."""
        context = sum(r.num_computed_tokens for r in group) // len(group)
        self._sleep_until(self._clock(), self._t_decode_step_s(len(group), context))
        deltas = []
        for state in group:
            state.num_computed_tokens += 1
            self._next_token(state)
            self._finish_if_done(state)
            deltas.append(self._delta(state))
        return deltas

    def _next_token(self, state: RequestProgress) -> int:
        index = len(state.output_token_ids)
        rng = random.Random(state.seed * _SEED_STRIDE + index)
        choices = self._output_token_ids
        token = (
            choices[rng.randrange(len(choices))] if choices else rng.randrange(self.spec.vocab_size)
        )
        state.output_token_ids.append(token)
        return token

    # ---- export and import ------------------------------------------------------------------
    def _export_state(
        self, state: RequestProgress, transfer_id: str, num_prefix_tokens: int, kv_codec: str
    ) -> ExportedState:
        """Synthetic payload of the model's real state size at this length, without the
        full-attention KV of the first `num_prefix_tokens` tokens, the KV of its coded size."""
        num_tokens = state.num_computed_tokens
        layers, buffers = self._payload.layers(
            state.req_id, num_tokens, num_prefix_tokens, kv_codec
        )
        manifest = KVManifest(
            transfer_id=transfer_id,
            req_id=state.req_id,
            arch=self.arch,
            num_layers=self.spec.num_layers,
            layers=layers,
            num_computed_tokens=num_tokens,
            first_token_id=state.output_token_ids[0],
            cache_meta={"cache_class": "EmulatedCache", "seed": self.seed},
            model_fingerprint=self.fingerprint,
            num_prefix_tokens=num_prefix_tokens,
            kv_codec=kv_codec,
        )
        return ExportedState(manifest, buffers)

    def _check_state(self, manifest: KVManifest, buffers: Buffers) -> None:
        """The same emulated model (spec, layers, fingerprint) and every byte as it was sent."""
        if manifest.arch != self.arch or manifest.num_layers != self.spec.num_layers:
            raise ManifestMismatch(
                f"manifest is for {manifest.arch!r} ({manifest.num_layers} layers), this engine "
                f"emulates {self.arch!r} ({self.spec.num_layers} layers)"
            )
        mismatch = fingerprint_mismatch(manifest, self.fingerprint)
        if mismatch is not None:
            raise ManifestMismatch(mismatch)
        self._payload.check(manifest, buffers)

    def _load_state(
        self, manifest: KVManifest, buffers: Buffers, copy: bool, prefix: list[int]
    ) -> object:
        """Nothing to load; a left-out prefix must be in this engine's prefix cache."""
        if prefix:
            book = self._require_prefix("import a partial state")
            num_held = book.pool.match(prefix).num_attention_blocks * book.block_tokens
            if num_held < manifest.num_prefix_tokens:
                raise PrefixMiss(
                    f"{left_out_prefix_text(manifest)}, this instance's prefix cache holds "
                    f"{num_held}"
                )
        return None

    # ---- moving a cached prefix -------------------------------------------------------------
    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str | None = None
    ) -> ExportedState:
        """The synthetic state of the first `num_tokens` tokens (whole blocks, usable here: the
        attention blocks and the state checkpoint at that length), as `Engine.export_prefix`
        gives it, real size; PrefixMiss when it is not all cached."""
        prefix = self._require_prefix("export a prefix")
        hashes = prefix.usable_prefix(token_ids, num_tokens)
        transfer_id = new_transfer_id(transfer_id)
        req_id = f"prefix:{transfer_id}"
        layers, buffers = self._payload.layers(req_id, num_tokens)
        info = PrefixTransferInfo(prefix.block_tokens, tuple(hashes), payload_digest(buffers))
        manifest = KVManifest(
            transfer_id=transfer_id,
            req_id=req_id,
            arch=self.arch,
            num_layers=self.spec.num_layers,
            layers=layers,
            num_computed_tokens=num_tokens,
            first_token_id=None,
            cache_meta={
                "cache_class": "EmulatedCache",
                "seed": self.seed,
                PREFIX_META_KEY: info.to_dict(),
            },
            model_fingerprint=self.fingerprint,
        )
        return ExportedState(manifest, buffers)

    def import_prefix(
        self, manifest: KVManifest, buffers: Buffers, prompt_token_ids: Sequence[int] | None = None
    ) -> int:
        """Check a moved prefix's every byte and store its blocks and state checkpoint in the
        prefix cache, as `Engine.import_prefix` does; returns the tokens now reusable."""
        prefix = self._require_prefix("import a prefix")
        info = PrefixTransferInfo.of(manifest)
        if info is None:
            raise PrefixMiss(f"manifest of {manifest.req_id!r} is not a prefix transfer")
        check_uncoded(manifest, "a moved prefix")
        check_prefix_payload(info, manifest, buffers, prefix.block_tokens, prompt_token_ids)
        self._check_state(manifest, buffers)
        return prefix.store_moved(info.block_hashes)
