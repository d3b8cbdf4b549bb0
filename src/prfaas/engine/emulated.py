"""An engine with the real engine's interface whose time and bytes are those of a large model.

`EmulatedEngine` runs no model. Prefill and decode take the durations `prfaas.perf.CostModel`
predicts for the chosen model on the chosen hardware, or for prefill a given latency curve
(slept through an injectable `sleep`, so services feel them and tests can record them), and
`export` hands out payloads of exactly the byte size of that model's KV cache and state at the
request's length (`ModelSpec.kv_bytes`): per layer, full-attention/MLA KV or the sliding
window, recurrent and conv state. The content is synthetic but checkable: every tensor repeats
an 8-byte pattern derived from (seed, req_id, tensor name), and `import_` verifies every byte, so
a misrouted or corrupted transfer is caught (sizes and patterns: `emulated_payload`).
Output tokens are drawn from the request's seed.

Requests are checked on entry as the real engine checks them (`validation`): prompt ids inside the
spec's vocabulary, lengths within a position limit when one is known, and manifests from the same
emulated model (fingerprint `emulated:{spec name}:{seed}`).
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prfaas.engine.emulated_payload import bytes_equal, layer_tensor_sizes, pattern_tensor
from prfaas.engine.emulated_prefix import EmulatedPrefixCache
from prfaas.engine.kv_state import ExportedState, LayerState, ManifestMismatch, PayloadView
from prfaas.engine.prefix_store import check_prefix_payload, payload_digest
from prfaas.engine.validation import (
    PrefixMiss,
    check_distinct_ids,
    check_exportable,
    check_manifest_request,
    check_prompt,
    check_skip_tokens,
    fingerprint_mismatch,
    one_line,
)
from prfaas.errors import UserError
from prfaas.messages import (
    PREFIX_META_KEY,
    GenerateRequest,
    KVManifest,
    LayerEntry,
    PrefixTransferInfo,
    SamplingParams,
    TensorEntry,
    TokenDelta,
)
from prfaas.models import LayerSpec, ModelSpec, load_model_spec
from prfaas.perf import CostModel, get_hardware
from prfaas.prefix_cache import HybridPrefixPool
from prfaas.prefix_cache.config import PrefixCacheConfig

LayerCallback = Callable[[str, LayerState], None]
_SEED_STRIDE = 1_000_003


@dataclass
class EmulatedRequest:
    """One request's progress in the emulated engine."""

    req_id: str
    num_prompt_tokens: int
    sampling: SamplingParams
    seed: int
    num_computed_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None  # why, when finish_reason is "error"
    prompt_token_ids: tuple[int, ...] = ()  # known for local prefills and for imports given them
    num_cached_tokens: int = 0  # prompt tokens reused from the prefix cache
    transfer_id: str | None = None  # exported state held for this transfer until `free`
    lease_id: int | None = None  # prefix-cache pin held until import or `free`


def make_emulated_engine(
    model: str, hardware: str, num_gpus: int, *, seed: int = 0, **kwargs: Any
) -> EmulatedEngine:
    """An emulated engine for a `prfaas.models` preset on `num_gpus` GPUs of a hardware preset."""
    spec = load_model_spec(model)
    return EmulatedEngine(
        spec, CostModel(spec, get_hardware(hardware), num_gpus), seed=seed, **kwargs
    )


