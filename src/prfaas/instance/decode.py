"""A decode instance (`prfaas decode`): a KV receiver plus the engine's continuous decode batch.

`POST /internal/decode` takes a `DecodeJob` and answers with a stream of `TokenDelta`s (NDJSON,
one per line). With a `transfer_id`, the instance waits for that transfer: the receiver hands
over complete, CRC-verified state, which is imported into the engine (one copy out of the pooled
receive buffers, which go straight back to the pool), the manifest's first token is streamed,
and the request joins the decode batch. If the state does not arrive by the job's deadline, the
transfer fails at the receiver, or the router reports that its prefill failed
(`POST /internal/abort`), the failure policy applies: `recompute` prefills the prompt here
(counted in `prfaas:fallback_prefills_total`), `fail` ends the request with a clear error.
Without a `transfer_id` the request is prefilled and decoded here (colocated). A client that
goes away cancels its request and frees its state.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge

from prfaas.engine.protocol import ServingEngine
from prfaas.instance.service_base import EngineService, build_instance_app
from prfaas.messages import DecodeJob, InstanceStats, TokenDelta
from prfaas.service.http import (
    FIRST_TOKEN_HEADER,
    error_response,
    transport_config,
)
from prfaas.topology import InstanceConfig, Topology
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.session import ReceivedTransfer

log = logging.getLogger(__name__)
_UNCLAIMED_CHECK_S = 1.0
_UNCLAIMED_TTL_S = 120.0  # a transfer nobody asks for is released after this long
_MAX_ABANDONED = 4096  # transfer ids remembered as given up on


class TransferLost(Exception):
    """The state of a request will not arrive: deadline, broken transfer, or failed prefill."""


class DecodeService(EngineService):
    """The instance's state: engine thread, KV receiver, transfers waited for, metrics."""

    def _setup(self) -> None:
        self.receiver = make_kv_receiver(
            self.topology, self.instance, self._on_transfer, self._on_failure
        )
        self._arrived: dict[str, tuple[ReceivedTransfer, float]] = {}
        self._waiters: dict[str, asyncio.Future[ReceivedTransfer]] = {}
        self._lost: dict[str, tuple[str, float]] = {}  # transfer_id -> (reason, when)
        # transfers whose request stopped waiting (deadline, abort): freed at once if they come
        self._abandoned: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.running: dict[str, int] = {}  # req_id -> prompt tokens, admitted and not finished
        self.num_waiting = 0
        self._tasks: list[asyncio.Task[None]] = []
        # set by a convertible PD instance: takes a moved prefix into its prefix cache (True),
        # so it is not handed to a request
        self.take_prefix: Callable[[ReceivedTransfer], bool] | None = None
        self.is_ready = False  # True while the receiver listens (`/ready`)
        self._metrics()

    def _metrics(self) -> None:
        reason_labels = ["instance", "reason"]
        self.fallbacks = Counter(
            "prfaas:fallback_prefills",
            "Requests prefilled here because their KV state was lost",
            reason_labels,
            registry=self.registry,
        )
        self.failed = Counter(
            "prfaas:failed_requests",
            "Requests ended with an error",
            reason_labels,
            registry=self.registry,
        )
        metric = self.instance_metric
        self.imports = metric(
            Counter, "prfaas:kv_imports", "KV states imported into the decode batch"
        )
        self.prefix_misses = metric(
            Counter,
            "prfaas:prefix_cache_receiver_misses",
            "Transfers that left out a prefix this instance no longer caches",
        )
        self._g_waiting = metric(
            Gauge, "prfaas:num_requests_waiting", "Requests waiting for their KV state"
        )
        self._g_running = metric(
            Gauge, "prfaas:num_requests_running", "Requests in the decode batch"
        )

    async def start(self) -> None:
        await self.receiver.start()
        self._tasks.append(asyncio.create_task(self._release_unclaimed()))
        self.is_ready = True

    # ---- transfers -------------------------------------------------------------------------
    def _on_transfer(self, received: ReceivedTransfer) -> None:
        if self.take_prefix is not None and self.take_prefix(received):
            return
        tid = received.manifest.transfer_id
        waiter = self._waiters.pop(tid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(received)
        elif tid in self._abandoned:  # its request already gave up on it: free it now
            del self._abandoned[tid]
            log.info("transfer_id=%s arrived after its request gave up; released", tid)
            received.release()
        else:
            earlier = self._arrived.pop(tid, None)
            if earlier is not None:  # the same transfer id twice: keep the newest, free the other
                log.warning("transfer_id=%s arrived twice; the earlier copy is released", tid)
                earlier[0].release()
            self._arrived[tid] = (received, time.monotonic())

    def _on_failure(self, transfer_id: str, reason: str) -> None:
        """The receiver gave up on a transfer: whoever waits for it applies the failure policy."""
        self.abort(transfer_id, f"transfer failed at the receiver: {reason}")

    async def _release_unclaimed(self) -> None:
        """Transfers and failures nobody asked for are dropped after a while."""
        while True:
            await asyncio.sleep(_UNCLAIMED_CHECK_S)
            self._expire_unclaimed(time.monotonic())

    def _expire_unclaimed(self, now: float) -> None:
        for tid, (received, at) in list(self._arrived.items()):
            if now - at > _UNCLAIMED_TTL_S:
                del self._arrived[tid]
                received.release()
        for tid, (_, at) in list(self._lost.items()):
            if now - at > _UNCLAIMED_TTL_S:
                del self._lost[tid]

    def abort(self, transfer_id: str, reason: str) -> None:
        """The state of `transfer_id` will not come (the router or the receiver says why)."""
        waiter = self._waiters.pop(transfer_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransferLost(reason))
            self._abandon(transfer_id)
        else:
            self._lost[transfer_id] = (reason, time.monotonic())

    async def _wait_transfer(self, transfer_id: str, deadline_s: float) -> ReceivedTransfer:
        if transfer_id in self._arrived:
            return self._arrived.pop(transfer_id)[0]
        if transfer_id in self._lost:
            raise TransferLost(self._lost.pop(transfer_id)[0])
        waiter: asyncio.Future[ReceivedTransfer] = self.loop.create_future()
        self._waiters[transfer_id] = waiter
        try:
            async with asyncio.timeout(deadline_s):
                return await waiter
        except TimeoutError:
            self._abandon(transfer_id)
            raise TransferLost(f"KV state did not arrive within {deadline_s:g} s") from None
        finally:
            self._waiters.pop(transfer_id, None)

    def _abandon(self, transfer_id: str) -> None:
        self._abandoned[transfer_id] = None
        while len(self._abandoned) > _MAX_ABANDONED:
            self._abandoned.popitem(last=False)

    # ---- requests --------------------------------------------------------------------------
    async def decode(self, job: DecodeJob) -> AsyncIterator[list[TokenDelta]]:
        """The request's deltas, first token first, in batches of what is ready (one write per
        batch); the last one has a finish_reason."""
        req_id = job.request.req_id
        stream = self.worker.open_stream(req_id)
        try:
            error = await self._admit(job)
            if error is not None:
                yield [error]
                return
            while True:
                ready = [await stream.get()]
                while not stream.empty() and ready[-1].finish_reason is None:
                    ready.append(stream.get_nowait())
                yield ready
                if ready[-1].finish_reason is not None:
                    if ready[-1].finish_reason == "error":
                        self.failed.labels(self.instance.name, "engine").inc()
                    return
        finally:  # finished, failed, or the client went away
            self.running.pop(req_id, None)
            self.worker.close_stream(req_id)
            self._publish_gauges()

    async def _admit(self, job: DecodeJob) -> TokenDelta | None:
        """Start the request in the engine; an error delta if it cannot start."""
        req_id = job.request.req_id
        if job.transfer_id is None:
            return await self._prefill_here(job, reason=None)
        self.num_waiting += 1
        self._publish_gauges()
        if job.num_prefix_tokens > 0:
            await self._pin_prefix(job)
        try:
            received = await self._wait_transfer(job.transfer_id, job.deadline_s)
        except TransferLost as exc:
            return await self._on_lost(job, str(exc))
        finally:
            self.num_waiting -= 1
        try:
            await self.worker.call(lambda engine: self._import(engine, job, received))
        except Exception as exc:  # broken or foreign state (ManifestMismatch, ...)
            return await self._on_lost(job, f"KV state refused: {exc}")
        finally:
            received.release()
        self.imports.inc()
        self.running[req_id] = len(job.request.prompt_token_ids)
        self._publish_gauges()
        return None

    async def _pin_prefix(self, job: DecodeJob) -> None:
        """Keep the prefix the transfer will leave out from being evicted until the import; a
        prefix already gone is counted (the import then fails and the failure policy applies)."""
        req = job.request
        try:
            pinned = await self.worker.call(
                lambda engine: engine.pin_prefix(
                    req.req_id, req.prompt_token_ids, job.num_prefix_tokens
                )
            )
        except Exception as exc:  # no prefix cache here, or a bad length: the import will say
            log.warning("req_id=%s cannot pin its prefix: %s", req.req_id, exc)
            pinned = False
        if not pinned:
            self.prefix_misses.inc()

    def _import(self, engine: ServingEngine, job: DecodeJob, received: ReceivedTransfer) -> None:
        """Engine thread: adopt the state (one copy out of the pool) and stream the first token."""
        manifest = received.manifest
        if manifest.req_id != job.request.req_id:
            raise TransferLost(f"transfer {manifest.transfer_id} carries {manifest.req_id!r}")
        views = [received.tensor_view(t) for layer in manifest.layers for t in layer.tensors]
        engine.import_(
            manifest,
            views,
            job.request.sampling,
            copy=True,
            prompt_token_ids=job.request.prompt_token_ids,
        )
        self.worker.emit(engine.first_delta(job.request.req_id))

    async def _on_lost(self, job: DecodeJob, reason: str) -> TokenDelta | None:
        req_id = job.request.req_id
        log.warning("req_id=%s transfer_id=%s state lost: %s", req_id, job.transfer_id, reason)
        if job.failure_policy == "recompute":
            return await self._prefill_here(job, reason)
        self.failed.labels(self.instance.name, "kv_lost").inc()
        return TokenDelta(req_id, (), "error", f"KV state lost ({reason}); failure policy 'fail'")

    async def _prefill_here(self, job: DecodeJob, reason: str | None) -> TokenDelta | None:
        req_id = job.request.req_id
        if reason is not None:
            self.fallbacks.labels(self.instance.name, _reason_label(reason)).inc()
            log.info("req_id=%s recomputing the prefill locally", req_id)
        try:
            await self.worker.call(lambda engine: engine.add_request(job.request))
        except Exception as exc:
            self.failed.labels(self.instance.name, "rejected").inc()
            return TokenDelta(req_id, (), "error", f"request refused: {exc}")
        self.running[req_id] = len(job.request.prompt_token_ids)
        self._publish_gauges()
        return None

    # ---- reporting -------------------------------------------------------------------------
    def stats(self) -> InstanceStats:
        num_tokens = sum(self.running.values())
        return InstanceStats(
            instance_id=self.instance.name,
            role="decode",
            num_requests_waiting=self.num_waiting,
            num_requests_running=len(self.running),
            num_queued_tokens=num_tokens,
            queued_prefill_s=0.0,
            num_transfers_in_flight=self.num_waiting,
            prefix_cache_bytes=self.prefix_cache_bytes,
            kv_pool_in_use_bytes=self.receiver.pool.in_use_bytes,
        )

    def _publish_gauges(self) -> None:
        self._g_waiting.set(self.num_waiting)
        self._g_running.set(len(self.running))

    async def close(self) -> None:
        self.is_ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for received, _ in self._arrived.values():
            received.release()
        await self.receiver.close()
        await asyncio.to_thread(self.worker.stop)


def make_kv_receiver(
    topology: Topology,
    instance: InstanceConfig,
    on_transfer: Callable[[ReceivedTransfer], None],
    on_failure: Callable[[str, str], None],
) -> KVReceiver:
    """The instance's KV receiver, bound to `kv_listen` if set (the others send to `kv`)."""
    from prfaas.transport.sender import parse_address

    host, port = parse_address(instance.kv_bind_address or "127.0.0.1:0")
    config = transport_config(topology)
    return KVReceiver(config, host, port, on_transfer=on_transfer, on_failure=on_failure)


def _reason_label(reason: str) -> str:
    if "prefix" in reason:
        return "prefix_miss"
    if "did not arrive" in reason:
        return "deadline"
    if "refused" in reason:
        return "refused"
    if "receiver" in reason:
        return "transfer_failed"
    return "prefill_failed"


async def handle_decode(service: DecodeService, request: Request) -> Response:
    """`POST /internal/decode`: the job's deltas, streamed (NDJSON) or whole."""
    try:
        job = DecodeJob.from_dict(await request.json())
    except Exception as exc:  # malformed job
        return error_response(400, f"bad decode job: {exc}", "invalid_request_error")
    deltas = service.decode(job)
    if not job.stream:
        return await _whole(deltas)
    return StreamingResponse(_ndjson(deltas), media_type="application/x-ndjson")


async def handle_abort(service: DecodeService, request: Request) -> Response:
    """`POST /internal/abort`: the router says a transfer's state will not come."""
    try:
        body = await request.json()
        transfer_id, reason = str(body["transfer_id"]), str(body.get("reason", "aborted"))
    except Exception as exc:
        return error_response(400, f"bad abort: {exc}", "invalid_request_error")
    service.abort(transfer_id, reason)
    return JSONResponse({"ok": True})


def build_decode_app(topology: Topology, instance: InstanceConfig) -> FastAPI:
    """The decode instance's HTTP app; the engine loads and the receiver listens at start."""

    app = build_instance_app(topology, instance, "decode", DecodeService)

    async def decode(request: Request) -> Response:
        return await handle_decode(app.state.service, request)

    # a plain Starlette route: the hot internal path skips FastAPI's request handling
    app.add_route("/internal/decode", decode, methods=["POST"])

    @app.post("/internal/abort")
    async def abort(request: Request) -> Response:
        return await handle_abort(app.state.service, request)

    return app


async def _whole(batches: AsyncIterator[list[TokenDelta]]) -> Response:
    """Every delta in one plain response (cheaper than a stream for a whole answer); the header
    `x-prfaas-first-token-s` says when the first token was ready, from the job's arrival."""
    received_at, first_token_s = time.monotonic(), None
    lines: list[str] = []
    async for batch in batches:
        if first_token_s is None and any(d.token_ids for d in batch):
            first_token_s = time.monotonic() - received_at
        lines.extend(json.dumps(delta.to_dict()) + "\n" for delta in batch)
    headers = {} if first_token_s is None else {FIRST_TOKEN_HEADER: f"{first_token_s:.6f}"}
    return Response("".join(lines), media_type="application/x-ndjson", headers=headers)


async def _ndjson(batches: AsyncIterator[list[TokenDelta]]) -> AsyncIterator[bytes]:
    async for batch in batches:
        yield "".join(json.dumps(delta.to_dict()) + "\n" for delta in batch).encode()
