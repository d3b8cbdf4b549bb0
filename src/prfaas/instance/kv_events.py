"""An instance's prefix-cache events for the router's global KV index (`GET /internal/kv_events`).

The engine's `HybridPrefixPool` logs every stored and removed block; this route hands the router
the events after the sequence number it last applied. The answer carries the instance's *epoch*
(a random id of this process): a router that knows another epoch, or asks for events the bounded
log already dropped, gets a snapshot of everything cached instead. The pool is read on the engine
thread (it is not thread-safe), between engine steps.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from prfaas.instance.worker import EngineWorker
from prfaas.messages import JSONDict
from prfaas.prefix_cache.pool import HybridPrefixPool
from prfaas.service.http import error_response

_MAX_EVENTS = 4096  # events per answer; the router asks again on its next poll


def events_body(pool: HybridPrefixPool, after_seq: int, epoch: str, known_epoch: str) -> JSONDict:
    """The JSON answer for a router that applied events up to `after_seq` of `known_epoch`."""
    events, is_complete = pool.events_after(after_seq, _MAX_EVENTS)
    is_snapshot = known_epoch != epoch or not is_complete
    if is_snapshot:
        last_seq, events = pool.snapshot()
    else:
        last_seq = events[-1].seq if events else after_seq
    return {
        "epoch": epoch,
        "snapshot": is_snapshot,
        "last_seq": last_seq,
        "needs_state": pool.needs_state,
        "block_tokens": pool.block_tokens,
        "events": [e.to_dict() for e in events],
    }


def add_kv_event_route(app: FastAPI) -> None:
    """`GET /internal/kv_events?after=SEQ&epoch=E` on an app whose service has a `worker`."""
    epoch = uuid.uuid4().hex

    @app.get("/internal/kv_events")
    async def kv_events(
        after: int = Query(0, ge=0), epoch_seen: str = Query("", alias="epoch", max_length=64)
    ) -> JSONResponse:
        worker: EngineWorker = app.state.service.worker
        pool = worker.engine.prefix_pool
        if pool is None:
            return error_response(404, "this instance has no prefix cache", "not_found")
        body = await worker.call(lambda _engine: events_body(pool, after, epoch, epoch_seen))
        return JSONResponse(body)