class EmulatedEngine:
    """Same methods as `Engine`; cost-model durations and real-size, verifiable payloads."""

    def __init__(
        self,
        spec: ModelSpec,
        cost: CostModel,
        *,
        kv_dtype: str = "bfloat16",
        seed: int = 0,
        max_batch_size: int = 256,
        sleep: Callable[[float], None] = time.sleep,
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
        sleeps `time_scale` x the cost model's durations (0: it does not sleep). Generated ids
        are drawn from `output_token_ids` when given (the served tokenizer's printable tokens, so
        that clients see text), else from the model's whole vocabulary. `prefill_latency`, when
        given, is the seconds of one prefill of that many computed tokens on this instance and
        replaces `cost.t_prefill_s` (decode steps keep the cost model's times)."""
        if not 0 < payload_scale <= 1:
            raise UserError(f"payload_scale must be in (0, 1], got {payload_scale}")
        if not time_scale >= 0:
            raise UserError(f"time_scale must be >= 0, got {time_scale}")
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
        self.max_batch_size = max_batch_size
        self._sleep = sleep
        self.requests: dict[str, EmulatedRequest] = {}
        self._waiting: list[str] = []
        self._rng = random.Random(seed)
        spec_limit = getattr(spec, "max_position_embeddings", None)
        self.max_positions: int | None = max_positions if max_positions is not None else spec_limit
        self._vocab_size = spec.vocab_size if spec.vocab_size > 0 else None
        self._output_token_ids = tuple(output_token_ids)
        self.prefix = (
            None if prefix_cache is None else EmulatedPrefixCache(spec, kv_dtype, prefix_cache)
        )

    def predicted_prefill_s(self, num_tokens: int) -> float:
        """Seconds this engine takes to prefill `num_tokens` from scratch (what it sleeps)."""
        return float(self._t_prefill_s(num_tokens)) * self.time_scale

    def _sleep_scaled(self, model_s: float) -> None:
        if self.time_scale > 0:
            self._sleep(model_s * self.time_scale)

    @property
    def prefix_pool(self) -> HybridPrefixPool | None:
        """The prefix cache's bookkeeping (events, bytes), or None without a prefix cache."""
        return None if self.prefix is None else self.prefix.pool

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        """The emulated model's identity: its spec and the seed of its payload patterns."""
        return f"emulated:{self.spec.name}:{self.seed}"

    def add_request(self, request: GenerateRequest) -> None:
        self._check_request(request)
        state = self._register(request.req_id, len(request.prompt_token_ids), request.sampling)
        state.prompt_token_ids = tuple(request.prompt_token_ids)
        self._waiting.append(request.req_id)

    def _check_request(self, request: GenerateRequest) -> None:
        check_prompt(request.req_id, request.prompt_token_ids, self._vocab_size, self.max_positions)
        if request.req_id in self.requests:
            raise UserError(f"request {request.req_id!r} is already in this engine")

    def _register(self, req_id: str, num_prompt: int, sampling: SamplingParams) -> EmulatedRequest:
        if req_id in self.requests:
            raise UserError(f"request {req_id!r} is already in this engine")
        if num_prompt < 1:
            raise UserError(f"request {req_id!r} has an empty prompt")
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(31)
        state = EmulatedRequest(req_id, num_prompt, sampling, seed)
        self.requests[req_id] = state
        return state

    def free(self, req_id: str) -> None:
        """Drop a request; its transfer reservation and pins end, and a finished request's
        blocks (prompt and output) stay in the prefix cache."""
        state = self.requests.pop(req_id, None)
        if req_id in self._waiting:
            self._waiting.remove(req_id)
        if self.prefix is not None:
            self.prefix.unpin(req_id)
            if state is not None:
                self.prefix.retire(state)

    def num_cached_tokens(self, req_id: str) -> int:
        """Prompt tokens the request's prefill reused from the prefix cache."""
        return self._get(req_id).num_cached_tokens

    def pin_prefix(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Keep the full-attention KV of the prompt's first `num_tokens` tokens cached until
        `req_id` is imported or freed; False when they are not (all) cached."""
        if self.prefix is None:
            return False
        return self.prefix.pin(req_id, prompt_token_ids, num_tokens)

    def cached_prefix_tokens(self, prompt_token_ids: Sequence[int]) -> int:
        """Prompt tokens whose full-attention KV this engine holds (what a receiver can skip)."""
        return 0 if self.prefix is None else self.prefix.receiver_tokens(prompt_token_ids)

    def has_unfinished(self) -> bool:
        return any(r.finish_reason is None for r in self.requests.values())

    # ---- moving a cached prefix ---------------------------------------------------------------
    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str | None = None
    ) -> ExportedState:
        """The synthetic state of the first `num_tokens` tokens (whole blocks, usable here: the
        attention blocks and the state checkpoint at that length), as `Engine.export_prefix`
        gives it, real size; PrefixMiss when it is not all cached."""
        prefix = self._require_prefix("export a prefix")
        hashes = prefix.usable_prefix(token_ids, num_tokens)
        transfer_id = transfer_id or uuid.uuid4().hex
        state = EmulatedRequest(f"prefix:{transfer_id}", num_tokens, SamplingParams(), self.seed)
        state.num_computed_tokens = num_tokens
        layers, buffers, offset = [], [], 0
        for layer in self.spec.layers:
            layer_state = self._export_layer(state, layer, offset)
            layers.append(layer_state.entry)
            buffers.extend(layer_state.buffers)
            offset += layer_state.entry.num_bytes
        info = PrefixTransferInfo(prefix.block_tokens, tuple(hashes), payload_digest(buffers))
        manifest = KVManifest(
            transfer_id=transfer_id,
            req_id=state.req_id,
            arch=self.arch,
            num_layers=self.spec.num_layers,
            layers=tuple(layers),
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
        self,
        manifest: KVManifest,
        buffers: Sequence[Any],
        prompt_token_ids: Sequence[int] | None = None,
    ) -> int:
        """Check a moved prefix's every byte and store its blocks and state checkpoint in the
        prefix cache, as `Engine.import_prefix` does; returns the tokens now reusable."""
        prefix = self._require_prefix("import a prefix")
        info = PrefixTransferInfo.of(manifest)
        if info is None:
            raise PrefixMiss(f"manifest of {manifest.req_id!r} is not a prefix transfer")
        check_prefix_payload(info, manifest, buffers, prefix.block_tokens, prompt_token_ids)
        self._check(manifest, buffers)
        return prefix.store_blocks(info.block_hashes)

    def _require_prefix(self, what: str) -> EmulatedPrefixCache:
        if self.prefix is None:
            raise PrefixMiss(f"cannot {what}: this engine has no prefix cache")
        return self.prefix

    # ---- prefill and export -----------------------------------------------------------------
    def prefill(
        self,
        requests: Sequence[GenerateRequest],
        on_layer: LayerCallback | None = None,
        chunk_size: int | None = None,
        skip_tokens: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Sleep each request's predicted prefill time, layer by layer; first tokens.

        With a prefix cache only the tokens after the longest usable cached prefix are computed
        (and timed). `skip_tokens[req_id]` leaves that many leading tokens' full-attention KV out
        of the layer callback's states (the receiver has them). Every request is checked before
        any is prefilled; one whose prefill raises (`on_layer`) is dropped from the engine and
        the error propagates.
        """
        check_distinct_ids([request.req_id for request in requests])
        for request in requests:
            self._check_request(request)
        first_tokens = []
        for request in requests:
            state = self._register(request.req_id, len(request.prompt_token_ids), request.sampling)
            state.prompt_token_ids = tuple(request.prompt_token_ids)
            num_skip = (skip_tokens or {}).get(request.req_id, 0)
            try:
                first_tokens.append(self._prefill_one(state, on_layer, num_skip))
            except BaseException:
                self.free(state.req_id)
                raise
        return first_tokens

    def _prefill_one(
        self, state: EmulatedRequest, on_layer: LayerCallback | None, num_skip: int = 0
    ) -> int:
        check_skip_tokens(state.req_id, num_skip, state.num_prompt_tokens)
        if self.prefix is not None and state.prompt_token_ids:
            state.num_cached_tokens = self.prefix.reusable_tokens(state.prompt_token_ids)
        num_computed = state.num_prompt_tokens - state.num_cached_tokens
        per_layer_s = self._t_prefill_s(num_computed) / self.spec.num_layers
        state.num_computed_tokens = state.num_prompt_tokens
        offset = 0
        for layer in self.spec.layers:
            self._sleep_scaled(per_layer_s)
            if on_layer is not None:
                layer_state = self._export_layer(state, layer, offset, num_skip)
                offset += layer_state.entry.num_bytes
                on_layer(state.req_id, layer_state)
        if self.prefix is not None and state.prompt_token_ids:
            self.prefix.store_prompt(state.prompt_token_ids)
        token = self._next_token(state)
        self._finish_if_done(state)
        return token

    def _tensor_sizes(
        self, layer: LayerSpec, num_tokens: int, num_prefix_tokens: int = 0
    ) -> list[tuple[str, int]]:
        return layer_tensor_sizes(
            layer,
            num_tokens,
            self.kv_dtype,
            self.spec.recurrent_state_dtype,
            self.spec.activation_dtype,
            num_prefix_tokens,
            self.payload_scale,
        )

    def _export_layer(
        self, state: EmulatedRequest, layer: LayerSpec, offset: int, num_prefix_tokens: int = 0
    ) -> LayerState:
        entries, buffers = [], []
        sizes = self._tensor_sizes(layer, state.num_computed_tokens, num_prefix_tokens)
        for suffix, size in sizes:
            name = f"L{layer.index}/{suffix}"
            entries.append(TensorEntry(name, layer.index, "uint8", (size,), offset, size))
            buffers.append(pattern_tensor(self.seed, state.req_id, name, size).numpy().data)
            offset += size
        entry = LayerEntry(layer.index, layer.kind.value, "EmulatedLayer", {}, tuple(entries))
        return LayerState(entry, buffers)

    def export(
        self, req_id: str, transfer_id: str | None = None, num_prefix_tokens: int = 0
    ) -> ExportedState:
        """Manifest and synthetic payload of the model's real state size at this length,
        without the full-attention KV of the first `num_prefix_tokens` tokens.

        Only a request holding just its first output token can be exported, as with `Engine`.
        With a prefix cache the payload's bytes are reserved in its budget until `free`.
        """
        state = self._get(req_id)
        check_exportable(req_id, len(state.output_token_ids), state.finish_reason, state.error)
        check_skip_tokens(req_id, num_prefix_tokens, state.num_computed_tokens)
        layers, buffers, offset = [], [], 0
        for layer in self.spec.layers:
            layer_state = self._export_layer(state, layer, offset, num_prefix_tokens)
            layers.append(layer_state.entry)
            buffers.extend(layer_state.buffers)
            offset += layer_state.entry.num_bytes
        manifest = KVManifest(
            transfer_id=transfer_id or uuid.uuid4().hex,
            req_id=req_id,
            arch=self.arch,
            num_layers=self.spec.num_layers,
            layers=tuple(layers),
            num_computed_tokens=state.num_computed_tokens,
            first_token_id=state.output_token_ids[0],
            cache_meta={"cache_class": "EmulatedCache", "seed": self.seed},
            model_fingerprint=self.fingerprint,
            num_prefix_tokens=num_prefix_tokens,
        )
        if self.prefix is not None:
            self.prefix.reserve(state, manifest.transfer_id, offset)
        return ExportedState(manifest, buffers)

    # ---- import and decode ------------------------------------------------------------------
    def import_(
        self,
        manifest: KVManifest,
        buffers: Sequence[Any],
        sampling: SamplingParams | None = None,
        *,
        copy: bool = False,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> EmulatedRequest:
        """Check every byte of an emulated payload, then decode the request on `step`.

        A manifest that leaves out a prefix (`num_prefix_tokens`) needs the prompt's ids and that
        prefix in this engine's cache (`PrefixMiss` otherwise)."""
        check_manifest_request(manifest, self._vocab_size, self.max_positions)
        self._check(manifest, buffers)
        if manifest.num_prefix_tokens > 0:
            self._check_local_prefix(manifest, prompt_token_ids)
        if self.prefix is not None:
            self.prefix.unpin(manifest.req_id)
        state = self._register(
            manifest.req_id, manifest.num_computed_tokens, sampling or SamplingParams()
        )
        state.prompt_token_ids = tuple(prompt_token_ids or ())
        state.num_computed_tokens = manifest.num_computed_tokens
        state.output_token_ids.append(int(manifest.first_token_id or 0))
        self._finish_if_done(state)
        return state

    def first_delta(self, req_id: str) -> TokenDelta:
        """The delta of the request's first output token, to stream right after `import_` or
        prefill, with its finish reason when the request ended on it (a stop token is not
        emitted)."""
        state = self._get(req_id)
        if not state.output_token_ids:
            if state.finish_reason == "error":
                return TokenDelta(req_id, (), "error", state.error)
            raise UserError(f"request {req_id!r} has not been prefilled")
        finish_reason = state.finish_reason if len(state.output_token_ids) == 1 else None
        return self._token_delta(state, state.output_token_ids[0], finish_reason)

    def _check_local_prefix(
        self, manifest: KVManifest, prompt_token_ids: Sequence[int] | None
    ) -> None:
        num_prefix = manifest.num_prefix_tokens
        if not prompt_token_ids:
            raise PrefixMiss(
                f"{manifest.req_id}: a transfer without its first {num_prefix} "
                "tokens needs the prompt's token ids"
            )
        held = self.cached_prefix_tokens(prompt_token_ids)
        if held < num_prefix:
            raise PrefixMiss(
                f"{manifest.req_id}: the transfer leaves out {num_prefix} prefix tokens, this "
                f"instance's prefix cache holds {held}"
            )

    def _check(self, manifest: KVManifest, buffers: Sequence[Any]) -> None:
        if manifest.arch != self.arch or manifest.num_layers != self.spec.num_layers:
            raise ManifestMismatch(
                f"manifest is for {manifest.arch!r} ({manifest.num_layers} layers), this engine "
                f"emulates {self.arch!r} ({self.spec.num_layers} layers)"
            )
        mismatch = fingerprint_mismatch(manifest, self.fingerprint)
        if mismatch is not None:
            raise ManifestMismatch(mismatch)
        payload = PayloadView(buffers)
        seed = int(manifest.cache_meta.get("seed", self.seed))
        for layer, entry in zip(self.spec.layers, manifest.layers, strict=True):
            expected = self._tensor_sizes(
                layer, manifest.num_computed_tokens, manifest.num_prefix_tokens
            )
            got = [(t.name.split("/", 1)[1], t.num_bytes) for t in entry.tensors]
            if got != expected:
                raise ManifestMismatch(f"layer {layer.index}: tensors {got}, expected {expected}")
            for t in entry.tensors:
                want = pattern_tensor(seed, manifest.req_id, t.name, t.num_bytes)
                if not bytes_equal(payload.tensor(t, copy=False), want):
                    raise ManifestMismatch(f"{t.name}: payload bytes differ from what was sent")

    def step(self) -> list[TokenDelta]:
        """Prefill one waiting request, else one decode step (predicted time) of all running."""
        if self._waiting:
            state = self.requests[self._waiting.pop(0)]
            return [self._prefill_waiting(state)]
        running = [r for r in self.requests.values() if r.finish_reason is None]
        deltas: list[TokenDelta] = []
        for start in range(0, len(running), self.max_batch_size):
            group = running[start : start + self.max_batch_size]
            context = sum(r.num_computed_tokens for r in group) // len(group)
            self._sleep_scaled(self._t_decode_step_s(len(group), context))
            for state in group:
                state.num_computed_tokens += 1
                self._next_token(state)
                self._finish_if_done(state)
                deltas.append(self._delta(state))
        return deltas

    def _prefill_waiting(self, state: EmulatedRequest) -> TokenDelta:
        try:
            self._prefill_one(state, None)
        except Exception as exc:  # this request's own failure: it ends, the engine goes on
            state.finish_reason = "error"
            state.error = f"prefill failed: {one_line(exc)}"
            return TokenDelta(state.req_id, (), "error", state.error)
        return self._delta(state)

    def generate(self, requests: Sequence[GenerateRequest]) -> dict[str, list[int]]:
        for request in requests:
            self.add_request(request)
        outputs: dict[str, list[int]] = {r.req_id: [] for r in requests}
        while self.has_unfinished() or self._waiting:
            for delta in self.step():
                outputs[delta.req_id].extend(delta.token_ids)
        return outputs

    def _next_token(self, state: EmulatedRequest) -> int:
        index = len(state.output_token_ids)
        rng = random.Random(state.seed * _SEED_STRIDE + index)
        choices = self._output_token_ids
        token = (
            choices[rng.randrange(len(choices))] if choices else rng.randrange(self.spec.vocab_size)
        )
        state.output_token_ids.append(token)
        return token

    def _finish_if_done(self, state: EmulatedRequest) -> None:
        if state.output_token_ids[-1] in state.sampling.stop_token_ids:
            state.finish_reason = "stop"
        elif len(state.output_token_ids) >= state.sampling.max_tokens:
            state.finish_reason = "length"
        elif self.max_positions is not None and state.num_computed_tokens >= self.max_positions:
            state.finish_reason = "length"  # the next token would need a position past the limit

    def _delta(self, state: EmulatedRequest) -> TokenDelta:
        return self._token_delta(state, state.output_token_ids[-1], state.finish_reason)

    def _token_delta(
        self, state: EmulatedRequest, token: int, finish_reason: str | None
    ) -> TokenDelta:
        """A one-token delta; a stop token that ended the request is not emitted."""
        is_stop_token = finish_reason == "stop" and token in state.sampling.stop_token_ids
        error = state.error if finish_reason == "error" else None
        return TokenDelta(state.req_id, () if is_stop_token else (token,), finish_reason, error)

    def _get(self, req_id: str) -> EmulatedRequest:
        if req_id not in self.requests:
            raise UserError(f"unknown request {req_id!r}")
        return self.requests[req_id]
