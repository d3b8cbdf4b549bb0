"""The engine thread of an instance: one thread owns the engine, the event loop never touches it.

Engines (`prfaas.engine.protocol.ServingEngine`) are synchronous and not thread-safe.
`EngineWorker` runs one on a dedicated thread:
coroutines on the service's event loop hand it work with `call(fn)` (run `fn(engine)` there, in
submission order, i.e. FCFS) and stream requests with `open_stream(req_id)`. Between commands the
thread runs `engine.step()` while any request is unfinished and hands every `TokenDelta` to its
request's asyncio queue; a finished request is freed from the engine at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prfaas.engine.protocol import ServingEngine
from prfaas.messages import TokenDelta

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# fn(engine), run on the engine thread, and the future its caller awaits (None: nobody awaits it)
_Command = tuple[Callable[[ServingEngine], object], "asyncio.Future[Any] | None"]


class EngineWorker:
    """Owns `engine` on its own thread; `call` and the delta streams are the only ways in."""

    def __init__(
        self, engine: ServingEngine, loop: asyncio.AbstractEventLoop, name: str = "engine"
    ) -> None:
        self.engine = engine
        self._loop = loop
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()  # None: stop
        self._streams: dict[str, asyncio.Queue[TokenDelta]] = {}
        self.num_steps = 0
        self._thread = threading.Thread(target=self._run, name=f"prfaas-{name}", daemon=True)
        self._thread.start()

    # ---- loop side -------------------------------------------------------------------------
    def call(self, fn: Callable[[ServingEngine], _T]) -> asyncio.Future[_T]:
        """Run `fn(engine)` on the engine thread after the commands already queued."""
        fut: asyncio.Future[_T] = self._loop.create_future()
        self._commands.put((fn, fut))
        return fut

    def open_stream(self, req_id: str) -> asyncio.Queue[TokenDelta]:
        """The queue that will receive `req_id`'s deltas; open it before the request starts."""
        stream: asyncio.Queue[TokenDelta] = asyncio.Queue()
        self._streams[req_id] = stream
        return stream

    def close_stream(self, req_id: str) -> None:
        """Stop listening to `req_id`, and drop it from the engine if it is still there."""
        if self._streams.pop(req_id, None) is not None:
            self._commands.put((lambda engine: engine.free(req_id), None))

    def publish(self, delta: TokenDelta) -> None:
        """Hand a delta made on the loop (e.g. an error) to its stream."""
        stream = self._streams.get(delta.req_id)
        if stream is not None:
            stream.put_nowait(delta)

    def stop(self) -> None:
        self._commands.put(None)
        self._thread.join(timeout=30)

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            is_busy = self.engine.has_unfinished()
            try:
                command = self._commands.get(block=not is_busy)
            except queue.Empty:
                self._step()
                continue
            if command is None:
                return
            self._execute(*command)  # commands first: new requests join the next step

    def _execute(
        self, fn: Callable[[ServingEngine], object], fut: asyncio.Future[Any] | None
    ) -> None:
        try:
            result = fn(self.engine)
        except Exception as exc:  # handed to the awaiting coroutine, which owns error handling
            if fut is None:
                log.warning("engine command failed: %s", exc)
            else:
                self._loop.call_soon_threadsafe(_settle, fut, None, exc)
            return
        if fut is not None:
            self._loop.call_soon_threadsafe(_settle, fut, result, None)

    def _step(self) -> None:
        try:
            deltas = self.engine.step()
        except Exception as exc:  # last resort: fail every unfinished request, keep serving
            log.exception("engine step failed; failing its requests")
            deltas = self._fail_all(f"engine step failed: {exc}")
        self.num_steps += 1
        for delta in deltas:
            if delta.finish_reason is not None:
                self.engine.free(delta.req_id)
        if deltas:  # one wake-up of the loop per step, not one per request
            self._loop.call_soon_threadsafe(self._deliver_all, deltas)
        time.sleep(0)  # let the event loop thread take the GIL between steps

    def emit(self, delta: TokenDelta) -> None:
        """Engine thread only: hand `delta` to its stream (in order with the steps' deltas) and
        free a finished request."""
        if delta.finish_reason is not None:
            self.engine.free(delta.req_id)
        self._loop.call_soon_threadsafe(self._deliver, delta)

    def _fail_all(self, reason: str) -> list[TokenDelta]:
        return [
            TokenDelta(req_id, (), "error", reason) for req_id in self.engine.unfinished_req_ids()
        ]

    def _deliver_all(self, deltas: list[TokenDelta]) -> None:
        for delta in deltas:
            self._deliver(delta)

    def _deliver(self, delta: TokenDelta) -> None:
        stream = self._streams.get(delta.req_id)
        if stream is not None:
            stream.put_nowait(delta)


def _settle(fut: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)
