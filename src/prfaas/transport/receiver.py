"""KV receiver: accepts authenticated sender connections, hands over complete, verified transfers.

Payload bytes are received straight into pooled, reused buffers (`recv_into` via the frame
decoder's placement), never into a growing `bytes`. A connection must authenticate (TLS client
certificate, and/or the shared token in HELLO) before any other frame is read; anything else is
refused with a logged reason and counted (`num_rejected_connections` before authentication,
`num_protocol_errors` after it). At most `_MAX_PENDING_HANDSHAKES` connections may be
unauthenticated at once, each for at most `connect_timeout_s`; a failed `accept` (out of file
descriptors) is logged and retried, so the listener never stops. Transfers past their deadline
are dropped and their buffers freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from prfaas.messages import LayerEntry
from prfaas.transport.channel import PlainChannel, accept_channel, server_tls_context
from prfaas.transport.config import MAX_FRAME_BYTES, TransportConfig
from prfaas.transport.frames import (
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    decode_control,
    encode_control,
)
from prfaas.transport.pool import BufferPool
from prfaas.transport.ranges import layer_span
from prfaas.transport.session import FinishedTags, Outcome, ReceivedTransfer, ReceiverSession

log = logging.getLogger(__name__)
_HELLO_MAX_BYTES = 4096
_CONTROL_MAX_BYTES = 16 << 20
_EXPIRY_PERIOD_S = 0.1
_CONTROL_WAIT_S = 60.0  # a reader thread waits this long for the loop to handle a frame
_MAX_FAILURES_KEPT = 1024  # `failures` is a bounded record, not a log
_RECV_LOW_WATER_BYTES = 1 << 20  # loop reader: wake once per MiB of a frame body, at most
_MAX_PENDING_HANDSHAKES = 256  # connections not yet authenticated; more are closed at once
_ACCEPT_RETRY_S = 0.1  # pause after a failed accept (EMFILE: wait for descriptors to free up)


class KVReceiver:
    """Listens on (host, port); `get()` returns the next complete transfer.

    Alternatively pass `on_transfer`, called for every complete transfer instead of queueing it.
    The consumer must call `ReceivedTransfer.release()` to return the buffers to the pool.
    """

    def __init__(
        self,
        config: TransportConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        on_transfer: Callable[[ReceivedTransfer], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        if config.token is None and not config.is_tls:
            raise ValueError("a receiver needs TLS certificates or a shared token")
        self.config = config
        self._host, self._port = host, port
        self._on_transfer = on_transfer
        self._on_failure = on_failure  # (transfer_id, reason) for every failed transfer
        self._tls = None
        if config.tls_cert is not None and config.tls_key and config.tls_ca:
            self._tls = server_tls_context(config.tls_cert, config.tls_key, config.tls_ca)
        self.pool = BufferPool(config.max_buffer_bytes)
        self._pool_room = asyncio.Event()  # set when buffers return to the pool
        self.pool.on_release = self._pool_room.set
        self.sessions: dict[str, ReceiverSession] = {}
        self._finished = FinishedTags()  # outlives forgotten sessions: replays stay ignored
        self._session_channels: dict[str, set[PlainChannel]] = {}
        self._queue: asyncio.Queue[ReceivedTransfer] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self.num_rejected_connections = 0  # refused before authentication (logged with reason)
        self.num_protocol_errors = 0  # authenticated connections closed for a protocol violation
        self._num_pending_handshakes = 0
        self.failures: list[tuple[str, str]] = []  # (transfer_id, reason), the most recent last

    async def __aenter__(self) -> KVReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> str:
        assert self._listener is not None, "start() first"
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        sock.setblocking(False)
        self._listener = sock
        self._spawn(self._accept_loop(sock))
        self._spawn(self._expiry_loop())

    async def get(self) -> ReceivedTransfer:
        return await self._queue.get()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for session in self.sessions.values():
            session.close()
        for channels in self._session_channels.values():
            for ch in channels:
                ch.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ECONNABORTED: keep listening
                log.warning("accept failed: %s; retrying in %g s", exc, _ACCEPT_RETRY_S)
                await asyncio.sleep(_ACCEPT_RETRY_S)
                continue
            address = f"{peer[0]}:{peer[1]}"
            if self._num_pending_handshakes >= _MAX_PENDING_HANDSHAKES:
                self.num_rejected_connections += 1
                log.warning(
                    "refused connection from %s: %d connections already authenticating",
                    address,
                    self._num_pending_handshakes,
                )
                sock.close()
                continue
            self._num_pending_handshakes += 1
            self._spawn(self._serve(sock, address))

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        channel: PlainChannel | None = None
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                channel = await accept_channel(
                    sock, self._tls, self.config.socket_buffer_bytes, self.config.io_threads
                )
                session_id, conn_index = await self._authenticate(channel, peer)
        except (OSError, TimeoutError, FrameError) as exc:  # ssl.SSLError is an OSError
            self.num_rejected_connections += 1
            reason = str(exc) or type(exc).__name__  # a TimeoutError has no message
            log.warning("refused connection from %s: %s", peer, reason)
            await _refuse(channel, reason)
            sock.close()
            return
        finally:
            self._num_pending_handshakes -= 1
        await self._run_session(channel, session_id, conn_index, peer)

    async def _authenticate(self, channel: PlainChannel, peer: str) -> tuple[str, int]:
        frame = await _read_one(channel, FrameDecoder(_no_payload, 0, _HELLO_MAX_BYTES))
        if frame.header.frame_type is not FrameType.HELLO or not frame.is_intact:
            raise FrameError(f"expected HELLO, got {frame.header.frame_type.name}")
        hello = decode_control(frame.body)
        token = hello.get("token")
        given = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else b""
        expected = self.config.token
        if expected is not None and not hmac.compare_digest(given, expected.encode()):
            raise FrameError("bad or missing token")  # bytes: any str compares, in constant time
        session_id, conn_index = str(hello.get("session", "")), hello.get("conn_index")
        if not session_id or not isinstance(conn_index, int) or conn_index < 0:
            raise FrameError("HELLO needs a session id and a conn_index")
        await channel.send([encode_control(FrameType.HELLO_OK, 0, {})])
        log.info("session=%s conn=%d authenticated from %s", session_id, conn_index, peer)
        return session_id, conn_index

    async def _run_session(
        self, channel: PlainChannel, session_id: str, conn_index: int, peer: str
    ) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            session = ReceiverSession(
                session_id, self.pool, self.config.max_transfer_bytes, self._finished
            )
            self.sessions[session_id] = session
        channels = self._session_channels.setdefault(session_id, set())
        channels.add(channel)
        decoder = FrameDecoder(
            session.place,
            MAX_FRAME_BYTES,  # bodies go into pooled buffers: the sender picks its frame size
            _CONTROL_MAX_BYTES,
            allow_unchecked_payload=not self.config.payload_checksum,
        )
        try:
            if channel.is_threaded:
                await self._read_on_thread(session, channel, conn_index, decoder)
            else:
                await self._read_on_loop(session, channel, conn_index, decoder)
        except FrameError as exc:
            self.num_protocol_errors += 1
            log.warning("session=%s conn=%d from %s: protocol error: %s", session_id, conn_index,
                        peer, exc)  # fmt: skip
            await _refuse(channel, str(exc))
        except OSError as exc:
            log.warning("session=%s conn=%d from %s: %s", session_id, conn_index, peer, exc)
        except Exception:  # a bug in handling this peer's frames: close it, keep serving others
            log.exception(
                "session=%s conn=%d from %s: internal error", session_id, conn_index, peer
            )
        finally:
            channels.discard(channel)
            channel.close()
            placed = decoder.placed_body()
            if placed is not None:  # cut mid-body: that buffer is no longer being written
                session.end_write(placed)
            self._forget_if_idle(session)

    def _forget_if_idle(self, session: ReceiverSession) -> None:
        """A session with no connection left keeps its transfers until they expire. Once it has
        none either, the buffers of transfers dropped mid-write go back to the pool with it."""
        sid = session.session_id
        if not self._session_channels.get(sid) and not session.transfers:
            session.close()
            self._session_channels.pop(sid, None)
            self.sessions.pop(sid, None)

    async def _read_on_loop(
        self, session: ReceiverSession, channel: PlainChannel, conn: int, decoder: FrameDecoder
    ) -> None:
        """Receive on the event loop. SO_RCVLOWAT is set to what the current frame still owes (up
        to 1 MiB), so the loop wakes about once per MiB instead of once per TCP burst."""
        low_water_cap = _RECV_LOW_WATER_BYTES
        if self.config.socket_buffer_bytes > 0:  # leave the kernel room to queue that much
            low_water_cap = min(low_water_cap, self.config.socket_buffer_bytes // 4)
        while True:
            want = decoder.want()  # never more than the rest of the current header or body
            channel.set_recv_low_water(min(len(want), low_water_cap))
            n = await channel.recv_into(want)
            if n == 0:
                return _log_end(session, conn, decoder)
            for frame in decoder.advance(n):
                await self._on_frame(session, channel, conn, frame)

    async def _read_on_thread(
        self, session: ReceiverSession, channel: PlainChannel, conn: int, decoder: FrameDecoder
    ) -> None:
        """Receive and CRC-check on a reader thread; frames are handled on the loop in order.

        The thread waits for each control frame to be handled (a LAYER must be registered before
        the next payload is placed) but not for payload frames. CRC-32C runs inline: at tens of
        GB/s with the GIL released it costs less than a hand-off to another thread.
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def read() -> None:
            while True:
                n = channel.recv_into_blocking(decoder.want())
                if n == 0:
                    return _log_end(session, conn, decoder)
                for frame in decoder.advance(n):
                    if frame.is_placed:  # CRC-32C already checked by the decoder on this thread
                        session.end_write(frame.body)
                        loop.call_soon_threadsafe(self._on_payload, session, channel, conn, frame)
                    elif frame.header.frame_type is not FrameType.PAYLOAD:
                        coro = self._on_frame(session, channel, conn, frame)
                        asyncio.run_coroutine_threadsafe(coro, loop).result(_CONTROL_WAIT_S)

        def run() -> None:
            error: BaseException | None = None
            try:
                read()
            except BaseException as exc:  # handed to the loop, which owns error handling
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(_settle, finished, error)

        threading.Thread(target=run, name=f"prfaas-kv-rx{conn}", daemon=True).start()
        await finished

    async def _on_frame(
        self, session: ReceiverSession, channel: PlainChannel, conn: int, frame: Frame
    ) -> None:
        if frame.is_placed and not channel.is_threaded:
            session.end_write(frame.body)
        if frame.header.frame_type is FrameType.LAYER and frame.is_intact:
            await self._wait_for_room(session, frame)
        outcome = session.handle(conn, frame, time.monotonic())
        if outcome.replies or outcome.delivered or outcome.failed:
            await self._apply(outcome, channel)

    async def _wait_for_room(self, session: ReceiverSession, frame: Frame) -> None:
        """Backpressure: hold this connection (TCP stops the sender) until the pool can take the
        layer, or until the transfer's deadline, when the transfer is refused as out of memory."""
        try:
            start, end = layer_span(LayerEntry.from_dict(decode_control(frame.body)))
        except (FrameError, KeyError, TypeError, ValueError):
            return  # session.handle reports the malformed frame
        t = session.transfers.get(frame.header.tag)
        deadline_at = time.monotonic() + 1.0 if t is None else t.deadline_at
        limit_at = min(deadline_at, time.monotonic() + _CONTROL_WAIT_S / 2)
        while not self.pool.can_grant(end - start) and time.monotonic() < limit_at:
            self._pool_room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pool_room.wait(), limit_at - time.monotonic())

    def _on_payload(
        self, session: ReceiverSession, channel: PlainChannel, conn: int, frame: Frame
    ) -> None:
        outcome = session.handle(conn, frame, time.monotonic())
        if outcome.replies or outcome.delivered or outcome.failed:
            self._spawn(self._apply(outcome, channel))

    async def _apply(self, outcome: Outcome, channel: PlainChannel | None) -> None:
        for _, data in outcome.replies:
            if channel is not None:
                with contextlib.suppress(OSError):
                    await channel.send([data])
        self._record_failures(outcome.failed)
        for received in outcome.delivered:
            if self._on_transfer is not None:
                self._on_transfer(received)
            else:
                self._queue.put_nowait(received)

    def _record_failures(self, failed: list[tuple[str, str]]) -> None:
        """Keep the last `_MAX_FAILURES_KEPT` failures for inspection; tell `on_failure`."""
        self.failures.extend(failed)
        if len(self.failures) > 2 * _MAX_FAILURES_KEPT:
            del self.failures[:-_MAX_FAILURES_KEPT]
        if self._on_failure is not None:
            for transfer_id, reason in failed:
                self._on_failure(transfer_id, reason)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_PERIOD_S)
            now = time.monotonic()
            for session_id, session in list(self.sessions.items()):
                outcome = session.expire(now)
                live = next(iter(self._session_channels.get(session_id, ())), None)
                await self._apply(outcome, live)
                self._forget_if_idle(session)


def _log_end(session: ReceiverSession, conn: int, decoder: FrameDecoder) -> None:
    if not decoder.is_idle:
        log.warning("session=%s conn=%d: stream cut mid-frame", session.session_id, conn)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _no_payload(header: object) -> None:
    return None


async def _read_one(channel: PlainChannel, decoder: FrameDecoder) -> Frame:
    while True:
        n = await channel.recv_into(decoder.want())
        if n == 0:
            raise ConnectionResetError("peer closed before a complete frame")
        frames = decoder.advance(n)
        if frames:
            return frames[0]


async def _refuse(channel: PlainChannel | None, reason: str) -> None:
    if channel is None:
        return
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await channel.send([encode_control(FrameType.ERROR, 0, {"reason": reason[:500]})])
