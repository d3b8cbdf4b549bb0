"""The connector's worker side: a `KVSender` (producer) and a `KVReceiver` (consumer) on an event
loop thread of their own, beside vLLM's forward passes.

Producer: a request whose prefill completes in this step is sent as its layers become final:
each attention layer's blocks are copied and queued from `save_kv_layer` while later layers
compute; the state pages (written by layers vLLM does not hook) follow in `wait_for_save`, with
the END that asks the receiver for its ACK. The request is reported finished sending once the
ACK (or the refusal) is in, so vLLM holds its blocks until then.

Consumer: transfers arrive on their own and wait, by transfer id, for the request that names
them. A load completes when its transfer has arrived (scattered into the request's blocks) or
fails when the transfer was refused by the transport, does not match this model's identity or
layout, or has not arrived within `load_timeout_s`; a failure is reported to vLLM, whose
`kv_load_failure_policy` then recomputes the request (or fails it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from prfaas.messages import KVManifest, LayerEntry, TransferAck
from prfaas.transport import KVReceiver, KVSender, ReceivedTransfer, TransportConfig
from prfaas.vllm.blocks import (
    CacheLayer,
    LayoutMismatch,
    byte_view,
    check_entry,
    gather_layer,
    layer_entry,
    scatter_layer,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_IDS_KEPT = 4096  # transfer ids remembered: begun (producer), given up on (consumer)


@dataclass(frozen=True, slots=True)
class SendJob:
    """A producer request whose prefill completes in this step, with its block table."""

    req_id: str
    transfer_id: str
    dest: str  # the consumer's KV receiver, host:port
    num_prompt_tokens: int
    block_ids: tuple[list[int], ...]  # per KV-cache group


@dataclass(frozen=True, slots=True)
class LoadJob:
    """A consumer request waiting for its transfer, with the blocks allocated for it."""

    req_id: str
    transfer_id: str
    num_prompt_tokens: int
    num_hit_tokens: int  # tokens the consumer already holds from its own prefix cache
    block_ids: tuple[list[int], ...]


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What every manifest carries and every consumer checks."""

    arch: str  # the config's model_type
    fingerprint: str  # prfaas.vllm.identity.model_fingerprint
    layers: dict[str, CacheLayer]  # by vLLM layer name


