"""Cross-cluster prefix transfer, instance side: the holder sends a cached prefix, the receiving
prefill instance stores it in its prefix cache.

- *Holder* (`send_prefix`, behind `POST /internal/prefix_export`): the router's `PrefixExportJob`
  names the prefix's token ids and the target's KV address. The engine thread builds the state
  after those tokens from the prefix cache (`export_prefix`: attention blocks 0..k-1 and the
  fixed-size-state checkpoint at exactly k blocks, pinned while it is built); it goes through the
  instance's ordinary `KVSender`, layer by layer, and the answer is a `PrefixExportResult` once
  the receiver has ACKed (or why not).
- *Receiver* (`PrefixImporter`): a transfer whose manifest carries `PrefixTransferInfo` (its
  `cache_meta` marker) is a moved prefix, not a request's state. It is imported into the
  engine's prefix pool (`import_prefix`: same block hashes, as if computed here) on the engine
  thread; the command is queued the moment the transfer completes, right after the ACK, so a
  prefill job the router sends after the holder's answer runs after it (the engine thread is
  FCFS). The pool's stored events then reach the router's index like any others.
  A prefill instance with `kv` set, PD or PrfaaS, listens with its own receiver
  (`make_prefix_receiver`); a convertible PD instance hands the importer to its decode service's
  receiver. Holders are prefill instances of either cluster, plain or convertible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter

from prfaas.instance.worker import EngineWorker
from prfaas.messages import JSONDict, PrefixExportJob, PrefixExportResult, PrefixTransferInfo
from prfaas.topology import InstanceConfig, Topology
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender
from prfaas.transport.session import ReceivedTransfer

log = logging.getLogger(__name__)


def is_prefix_transfer(received: ReceivedTransfer) -> bool:
    """Whether a complete transfer is a moved prefix (a malformed marker counts: it is refused
    by the import rather than handed to a request)."""
    try:
        return PrefixTransferInfo.of(received.manifest) is not None
    except (ValueError, KeyError, TypeError):
        return True


class PrefixImporter:
    """Imports moved prefixes into the engine's prefix cache and counts them."""

    def __init__(self, worker: EngineWorker, instance: str, registry: CollectorRegistry) -> None:
        self.worker, self.instance = worker, instance
        self.imports = Counter(
            "prfaas:prefix_imports",
            "Moved prefixes received, by outcome (stored / refused)",
            ["instance", "outcome"],
            registry=registry,
        )
        self.import_tokens = Counter(
            "prfaas:prefix_import_tokens",
            "Prompt tokens made reusable here by moved prefixes",
            ["instance"],
            registry=registry,
        ).labels(instance)

    def take_if_prefix(self, received: ReceivedTransfer) -> bool:
        """Import `received` if it is a moved prefix (True); leave it alone otherwise."""
        if not is_prefix_transfer(received):
            return False
        self.take(received)
        return True

    def take(self, received: ReceivedTransfer) -> None:
        """Queue the import on the engine thread now; the buffers go back to the receive pool
        when it is done."""
        manifest = received.manifest
        views = [received.tensor_view(t) for layer in manifest.layers for t in layer.tensors]
        started_at = time.monotonic()
        future = self.worker.call(lambda engine: engine.import_prefix(manifest, views))
        future.add_done_callback(lambda done: self._imported(received, done, started_at))

    def _imported(
        self, received: ReceivedTransfer, done: asyncio.Future[int], started_at: float
    ) -> None:
        received.release()
        manifest = received.manifest
        error = done.exception()
        fields: JSONDict = {
            "event": "prefix_imported" if error is None else "prefix_import_refused",
            "instance": self.instance,
            "transfer_id": manifest.transfer_id,
            "num_tokens": manifest.num_computed_tokens,
            "num_kv_bytes": manifest.total_bytes,
            "import_s": round(time.monotonic() - started_at, 6),
        }
        if error is not None:
            self.imports.labels(self.instance, "refused").inc()
            log.warning(json.dumps({**fields, "error": str(error)[:300]}))
            return
        self.imports.labels(self.instance, "stored").inc()
        self.import_tokens.inc(int(done.result()))
        log.info(json.dumps({**fields, "num_reusable_tokens": int(done.result())}))


def make_prefix_receiver(
    topology: Topology, instance: InstanceConfig, importer: PrefixImporter
) -> KVReceiver:
    """A KV receiver for a prefill instance with `kv` (PD or PrfaaS): moved prefixes only."""
    from prfaas.instance.decode import make_kv_receiver

    def on_transfer(received: ReceivedTransfer) -> None:
        if not importer.take_if_prefix(received):
            log.warning(
                "transfer_id=%s is a request's state; a prefill instance takes prefixes only",
                received.manifest.transfer_id,
            )
            received.release()

    def on_failure(transfer_id: str, reason: str) -> None:
        log.warning("prefix transfer_id=%s failed at the receiver: %s", transfer_id, reason)

    return make_kv_receiver(topology, instance, on_transfer, on_failure)


async def send_prefix(
    sender: KVSender, worker: EngineWorker, job: PrefixExportJob
) -> PrefixExportResult:
    """Holder: export the job's prefix on the engine thread, send it, wait for the ACK."""
    started_at = time.monotonic()
    tid = job.transfer_id

    def failed(error: str) -> PrefixExportResult:
        log.warning(
            json.dumps({"event": "prefix_export_failed", "transfer_id": tid, "error": error})
        )
        return PrefixExportResult(tid, ok=False, error=error)

    try:
        exported = await worker.call(
            lambda engine: engine.export_prefix(job.token_ids, job.num_tokens, tid)
        )
    except Exception as exc:  # not cached (evicted since the router's index saw it), no cache
        return failed(f"prefix not exportable here: {exc}")
    manifest, buffers = exported.manifest, exported.buffers
    try:
        transfer = await sender.begin(job.target_kv_address, tid, manifest.req_id, job.deadline_s)
    except (OSError, TimeoutError, ValueError) as exc:
        return failed(f"cannot reach {job.target_kv_address}: {exc}")
    try:
        position = 0
        for layer in manifest.layers:
            await transfer.send_layer(layer, buffers[position : position + len(layer.tensors)])
            position += len(layer.tensors)
        ack = await transfer.finish(manifest)
    except Exception as exc:  # the transport's own failures
        with contextlib.suppress(Exception):
            await transfer.cancel(f"prefix send failed: {exc}")
        return failed(f"prefix send failed: {type(exc).__name__}: {exc}")
    if not ack.ok:
        return failed(f"prefix transfer failed: {ack.error}")
    result = PrefixExportResult(
        tid, True, job.num_tokens, manifest.total_bytes, time.monotonic() - started_at
    )
    log.info(json.dumps({"event": "prefix_exported", **result.to_dict()}))
    return result
