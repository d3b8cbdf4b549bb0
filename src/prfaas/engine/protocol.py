"""The engine interface the instance services are written against: `ServingEngine`.

Owns `ServingEngine`, the per-request view it hands out (`RequestView`), the state it exports
(`LayerState`, `ExportedState`, `LayerCallback`) and the buffers it takes (`Buffers`). No torch
here: the torch engine (`runner.Engine`) and the emulated one (`emulated.EmulatedEngine`) both
implement it, and so can a backend whose model runs in another process.

What the services call, and what an implementation promises:

- *Threading.* Every method is called from one thread, the instance's engine thread
  (`prfaas.instance.worker`), never concurrently, and may block (a forward pass, a sleep, a call
  to another process). Only `prefix_pool` is also read from the event loop (one int of it).
- *Requests.* `add_request` queues a request to prefill and decode here (colocated, or the
  decode instance's recompute fallback). `prefill` runs requests to their first token now, and
  hands each layer's final state to `on_layer(req_id, LayerState)` in layer order, with global
  payload offsets; the LayerStates of one request, concatenated, are the payload `export` then
  describes. `skip_tokens[req_id]` = p leaves the first p tokens of full-attention/MLA K/V out
  (the receiver holds them), and `kv_codecs[req_id]` names the codec of its attention K/V
  (`prfaas.models.kv_codec`: coded per layer as it streams, recurrent and conv state exact; the
  manifest names it, and `import_` decodes it or refuses a codec it does not know). `export`
  gives the manifest and buffers of a request that holds just its first token; `import_` adopts
  such a state from another instance, `prompt_token_ids` naming the prompt when the manifest
  leaves a prefix out. Bad input raises `UserError`
  (`InvalidRequest`, `ManifestMismatch`, `PrefixMiss`) before anything is registered.
- *Decoding.* `step` runs one scheduling step: one waiting prefill, or one batched decode step
  of every running request; it returns their `TokenDelta`s. A request that fails ends alone with
  finish_reason "error" and a reason. `first_delta` is the delta of a request's first token,
  streamed right after `import_` or `prefill`. `free` drops a request (finished or not);
  `has_unfinished` / `unfinished_req_ids` say whether `step` has work.
- *Prefix cache* (all inert without one): `num_cached_tokens` (prompt tokens a prefill reused),
  `pin_prefix` (hold a prefix a coming transfer leaves out, until `import_` or `free`),
  `export_prefix` / `import_prefix` (move a cached prefix between instances), and `prefix_pool`,
  the `HybridPrefixPool` whose events feed the router's global KV index (None: no cache).
- *Stats.* `predicted_prefill_s(n)`: the seconds a prefill of n tokens will take when the
  engine knows it (a cost model, a latency curve), None when the service must measure it.
  `kv_encode_bytes_per_s(codec)`: how fast its export codes K/V with a codec, timed on the
  calling thread (None: it does not code, so coding never slows its transfers).

A backend whose model runs in another process (a vLLM server) implements the same methods over
its own channel, and may sit in one of two places. *Behind* the services, it hands them the state
and they move it: `prefill` calls `on_layer` with the bytes the server exported (layer by layer,
or all layers once the forward is done when the server cannot stream them) and `export`
describes those same bytes; `import_` passes the received buffers to the server. *Beside* them,
with a KV connector of its own moving the state, the services still schedule and stream: its
`prefill` calls `on_layer` for no layer, its `export` manifest lists no tensors and only names the
transfer, and its `import_` has the server wait for that transfer from its connector. Either way
`step` returns the tokens the server produced since the previous call, and `prefix_pool` mirrors
the server's KV-cache events (or is None: the router's index then leaves this instance out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.messages import GenerateRequest, KVManifest, LayerEntry, SamplingParams, TokenDelta
from prfaas.prefix_cache.pool import HybridPrefixPool

BytesLike = bytes | bytearray | memoryview  # a received or exported tensor's bytes
Buffers = Sequence[BytesLike]  # a payload: one buffer per manifest tensor, in manifest order


@dataclass(frozen=True)
class LayerState:
    """One layer's exported state: its manifest entry (global offsets) and one buffer per tensor.

    This is what the per-layer prefill callback receives, as soon as the layer's state is final,
    so a transport can send it while the next layer computes.
    """

    entry: LayerEntry
    buffers: list[memoryview]  # one per entry.tensors, same order, bytes of the tensor


@dataclass(frozen=True)
class ExportedState:
    """One request's whole state: manifest plus one buffer per tensor in manifest order."""

    manifest: KVManifest
    buffers: list[memoryview]