class LoopThread:
    """An asyncio event loop on a daemon thread, for the transport's sockets."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class TransferCounters:
    """What the connector counts: sends, loads and their failures, bytes either way."""

    values: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + amount

    def take(self) -> dict[str, int]:
        with self._lock:
            taken, self.values = self.values, {}
        return taken


def _seconds_since(start_s: float | None, end_s: float) -> float | None:
    """Seconds from `start_s` to `end_s` (monotonic), rounded; None when it never started."""
    return None if start_s is None else round(max(0.0, end_s - start_s), 4)


class TransferLog:
    """One JSON line per settled transfer, when `transfer_log` names a file (else nothing)."""

    def __init__(self, path: str | None) -> None:
        self._path = None if path is None else Path(path)
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        if self._path is None:
            return
        with self._lock, self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class _Outgoing:
    """One transfer being sent: its layers so far (and the tensors their views point into)."""

    job: SendJob
    queue: asyncio.Queue[tuple[LayerEntry, memoryview] | KVManifest]
    entries: dict[int, LayerEntry] = field(default_factory=dict)
    tensors: list[torch.Tensor] = field(default_factory=list)
    next_offset_bytes: int = 0
    num_streamed_layers: int = 0  # layers queued from save_kv_layer, during the forward
    forward_done_s: float | None = None  # monotonic: the step's forward ended, END queued


class ProducerWorker:
    """Sends each completed prefill's blocks; reports a request done once its transfer settles."""

    def __init__(
        self,
        identity: ModelIdentity,
        caches: dict[str, torch.Tensor],
        config: TransportConfig,
        counters: TransferCounters,
        transfer_log: TransferLog,
    ) -> None:
        self._identity, self._caches = identity, caches
        self._counters, self._log = counters, transfer_log
        self._loop = LoopThread("prfaas-kv-send")
        self._sender = KVSender(config)
        self._active: dict[str, _Outgoing] = {}
        self._lock = threading.Lock()
        self._started: dict[str, None] = {}  # transfer ids begun, bounded, insertion-ordered
        self._settled: set[str] = set()  # req ids whose transfer got its answer
        self._finished: set[str] = set()  # req ids vLLM has said are finished

    def start(self, jobs: list[SendJob]) -> None:
        """Begin this step's transfers; a job already begun is skipped (vLLM binds the step's
        metadata before the forward but calls `start_load_kv` after it)."""
        for job in jobs:
            if job.transfer_id in self._started:
                continue
            _remember(self._started, job.transfer_id)
            out = _Outgoing(job, asyncio.Queue())
            self._active[job.req_id] = out
            self._loop.submit(self._run(out))

    def save_layer(self, layer_name: str) -> None:
        """An attention layer's KV is final for this step: queue it for every active transfer."""
        layer = self._identity.layers.get(layer_name)
        if layer is None:
            return
        for out in self._active.values():
            if layer.index not in out.entries:
                self._queue_layer(out, layer)
                out.num_streamed_layers += 1

    def finish_step(self) -> None:
        """Queue the layers not sent yet (state pages), then END, for this step's transfers."""
        for out in self._active.values():
            for layer in sorted(self._identity.layers.values(), key=lambda x: x.index):
                if layer.index not in out.entries:
                    self._queue_layer(out, layer)
            manifest = KVManifest(
                transfer_id=out.job.transfer_id,
                req_id=out.job.req_id,
                arch=self._identity.arch,
                num_layers=len(out.entries),
                layers=tuple(out.entries[i] for i in sorted(out.entries)),
                num_computed_tokens=out.job.num_prompt_tokens,
                first_token_id=None,
                cache_meta={"engine": "vllm", "layout": "vllm-v1-paged"},
                model_fingerprint=self._identity.fingerprint,
            )
            out.forward_done_s = time.monotonic()
            self._loop.loop.call_soon_threadsafe(out.queue.put_nowait, manifest)
        self._active.clear()

    def finished_sending(self, finished_req_ids: set[str]) -> set[str]:
        with self._lock:
            self._finished |= finished_req_ids
            done = self._settled & self._finished
            self._settled -= done
            self._finished -= done
        return done

    def close(self) -> None:
        self._loop.submit(self._sender.close()).result(timeout=10)
        self._loop.stop()

    def gather(self, layer: CacheLayer, job: SendJob) -> tuple[list[int], torch.Tensor]:
        """(block table positions, a copy of those blocks) of one layer of one request."""
        cache = self._caches[layer.name]
        return gather_layer(layer, cache, job.num_prompt_tokens, job.block_ids[layer.group])

    def _queue_layer(self, out: _Outgoing, layer: CacheLayer) -> None:
        positions, blocks = self.gather(layer, out.job)
        entry = layer_entry(layer, positions, out.next_offset_bytes, out.job.num_prompt_tokens)
        out.next_offset_bytes += entry.num_bytes
        out.entries[layer.index] = entry
        out.tensors.append(blocks)
        self._loop.loop.call_soon_threadsafe(out.queue.put_nowait, (entry, byte_view(blocks)))

    async def _run(self, out: _Outgoing) -> None:
        started_s = time.monotonic()
        try:
            ack = await self._send(out)
        except Exception as exc:  # a refused connection, an unknown host: the transfer failed
            ack = TransferAck(out.job.transfer_id, ok=False, error=str(exc) or type(exc).__name__)
        settled_s = time.monotonic()
        num_bytes = sum(e.num_bytes for e in out.entries.values())
        self._counters.add("num_sent" if ack.ok else "num_send_failures")
        self._counters.add("sent_bytes", num_bytes if ack.ok else 0)
        if not ack.ok:
            log.error("transfer_id=%s req_id=%s to %s failed: %s", out.job.transfer_id,
                      out.job.req_id, out.job.dest, ack.error)  # fmt: skip
        self._log.write(
            event="sent" if ack.ok else "send_failed",
            transfer_id=out.job.transfer_id,
            req_id=out.job.req_id,
            num_prompt_tokens=out.job.num_prompt_tokens,
            num_bytes=num_bytes,
            layer_bytes={str(i): e.num_bytes for i, e in sorted(out.entries.items())},
            block_sizes={str(e.layer_index): e.flags["block_size"] for e in out.entries.values()},
            num_streamed_layers=out.num_streamed_layers,
            seconds=round(settled_s - started_s, 4),
            seconds_after_forward=_seconds_since(out.forward_done_s, settled_s),
            error=ack.error,
        )
        out.tensors.clear()
        with self._lock:
            self._settled.add(out.job.req_id)

    async def _send(self, out: _Outgoing) -> TransferAck:
        transfer = await self._sender.begin(out.job.dest, out.job.transfer_id, out.job.req_id)
        while True:
            item = await out.queue.get()
            if isinstance(item, KVManifest):
                return await transfer.finish(item)
            entry, view = item
            await transfer.send_layer(entry, [view])


