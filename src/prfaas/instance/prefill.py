"""A prefill instance (`prfaas prefill`): PrfaaS cluster or local PD-P, same code.

`POST /internal/prefill` takes a `PrefillJob`, queues it FCFS on the engine thread, and prefills
it with the layer callback: each layer's state is handed to the KV transport as soon as it is
final, so it crosses the link while the next layer computes; its attention K/V coded by the job's
`kv_codec` (the router's choice), recurrent and conv state exact. Then the manifest goes out with
END, and the decode instance's ACK ends the job; the answer is a `PrefillResult`. The request's
state stays in the engine until the ACK (NACKed ranges are resent from it), then it is freed.
`POST /internal/prefix_export` sends a cached prefix to another instance's KV receiver, and an
instance with `kv` set receives moved prefixes into its prefix cache (`prefix_transfer`).
`GET /internal/stats` reports queue depth, queued prefill seconds, transfers in flight and the
measured link to every decode instance this instance sends to.

A PrfaaS prefill instance whose KV may be coded (`[transport] compression` a codec or "auto")
times that codec once at start on its engine thread (`ServingEngine.kv_encode_bytes_per_s`: the
model's K shape, the thread and torch threads that code every request) and reports the rate in
its stats (`kv_encode_bytes_per_s`), where the router's "auto" rule reads it; a configured codec
that encodes slower than the link's `[link] gbps` is kept, with a warning at start, since coding
then bounds each offloaded transfer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Gauge

from prfaas.engine.protocol import LayerState, ServingEngine
from prfaas.instance.engines import PrefillRate
from prfaas.instance.prefix_transfer import PrefixImporter, make_prefix_receiver, send_prefix
from prfaas.instance.service_base import EngineService, build_instance_app
from prfaas.messages import (
    GenerateRequest,
    InstanceStats,
    JSONDict,
    KVManifest,
    PrefillJob,
    PrefillResult,
    PrefixExportJob,
    TransferAck,
)
from prfaas.models.kv_codec import COMPRESSION_AUTO, KV_CODEC_NONE
from prfaas.policy.compression import AUTO_KV_CODEC
from prfaas.service.http import error_response, transport_config
from prfaas.topology import InstanceConfig, Topology
from prfaas.transport.linkstats import LinkStats, TransportMetrics
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender, KVTransfer

log = logging.getLogger(__name__)
_LAYER_QUEUE_TIMEOUT_S = 120.0  # engine thread waits this long for the transport to take a layer


@dataclass
class _Job:
    job: PrefillJob
    queued_at: float
    num_tokens: int
    started_at: float | None = None
    forward_done_at: float | None = None  # its forward ended; only its transfer's tail remains
    num_cached_tokens: int = 0  # prompt tokens reused from this instance's prefix cache
    layers: list[LayerState] = field(default_factory=list)  # their buffers must outlive END


def remaining_prefill_s(
    jobs: Iterable[_Job], now: float, expected_s: Callable[[int], float]
) -> float:
    """Expected seconds of prefill left on an instance at `now`: each queued job's whole
    `expected_s(num_tokens)`, the computing one's less what it has run, nothing for a job only
    sending its transfer's tail (as the simulator's `SimPrefill.remaining_work_s` counts)."""
    remaining_s = 0.0
    for j in jobs:
        if j.forward_done_at is not None:
            continue
        ran_s = 0.0 if j.started_at is None else now - j.started_at
        remaining_s += max(0.0, expected_s(j.num_tokens) - ran_s)
    return remaining_s


class PrefillService(EngineService):
    """The instance's state: engine thread, KV sender, FCFS queue bookkeeping, metrics."""

    def _setup(self) -> None:
        self.rate = PrefillRate(self.worker.engine)
        config = transport_config(self.topology, cluster=self.instance.cluster)  # its own link
        self.sender = KVSender(config, TransportMetrics(self.registry))
        self.jobs: dict[str, _Job] = {}  # transfer_id -> job, queued or running or sending
        self.prefix_importer = PrefixImporter(self.worker, self.instance.name, self.registry)
        self.prefix_receiver: KVReceiver | None = None  # `kv` set and no decode role's receiver
        self.kv_encode_bytes_per_s: dict[str, float] = {}  # measured at start (`measure_codec`)
        self._waiting = self.instance_metric(
            Gauge, "prfaas:num_requests_waiting", "Prefill jobs queued"
        )
        self._running = self.instance_metric(
            Gauge, "prfaas:num_requests_running", "Prefills computing or sending"
        )

    async def run(self, job: PrefillJob) -> PrefillResult:
        """Prefill `job` after the jobs before it, stream its state, wait for the ACK."""
        entry = _Job(job, time.monotonic(), len(job.request.prompt_token_ids))
        self.jobs[job.transfer_id] = entry
        self._publish_gauges()
        try:
            return await self._run(entry)
        finally:
            self.jobs.pop(job.transfer_id, None)
            self._publish_gauges()

    async def _run(self, entry: _Job) -> PrefillResult:
        job, req_id = entry.job, entry.job.request.req_id
        try:
            transfer = await self.sender.begin(
                job.decode_kv_address, job.transfer_id, req_id, job.deadline_s
            )
        except (OSError, TimeoutError, ValueError) as exc:
            return self._failed(job, f"cannot reach decode instance {job.decode_kv_address}: {exc}")
        try:
            manifest = await self.worker.call(lambda engine: self._prefill(engine, entry, transfer))
        except Exception as exc:  # the engine refused the request or failed on it
            await transfer.cancel(f"prefill failed: {exc}")
            self.worker.call(lambda engine: engine.free(req_id))
            return self._failed(job, f"prefill failed: {exc}")
        forward_done_at = entry.forward_done_at = time.monotonic()
        try:
            ack = await transfer.finish(manifest)
        except Exception as exc:  # the transport's own failures come back as a failed ACK
            log.exception("req_id=%s transfer_id=%s finish failed", req_id, job.transfer_id)
            ack = TransferAck(job.transfer_id, ok=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.worker.call(lambda engine: engine.free(req_id))
        assert entry.started_at is not None
        result = PrefillResult(
            req_id=req_id,
            transfer_id=job.transfer_id,
            ok=ack.ok,
            first_token_id=manifest.first_token_id,
            num_kv_bytes=manifest.total_bytes,
            queue_s=entry.started_at - entry.queued_at,
            prefill_s=forward_done_at - entry.started_at,
            transfer_tail_s=time.monotonic() - forward_done_at,
            error=None if ack.ok else f"KV transfer failed: {ack.error}",
            num_cached_tokens=entry.num_cached_tokens,
        )
        log.info(
            "req_id=%s transfer_id=%s prefill ok=%s tokens=%d cached=%d kv_bytes=%d kv_codec=%s "
            "queue_s=%.3f prefill_s=%.3f tail_s=%.3f",
            req_id,
            job.transfer_id,
            ack.ok,
            entry.num_tokens,
            entry.num_cached_tokens,
            manifest.total_bytes,
            manifest.kv_codec,
            result.queue_s,
            result.prefill_s,
            result.transfer_tail_s,
        )
        return result

    def _prefill(self, engine: ServingEngine, entry: _Job, transfer: KVTransfer) -> KVManifest:
        """Engine thread: forward pass with each final layer handed to the transport."""
        entry.started_at = time.monotonic()
        self.loop.call_soon_threadsafe(self._publish_gauges)

        def on_layer(_req_id: str, layer: LayerState) -> None:
            entry.layers.append(layer)
            coro = transfer.send_layer(layer.entry, layer.buffers)
            asyncio.run_coroutine_threadsafe(coro, self.loop).result(_LAYER_QUEUE_TIMEOUT_S)

        request, num_skip = _prefill_only(entry.job.request), entry.job.num_receiver_prefix_tokens
        skip = {request.req_id: num_skip} if num_skip > 0 else None
        codecs = {request.req_id: entry.job.kv_codec}
        engine.prefill([request], on_layer=on_layer, skip_tokens=skip, kv_codecs=codecs)
        entry.num_cached_tokens = engine.num_cached_tokens(request.req_id)
        num_computed = entry.num_tokens - entry.num_cached_tokens
        self.rate.observe(num_computed, time.monotonic() - entry.started_at)
        exported = engine.export(
            request.req_id,
            transfer_id=entry.job.transfer_id,
            num_prefix_tokens=num_skip,
            kv_codec=entry.job.kv_codec,
        )
        return exported.manifest

    def _failed(self, job: PrefillJob, error: str) -> PrefillResult:
        log.warning("req_id=%s transfer_id=%s %s", job.request.req_id, job.transfer_id, error)
        return PrefillResult(job.request.req_id, job.transfer_id, ok=False, error=error)

    def stats(self) -> InstanceStats:
        queued = [j for j in self.jobs.values() if j.started_at is None]
        computing = [j for j in self.jobs.values() if j.started_at is not None]
        num_tokens = sum(j.num_tokens for j in self.jobs.values())
        links = []
        for dest in {j.job.decode_kv_address for j in self.jobs.values()} | self._known_dests():
            link = self.sender.link_stats(dest)
            if link is not None:
                links.append(_link_dict(link))
        return InstanceStats(
            instance_id=self.instance.name,
            role="prefill",
            num_requests_waiting=len(queued),
            num_requests_running=len(computing),
            num_queued_tokens=num_tokens,
            queued_prefill_s=remaining_prefill_s(
                self.jobs.values(), time.monotonic(), self.rate.expected_s
            ),
            num_transfers_in_flight=len(computing),
            links=tuple(links),
            prefix_cache_bytes=self.prefix_cache_bytes,
            prefill_tokens_per_s=self.rate.tokens_per_s,
            kv_encode_bytes_per_s=dict(self.kv_encode_bytes_per_s),
        )

    def _known_dests(self) -> set[str]:
        return {i.kv for i in self.topology.instances if i.kv is not None}

    def _publish_gauges(self) -> None:
        queued = sum(1 for j in self.jobs.values() if j.started_at is None)
        self._waiting.set(queued)
        self._running.set(len(self.jobs) - queued)

    async def start(self) -> None:
        """A plain prefill instance with a `kv` address receives moved prefixes there (a
        convertible one receives them through its decode service and does not call this)."""
        await self.measure_codec()
        if self.instance.kv is not None:
            await self.start_prefix_receiver()

    async def measure_codec(self) -> None:
        """Time the codec this instance's offloaded K/V may be coded with, on the engine thread
        (nothing for a PD instance, whose KV never crosses the link, or without a codec)."""
        codec = codec_to_measure(self.topology, self.instance)
        if codec is None:
            return
        rate = await self.worker.call(lambda engine: engine.kv_encode_bytes_per_s(codec))
        if rate is None:  # the engine does not code (emulated): unlimited
            return
        self.kv_encode_bytes_per_s[codec] = rate
        log.info("%s: KV codec %s encodes %.3f GB/s", self.instance.name, codec, rate / 1e9)
        warning = slow_codec_warning(self.topology, codec, rate)
        if warning is not None:
            log.warning("%s: %s", self.instance.name, warning)

    async def start_prefix_receiver(self) -> None:
        """Listen on the instance's `kv` address for moved prefixes."""
        self.prefix_receiver = make_prefix_receiver(
            self.topology, self.instance, self.prefix_importer
        )
        await self.prefix_receiver.start()

    async def close(self) -> None:
        if self.prefix_receiver is not None:
            await self.prefix_receiver.close()
        await self.sender.close()
        await asyncio.to_thread(self.worker.stop)


def codec_to_measure(topology: Topology, instance: InstanceConfig) -> str | None:
    """The codec a PrfaaS prefill instance's K/V may be coded with: the configured one, "auto"'s
    (`AUTO_KV_CODEC`); None for a PD instance or without a codec."""
    compression = topology.transport.compression
    in_prfaas = any(instance in c.instances for c in topology.clusters_of_kind("prfaas"))
    if not in_prfaas or compression == KV_CODEC_NONE:
        return None
    return AUTO_KV_CODEC if compression == COMPRESSION_AUTO else compression


def slow_codec_warning(topology: Topology, codec: str, rate_bytes_per_s: float) -> str | None:
    """Why a configured codec (not "auto", which then leaves the KV exact) bounds each offloaded
    transfer: it encodes slower than the link's `[link] gbps`; None otherwise."""
    link_bytes_per_s = topology.link.bytes_per_s
    if topology.transport.compression == COMPRESSION_AUTO or rate_bytes_per_s >= link_bytes_per_s:
        return None
    return (
        f"[transport] compression = {codec} encodes {rate_bytes_per_s / 1e9:.3f} GB/s on this "
        f"instance, below the link's {link_bytes_per_s / 1e9:.3f} GB/s ([link] gbps = "
        f"{topology.link.gbps:g}): coding, not the link, bounds each offloaded transfer"
    )


def _prefill_only(request: GenerateRequest) -> GenerateRequest:
    """The request as this instance runs it: finished after its first token (max_tokens 1), so
    the engine thread never decodes it here while it waits for the ACK. A decode step would
    advance its recurrent and conv states in place, under the views the transport still sends
    (a slow link) or resends (a NACK): the decode instance would get, CRC-valid, a state one or
    more tokens ahead of the manifest's, and decode a wrong answer. The decode instance
    continues with the job's own sampling parameters."""
    return replace(request, sampling=replace(request.sampling, max_tokens=1))


def _link_dict(link: LinkStats) -> JSONDict:
    return dict(asdict(link))


async def handle_prefill(service: PrefillService, request: Request) -> Response:
    """`POST /internal/prefill`: run the job, answer its `PrefillResult`."""
    try:
        job = PrefillJob.from_dict(await request.json())
    except Exception as exc:  # malformed job: the router's bug or a stray client
        return error_response(400, f"bad prefill job: {exc}", "invalid_request_error")
    result = await service.run(job)
    return JSONResponse(result.to_dict())


async def handle_prefix_export(service: PrefillService, request: Request) -> Response:
    """`POST /internal/prefix_export`: send a cached prefix, answer a `PrefixExportResult`."""
    try:
        job = PrefixExportJob.from_dict(await request.json())
    except Exception as exc:  # malformed job
        return error_response(400, f"bad prefix export job: {exc}", "invalid_request_error")
    result = await send_prefix(service.sender, service.worker, job)
    return JSONResponse(result.to_dict())


def build_prefill_app(topology: Topology, instance: InstanceConfig) -> FastAPI:
    """The prefill instance's HTTP app; the engine loads when the app starts."""

    app = build_instance_app(topology, instance, "prefill", PrefillService)

    async def prefill(request: Request) -> Response:
        return await handle_prefill(app.state.service, request)

    # a plain Starlette route: the hot internal path skips FastAPI's request handling
    app.add_route("/internal/prefill", prefill, methods=["POST"])

    async def prefix_export(request: Request) -> Response:
        return await handle_prefix_export(app.state.service, request)

    app.add_route("/internal/prefix_export", prefix_export, methods=["POST"])
    return app
