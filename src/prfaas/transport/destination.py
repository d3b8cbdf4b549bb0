"""Connections to one receiver: N persistent TCP connections, a shared frame queue they pull from,
reconnection, replies (ACK/NACK) routed to transfers, and the link's congestion signals.

Each connection has a writer task that pulls payload frames from the shared queue (a faster
connection simply takes more), sends BEGIN/LAYER descriptors on its own connection before the first
payload of that transfer/layer, computes the frame's CRC-32C, and sends header + tensor view with
one `sendmsg` (zero-copy), on the event loop or on the connection's I/O thread (`io_threads`).
A broken connection puts its frames back in the queue and reconnects; the receiver NACKs whatever
the dead connection lost.

With `size_to_link` and a known `link_gbps`, the first connection measures the RTT (TCP_INFO,
else the configured `link_rtt_s`) and `link_sizing.size_for_link` chooses how many connections,
with which socket buffers, hold the link's bandwidth-delay product open on this host; a host
that forbids it gets one warning naming the sysctl. The connections stay open between
transfers, so a transfer starts with the window the last one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Sequence
from functools import partial

from prfaas.messages import KVManifest, TransferAck
from prfaas.transport.channel import PlainChannel, open_channel, tune_socket
from prfaas.transport.config import TransportConfig
from prfaas.transport.frames import (
    FrameDecoder,
    FrameError,
    FrameHeader,
    FrameType,
    decode_control,
    encode_control,
    payload_header,
)
from prfaas.transport.host_tcp import read_host_tcp
from prfaas.transport.link_sizing import LinkSizing, size_for_link
from prfaas.transport.linkstats import LinkStats, TransportMetrics, read_tcp_stats, summarize_link
from prfaas.transport.ranges import PayloadSlice
from prfaas.transport.transfer import RECONNECT_BACKOFF_S, KVTransfer, Reply

log = logging.getLogger(__name__)
_GOODPUT_EWMA_WEIGHT = 0.3
_FRAMES_IN_FLIGHT = 4  # per connection: keeps its I/O thread busy across loop round trips
_warned: set[str] = set()  # host warnings already logged by this process


class _Conn:
    """One TCP connection of a destination, with what it has already described to the receiver."""

    def __init__(self, index: int, channel: PlainChannel) -> None:
        self.index = index
        self.channel = channel
        self.described: set[tuple[int, int]] = set()  # (tag, layer), layer -1 = BEGIN
        self.slots = asyncio.Semaphore(_FRAMES_IN_FLIGHT)
        self.reader: asyncio.Task[None] | None = None


class Destination:
    """Connections, queue and transfers for one receiver address."""

    def __init__(
        self,
        host: str,
        port: int,
        config: TransportConfig,
        tls: ssl.SSLContext | None,
        metrics: TransportMetrics | None,
    ) -> None:
        self.host, self.port, self.config, self._tls = host, port, config, tls
        self.name = f"{host}:{port}"
        self.session_id = uuid.uuid4().hex
        self.conns: dict[int, _Conn] = {}
        self.transfers: dict[int, KVTransfer] = {}
        self._queue: asyncio.Queue[tuple[KVTransfer, PayloadSlice]] = asyncio.Queue()
        self._queued_bytes = 0
        self._room = asyncio.Event()  # set whenever queued bytes drop
        self._next_tag = 1
        self._writers: list[asyncio.Task[None]] = []
        self._reconnects: dict[int, asyncio.Task[_Conn]] = {}
        self._is_closing = False
        self._metrics = metrics
        self._last_retransmits = 0
        self.goodput_bytes_per_s = 0.0
        self.num_transfers = self.num_failures = 0
        self.num_connections = config.num_connections
        self.socket_buffer_bytes = config.socket_buffer_bytes
        self.sizing: LinkSizing | None = None

    async def start(self) -> None:
        async with asyncio.timeout(self.config.connect_timeout_s):
            first = await self._connect(0)
            self._size_to_link(first)
            await asyncio.gather(*(self._connect(i) for i in range(1, self.num_connections)))
        self._writers = [
            asyncio.create_task(self._write_loop(i)) for i in range(self.num_connections)
        ]

    def _size_to_link(self, first: _Conn) -> None:
        """Connections and buffers from the link's rate and the first connection's RTT."""
        c = self.config
        if not c.size_to_link or c.link_gbps <= 0 or c.socket_buffer_bytes > 0:
            return
        measured = read_tcp_stats(first.channel.sock)
        rtt_s = measured.rtt_s if measured is not None and measured.rtt_s > 0 else c.link_rtt_s
        sizing = size_for_link(c.link_gbps, rtt_s, read_host_tcp(), c.num_connections)
        self.sizing = sizing
        self.num_connections = sizing.num_connections
        self.socket_buffer_bytes = sizing.socket_buffer_bytes
        if sizing.socket_buffer_bytes > 0:
            tune_socket(first.channel.sock, sizing.socket_buffer_bytes)
        log.info("%s: RTT %.1f ms, %d connection(s), socket buffers %s", self.name,
                 rtt_s * 1e3, sizing.num_connections,
                 sizing.socket_buffer_bytes or "autotuned")  # fmt: skip
        if sizing.warning is not None and sizing.warning not in _warned:
            _warned.add(sizing.warning)
            log.warning("KV link to %s: %s", self.name, sizing.warning)

    def new_transfer(self, transfer_id: str, req_id: str, deadline_s: float) -> KVTransfer:
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        t = KVTransfer(self, tag, transfer_id, req_id, deadline_s)
        self.transfers[tag] = t
        return t

    async def enqueue(self, t: KVTransfer, slices: Sequence[PayloadSlice]) -> None:
        limit = self.config.max_inflight_bytes
        for s in slices:
            num_bytes = len(s.view)
            while not self._has_room(num_bytes, limit):
                self._room.clear()
                await self._room.wait()
            self._queued_bytes += num_bytes
            t.num_pending += 1
            t.drained.clear()
            self._queue.put_nowait((t, s))

    def _has_room(self, num_bytes: int, limit: int) -> bool:
        return self._queued_bytes == 0 or self._queued_bytes + num_bytes <= limit

    async def send_end(self, t: KVTransfer, manifest: KVManifest, epoch: int) -> None:
        conns = list(self.conns.values())
        body = {"manifest": manifest.to_dict(), "conns": [c.index for c in conns]}
        for c in conns:
            try:
                await self._describe(c, t, None)
                await c.channel.send([encode_control(FrameType.END, t.tag, body, offset=epoch)])
            except OSError:
                self._lost(c)
        if not conns:
            t.replies.put_nowait(Reply("conn_lost"))

    async def send_cancel(self, t: KVTransfer) -> None:
        for c in list(self.conns.values()):
            if (t.tag, -1) in c.described:
                with contextlib.suppress(OSError):
                    await c.channel.send([encode_control(FrameType.CANCEL, t.tag, {})])

    def record(self, t: KVTransfer, ack: TransferAck, num_bytes: int) -> None:
        elapsed_s = time.monotonic() - t.started_at
        self.num_transfers += 1
        if not ack.ok:
            self.num_failures += 1
        elif elapsed_s > 0 and num_bytes > 0:
            rate = num_bytes / elapsed_s
            w = _GOODPUT_EWMA_WEIGHT if self.goodput_bytes_per_s else 1.0
            self.goodput_bytes_per_s = (1 - w) * self.goodput_bytes_per_s + w * rate
        if self._metrics is None:
            return
        if t.num_resent_bytes > 0:
            self._metrics.resent_bytes.labels(self.name).inc(t.num_resent_bytes)
        if ack.ok:
            self._metrics.transfer_bytes.labels(self.name).inc(num_bytes)
            self._metrics.transfer_seconds.labels(self.name).observe(elapsed_s)
        else:
            reason = (ack.error or "unknown").split(":")[0][:40]
            self._metrics.transfer_failures.labels(self.name, reason).inc()
        view = self.link_stats()
        self._metrics.observe_link(view, view.total_retransmits - self._last_retransmits)
        self._last_retransmits = max(self._last_retransmits, view.total_retransmits)

    def link_stats(self) -> LinkStats:
        stats = [s for c in self.conns.values() if (s := read_tcp_stats(c.channel.sock))]
        return summarize_link(
            self.name,
            stats,
            self.goodput_bytes_per_s,
            self.num_transfers,
            self.num_failures,
            self._queued_bytes,
        )

    async def close(self) -> None:
        self._is_closing = True
        tasks = [*self._writers, *self._reconnects.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in list(self.conns.values()):
            self._lost(c)

    async def _connect(self, index: int) -> _Conn:
        c = self.config
        channel = await open_channel(
            self.host,
            self.port,
            self._tls,
            self.socket_buffer_bytes,
            c.io_threads,
            c.congestion_control,
        )
        hello = {"session": self.session_id, "conn_index": index, "token": self.config.token or ""}
        await channel.send([encode_control(FrameType.HELLO, 0, hello)])
        await _expect_hello_ok(channel)
        conn = _Conn(index, channel)
        conn.reader = asyncio.create_task(self._read_loop(conn))
        self.conns[index] = conn
        return conn

    async def _write_loop(self, index: int) -> None:
        """Feed connection `index`: up to _FRAMES_IN_FLIGHT frames queued on its I/O thread."""
        while True:
            conn = await self._live_conn(index)
            await conn.slots.acquire()
            t, s = await self._queue.get()
            if self.conns.get(index) is not conn:
                conn.slots.release()
                self._queue.put_nowait((t, s))
                continue
            if t.is_closed:
                conn.slots.release()
                self._frame_done(t, len(s.view))
                continue
            try:
                await self._describe(conn, t, s.layer_index)
                head = self._payload_header(t.tag, s)
                fut = conn.channel.submit([head, s.view])
            except OSError as exc:
                fut = self._loop_future_failed(exc)
            fut.add_done_callback(partial(self._on_sent, conn, t, s))

    def _payload_header(self, tag: int, s: PayloadSlice) -> bytes:
        """CRC-32C inline: at tens of GB/s it costs less than a hand-off to another thread."""
        args = (tag, s.layer_index, s.tensor_index, s.offset_bytes, s.view)
        return payload_header(*args, checksum=self.config.payload_checksum)

    def _loop_future_failed(self, exc: BaseException) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        return fut

    def _on_sent(
        self, conn: _Conn, t: KVTransfer, s: PayloadSlice, fut: asyncio.Future[None]
    ) -> None:
        conn.slots.release()
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            log.warning("%s conn %d lost while sending: %s", self.name, conn.index, exc)
            self._lost(conn)
            self._queue.put_nowait((t, s))  # another connection (or this one, reconnected)
            return
        self._frame_done(t, len(s.view))

    async def _live_conn(self, index: int) -> _Conn:
        conn = self.conns.get(index)
        if conn is not None:
            return conn
        task = self._reconnects.get(index)
        if task is None or task.done():
            task = self._reconnects[index] = asyncio.create_task(self._reconnect(index))
        return await asyncio.shield(task)

    def _frame_done(self, t: KVTransfer, num_bytes: int) -> None:
        t.num_pending -= 1
        if t.num_pending == 0:
            t.drained.set()
        self._queued_bytes -= num_bytes
        self._room.set()

    async def _describe(self, conn: _Conn, t: KVTransfer, layer_index: int | None) -> None:
        """BEGIN, then the layer's LAYER frame, before its first payload on this connection."""
        if (t.tag, -1) not in conn.described:
            await conn.channel.send([encode_control(FrameType.BEGIN, t.tag, t.begin_body())])
            conn.described.add((t.tag, -1))
        if layer_index is not None and (t.tag, layer_index) not in conn.described:
            entry = t.layers[layer_index].to_dict()
            await conn.channel.send([encode_control(FrameType.LAYER, t.tag, entry)])
            conn.described.add((t.tag, layer_index))

    async def _reconnect(self, index: int) -> _Conn:
        while True:
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    conn = await self._connect(index)
                self._reconnects.pop(index, None)
                return conn
            except (OSError, TimeoutError, FrameError) as exc:
                log.warning("%s conn %d reconnect failed: %s", self.name, index, exc)
                await asyncio.sleep(RECONNECT_BACKOFF_S)

    def _lost(self, conn: _Conn) -> None:
        if self.conns.get(conn.index) is not conn:
            return
        del self.conns[conn.index]
        conn.channel.close()
        if not self._is_closing and self._metrics is not None:
            self._metrics.connections_lost.labels(self.name).inc()
        if conn.reader is not None and conn.reader is not asyncio.current_task():
            conn.reader.cancel()
        for t in self.transfers.values():
            t.replies.put_nowait(Reply("conn_lost"))
        if not self._is_closing and conn.index not in self._reconnects:
            self._reconnects[conn.index] = asyncio.create_task(self._reconnect(conn.index))

    async def _read_loop(self, conn: _Conn) -> None:
        decoder = FrameDecoder(lambda h: None, max_payload_bytes=0, max_control_bytes=16 << 20)
        try:
            while True:
                n = await conn.channel.recv_into(decoder.want())
                if n == 0:
                    raise ConnectionResetError("receiver closed the connection")
                for frame in decoder.advance(n):
                    self._on_reply(frame.header, frame.body)
        except (OSError, FrameError) as exc:
            log.warning("%s conn %d reader stopped: %s", self.name, conn.index, exc)
            self._lost(conn)

    def _on_reply(self, header: FrameHeader, body: memoryview) -> None:
        kind, tag = header.frame_type, header.tag
        obj = decode_control(body)
        if kind is FrameType.ERROR:
            raise FrameError(f"receiver error: {obj.get('reason')}")
        t = self.transfers.get(tag)
        if t is None:
            return
        if kind is FrameType.ACK:
            t.replies.put_nowait(Reply("ack", ack=TransferAck.from_dict(obj)))
        elif kind is FrameType.NACK:
            ranges = [(int(o), int(n)) for o, n in obj.get("ranges", [])]
            t.replies.put_nowait(Reply("nack", ranges=ranges, epoch=header.offset))
        else:
            raise FrameError(f"unexpected {kind.name} from a receiver")


async def _expect_hello_ok(channel: PlainChannel) -> None:
    decoder = FrameDecoder(lambda h: None, max_payload_bytes=0, max_control_bytes=4096)
    while True:
        n = await channel.recv_into(decoder.want())
        if n == 0:
            raise ConnectionResetError("receiver closed the connection during HELLO")
        for frame in decoder.advance(n):
            if frame.header.frame_type is FrameType.HELLO_OK:
                return
            reason = decode_control(frame.body).get("reason", frame.header.frame_type.name)
            raise ConnectionRefusedError(f"receiver refused: {reason}")