@dataclass
class _PendingLoad:
    job: LoadJob
    give_up_at: float  # monotonic seconds


class ConsumerWorker:
    """Receives transfers and fills the blocks of the requests that name them."""

    def __init__(
        self,
        identity: ModelIdentity,
        caches: dict[str, torch.Tensor],
        config: TransportConfig,
        bind_address: tuple[str, int],
        load_timeout_s: float,
        counters: TransferCounters,
        transfer_log: TransferLog,
        unclaimed_timeout_s: float = 120.0,
    ) -> None:
        self._identity, self._caches = identity, caches
        self._counters, self._log = counters, transfer_log
        self._load_timeout_s = load_timeout_s
        self._unclaimed_timeout_s = unclaimed_timeout_s
        self._lock = threading.Lock()
        self._arrived: dict[str, tuple[ReceivedTransfer, float]] = {}
        self._transport_failures: dict[str, tuple[str, float]] = {}  # reason, when
        self._given_up: dict[str, None] = {}  # insertion-ordered, bounded
        self._pending: dict[str, _PendingLoad] = {}
        self._loop = LoopThread("prfaas-kv-recv")
        self._receiver = KVReceiver(
            config, bind_address[0], bind_address[1], self._on_transfer, self._on_failure
        )
        self._loop.submit(self._receiver.start()).result(timeout=30)
        log.info("prfaas KV receiver listening on %s", self.address)

    @property
    def address(self) -> str:
        return self._receiver.address

    def start(self, jobs: list[LoadJob]) -> None:
        now = time.monotonic()
        for job in jobs:
            self._pending[job.req_id] = _PendingLoad(job, now + self._load_timeout_s)

    def poll(self) -> tuple[set[str], set[str]]:
        """(finished loads, failed loads among them); a failed load is also finished."""
        finished: set[str] = set()
        failed: set[str] = set()
        now = time.monotonic()
        for req_id, pending in list(self._pending.items()):
            error, settled = self._try_load(pending, now)
            if not settled:
                continue
            del self._pending[req_id]
            finished.add(req_id)
            if error is not None:
                failed.add(req_id)
                self._give_up(pending.job, error)
        self._drop_unclaimed(now)
        return finished, failed

    def _drop_unclaimed(self, now: float) -> None:
        """Free transfers (and forget transport failures) no request claimed within
        `unclaimed_timeout_s` of their arrival: their decode request is never coming."""
        give_up_before = now - self._unclaimed_timeout_s
        with self._lock:
            stale = [t for t, (_, at) in self._arrived.items() if at < give_up_before]
            dropped = [self._arrived.pop(t)[0] for t in stale]
            for transfer_id, (_, at) in list(self._transport_failures.items()):
                if at < give_up_before:
                    del self._transport_failures[transfer_id]
        for received in dropped:
            self._loop.loop.call_soon_threadsafe(received.release)
        if stale:
            log.warning("dropped %d transfers no request claimed: %s", len(stale), stale[:3])
            self._counters.add("num_unclaimed_transfers", len(stale))

    def close(self) -> None:
        self._loop.submit(self._receiver.close()).result(timeout=10)
        self._loop.stop()

    def _try_load(self, pending: _PendingLoad, now: float) -> tuple[str | None, bool]:
        transfer_id = pending.job.transfer_id
        with self._lock:
            arrived = self._arrived.pop(transfer_id, None)
            transport_failure = self._transport_failures.pop(transfer_id, None)
        if arrived is not None:
            return self._load(pending.job, arrived[0]), True
        if transport_failure is not None:
            return f"transfer failed in the transport: {transport_failure[0]}", True
        if now >= pending.give_up_at:
            return f"no transfer within load_timeout_s={self._load_timeout_s:g}", True
        return None, False

    def _load(self, job: LoadJob, received: ReceivedTransfer) -> str | None:
        try:
            num_blocks = self._scatter(job, received)
        except LayoutMismatch as exc:
            return f"refused: {exc}"
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            return f"refused: a malformed transfer ({type(exc).__name__}: {exc})"
        finally:
            self._loop.loop.call_soon_threadsafe(received.release)
        num_bytes = received.manifest.total_bytes
        self._counters.add("num_loaded")
        self._counters.add("loaded_bytes", num_bytes)
        self._log.write(
            event="loaded",
            transfer_id=job.transfer_id,
            req_id=job.req_id,
            num_prompt_tokens=job.num_prompt_tokens,
            num_bytes=num_bytes,
            num_blocks_written=num_blocks,
            layer_bytes={str(e.layer_index): e.num_bytes for e in received.manifest.layers},
        )
        return None

    def _scatter(self, job: LoadJob, received: ReceivedTransfer) -> int:
        manifest = received.manifest
        self._check_manifest(job, manifest)
        num_blocks = 0
        for entry in manifest.layers:
            layer = self._identity.layers[str(entry.flags["layer_name"])]
            if entry.num_bytes == 0:  # no block of this layer was sent: only check its layout
                check_entry(layer, entry)
                continue
            data = received.tensor_view(entry.tensors[0])
            num_blocks += scatter_layer(
                layer,
                self._caches[layer.name],
                entry,
                data,
                job.block_ids[layer.group],
                job.num_hit_tokens,
            )
        return num_blocks

    def _check_manifest(self, job: LoadJob, manifest: KVManifest) -> None:
        if manifest.model_fingerprint != self._identity.fingerprint:
            raise LayoutMismatch(
                f"transfer {manifest.transfer_id} is of another model (fingerprint "
                f"{manifest.model_fingerprint[:12]}, here {self._identity.fingerprint[:12]})"
            )
        if manifest.num_computed_tokens != job.num_prompt_tokens:
            raise LayoutMismatch(
                f"transfer {manifest.transfer_id} carries {manifest.num_computed_tokens} "
                f"tokens, the request names {job.num_prompt_tokens}"
            )
        names = {str(e.flags.get("layer_name")) for e in manifest.layers}
        if names != set(self._identity.layers):
            missing = sorted(set(self._identity.layers) - names)[:3]
            extra = sorted(names - set(self._identity.layers))[:3]
            raise LayoutMismatch(f"layers differ (missing here {extra}, not sent {missing})")

    def _give_up(self, job: LoadJob, error: str) -> None:
        log.error("req_id=%s transfer_id=%s: KV load failed: %s", job.req_id, job.transfer_id,
                  error)  # fmt: skip
        self._counters.add("num_load_failures")
        self._log.write(
            event="load_failed", transfer_id=job.transfer_id, req_id=job.req_id, error=error
        )
        with self._lock:
            _remember(self._given_up, job.transfer_id)

    def _on_transfer(self, received: ReceivedTransfer) -> None:
        """On the loop thread: keep the transfer for its request, or drop a late one."""
        transfer_id = received.manifest.transfer_id
        with self._lock:
            is_late = transfer_id in self._given_up
            if not is_late:
                self._arrived[transfer_id] = (received, time.monotonic())
        if is_late:
            log.warning("transfer_id=%s arrived after its load gave up: dropped", transfer_id)
            self._counters.add("num_late_transfers")
            received.release()

    def _on_failure(self, transfer_id: str, reason: str) -> None:
        with self._lock:
            self._transport_failures[transfer_id] = (reason, time.monotonic())


def _remember(ids: dict[str, None], transfer_id: str) -> None:
    """Add to an insertion-ordered set of ids, forgetting the oldest past `_MAX_IDS_KEPT`."""
    ids[transfer_id] = None
    while len(ids) > _MAX_IDS_KEPT:
        ids.pop(next(iter(ids)))
