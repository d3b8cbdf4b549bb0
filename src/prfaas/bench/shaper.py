"""In-process link shaper: a loopback TCP proxy with a token-bucket rate, one-way latency with
jitter, loss-like stalls and deliberate connection cuts. For tests and benchmarks where network
namespaces are unavailable; it copies bytes, so it models a link, not a fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from dataclasses import dataclass

_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LinkShape:
    rate_bytes_per_s: float | None = None  # None: unlimited
    latency_s: float = 0.0  # one-way delay added to every chunk
    jitter_s: float = 0.0  # uniform extra delay in [0, jitter_s]; order is kept
    stall_probability: float = 0.0  # per chunk: chance that the link freezes
    stall_s: float = 0.0  # how long a stall lasts (like a loss + retransmit timeout)
    seed: int = 0


class _TokenBucket:
    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        self._rate, self._burst = rate_bytes_per_s, float(burst_bytes)
        self._tokens, self._at = float(burst_bytes), time.monotonic()

    async def take(self, num_bytes: int) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= num_bytes
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


class ShapedProxy:
    """`async with ShapedProxy("127.0.0.1", port, LinkShape(...)) as p:` connect to `p.address`.

    Only the client -> target direction is shaped (the KV direction); replies pass unshaped.
    `cut_all()` resets every open connection, as a broken path would.
    """

    def __init__(
        self, target_host: str, target_port: int, shape: LinkShape, buffer_bytes: int = 128 * 1024
    ) -> None:
        self._target = (target_host, target_port)
        self._buffer_bytes = buffer_bytes  # kernel receive buffer: bytes the "link" holds
        self._shape = shape
        self._rng = random.Random(shape.seed)
        self._bucket = (
            _TokenBucket(
                shape.rate_bytes_per_s, max(_CHUNK_BYTES, int(shape.rate_bytes_per_s / 100))
            )
            if shape.rate_bytes_per_s
            else None
        )
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.num_forwarded_bytes = 0
        self.cut_after_bytes: int | None = None  # cut every connection once this many went through

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def __aenter__(self) -> ShapedProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._buffer_bytes)
        listener.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._on_client, sock=listener)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut_all(self) -> None:
        for w in list(self._writers):
            transport = w.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        shaped = asyncio.create_task(self._pump(reader, up_writer, shaped=True))
        plain = asyncio.create_task(self._pump(up_reader, writer, shaped=False))
        self._tasks.update((shaped, plain))
        await asyncio.gather(shaped, plain, return_exceptions=True)
        self._tasks.difference_update((shaped, plain))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaped: bool
    ) -> None:
        delay_line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sink = asyncio.create_task(self._drain_delay_line(delay_line, writer))
        try:
            while data := await reader.read(_CHUNK_BYTES):
                if not shaped:
                    writer.write(data)
                    await writer.drain()
                    continue
                await self._shape_chunk(len(data))
                delay_line.put_nowait((time.monotonic() + self._delay_s(), data))
            delay_line.put_nowait((0.0, b""))
            await sink
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def _shape_chunk(self, num_bytes: int) -> None:
        s = self._shape
        if s.stall_probability and self._rng.random() < s.stall_probability:
            await asyncio.sleep(s.stall_s)
        if self._bucket is not None:
            await self._bucket.take(num_bytes)
        self.num_forwarded_bytes += num_bytes
        if self.cut_after_bytes is not None and self.num_forwarded_bytes >= self.cut_after_bytes:
            self.cut_after_bytes = None
            self.cut_all()

    def _delay_s(self) -> float:
        jitter = self._rng.uniform(0.0, self._shape.jitter_s) if self._shape.jitter_s else 0.0
        return self._shape.latency_s + jitter

    async def _drain_delay_line(
        self, line: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        last_due = 0.0
        while True:
            due, data = await line.get()
            if not data:
                writer.write_eof()
                return
            last_due = max(last_due, due)  # jitter never reorders bytes on one connection
            wait_s = last_due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            writer.write(data)
            await writer.drain()