LayerCallback = Callable[[str, LayerState], None]  # (req_id, that layer's state) -> None


class RequestView(Protocol):
    """What a caller may read of one request inside an engine."""

    @property
    def req_id(self) -> str: ...

    @property
    def num_computed_tokens(self) -> int: ...

    @property
    def output_token_ids(self) -> Sequence[int]: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


class ServingEngine(Protocol):
    """One model serving requests: prefill with a layer callback, state export and import,
    batched decode steps, a prefix cache. See the module docstring for the contract."""

    # ---- requests ---------------------------------------------------------------------------
    def add_request(self, request: GenerateRequest) -> None:
        """Queue a request to prefill and decode here by `step`."""
        ...

    def prefill(
        self,
        requests: Sequence[GenerateRequest],
        on_layer: LayerCallback | None = None,
        chunk_size: int | None = None,
        skip_tokens: Mapping[str, int] | None = None,
        kv_codecs: Mapping[str, str] | None = None,
    ) -> list[int]:
        """Prefill each request now; their first tokens."""
        ...

    def export(
        self,
        req_id: str,
        transfer_id: str | None = None,
        *,
        num_prefix_tokens: int = 0,
        kv_codec: str = "none",
    ) -> ExportedState:
        """A prefilled request's state, without the first `num_prefix_tokens` of attention,
        its attention K/V coded by the codec `kv_codec`."""
        ...

    def import_(
        self,
        manifest: KVManifest,
        buffers: Buffers,
        sampling: SamplingParams | None = None,
        *,
        copy: bool = False,
        prompt_token_ids: Sequence[int] | None = None,
    ) -> RequestView:
        """Adopt a request prefilled elsewhere; it decodes on the next `step`."""
        ...

    def step(self) -> list[TokenDelta]:
        """One waiting prefill, or one decode step of every running request."""
        ...

    def first_delta(self, req_id: str) -> TokenDelta:
        """The delta of the request's first output token."""
        ...

    def free(self, req_id: str) -> None:
        """Drop a request and its state (nothing happens for an unknown id)."""
        ...

    def has_unfinished(self) -> bool:
        """Whether `step` has a request to prefill or decode."""
        ...

    def unfinished_req_ids(self) -> list[str]:
        """The requests that have not finished yet."""
        ...

    # ---- prefix cache -----------------------------------------------------------------------
    @property
    def prefix_pool(self) -> HybridPrefixPool | None:
        """The prefix cache's bookkeeping (events, bytes), or None without a prefix cache."""
        ...

    def num_cached_tokens(self, req_id: str) -> int:
        """Leading prompt tokens of a request taken from this engine's prefix cache."""
        ...

    def pin_prefix(self, req_id: str, prompt_token_ids: Sequence[int], num_tokens: int) -> bool:
        """Hold the cached first `num_tokens` prompt tokens until `import_` or `free`."""
        ...

    def export_prefix(
        self, token_ids: Sequence[int], num_tokens: int, transfer_id: str | None = None
    ) -> ExportedState:
        """The cached state after the first `num_tokens` of `token_ids`, to move elsewhere."""
        ...

    def import_prefix(
        self, manifest: KVManifest, buffers: Buffers, prompt_token_ids: Sequence[int] | None = None
    ) -> int:
        """Store a moved prefix in the prefix cache; the prompt tokens now reusable."""
        ...

    # ---- stats ------------------------------------------------------------------------------
    def predicted_prefill_s(self, num_tokens: int) -> float | None:
        """Seconds a prefill of `num_tokens` takes, when the engine knows it in advance."""
        ...

    def kv_encode_bytes_per_s(self, codec_name: str) -> float | None:
        """Uncoded K/V bytes per second this engine's export codes with `codec_name`, measured
        on the calling thread (`engine.codec_rate`); None where the engine does not code (an
        emulated engine sends payloads of the coded size without computing them)."""
        ...
