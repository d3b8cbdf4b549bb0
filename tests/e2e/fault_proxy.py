"""A fault-injecting TCP proxy for the live fault tests: it sits between KV senders and a decode
instance's KV receiver (the receiver binds `kv_listen`, everybody sends to the proxy at `kv`)
and breaks the link on command while transfers run.

It runs its own asyncio loop on a background thread of the test process, so a test switches
modes at run time from its own thread:

- `pass_through()`: forward every byte at full speed (the default);
- `reset_all(after_bytes=0)`: reset (RST) every open connection, at once or once that many more
  sender bytes have gone through; connections opened afterwards pass again;
- `corrupt_payloads(num_frames, num_bytes=1)`: flip `num_bytes` bytes in the middle of the body
  of each of the next `num_frames` PAYLOAD frames (headers stay intact, so the receiver's CRC-32C
  catches the damage and the frame is NACKed, not the connection closed);
- `throttle(bytes_per_s, after_bytes=0)`: pace the sender -> receiver direction of all
  connections together (the link) at that rate, from now or after that many more bytes;
- `stall()`: forward nothing sender -> receiver until the next mode change.

Replies (receiver -> sender) always pass unchanged. Memory is bounded: one chunk per direction
per connection, with the kernel's socket buffers as the only queue. Counters (`num_*`) prove
that a fault happened. Not a library: it parses just enough of the KV frame format (the 40-byte
header's type and length) to find payload bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from prfaas.transport.frames import HEADER_BYTES, FrameType, parse_header

_CHUNK_BYTES = 64 * 1024
_MIN_PACED_CHUNK_BYTES = 4096
_PACED_CHUNK_S = 0.02  # a throttled chunk takes about this long, so a mode change acts soon
_STALL_POLL_S = 0.01
_MAX_BODY_BYTES = 1 << 31  # header parsing bound: larger than any frame the receiver accepts
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _PayloadCorrupter:
    """Follows the frame boundaries of one sender -> receiver byte stream and flips bytes inside
    the bodies of the PAYLOAD frames that `take_frame()` grants."""

    def __init__(self, take_frame: Callable[[], int]) -> None:
        self._take_frame = take_frame  # -> bytes to flip in this payload frame (0: none)
        self._header = bytearray()
        self._body_left = 0
        self._flip_from = 0  # body bytes still to pass before the first flipped byte
        self._flip_left = 0  # bytes still to flip in this body
        self.num_flipped_bytes = 0

    def feed(self, chunk: bytearray) -> None:
        """Inspect (and maybe damage) `chunk` in place, continuing the stream."""
        i = 0
        while i < len(chunk):
            i = self._body(chunk, i) if self._body_left > 0 else self._header_bytes(chunk, i)

    def _header_bytes(self, chunk: bytearray, i: int) -> int:
        need = HEADER_BYTES - len(self._header)
        self._header += chunk[i : i + need]
        i += min(need, len(chunk) - i)
        if len(self._header) == HEADER_BYTES:
            header = parse_header(bytes(self._header), _MAX_BODY_BYTES)
            self._header.clear()
            self._body_left = header.length
            self._flip_left = 0
            if header.frame_type is FrameType.PAYLOAD and header.length > 0:
                self._flip_left = min(self._take_frame(), header.length)
                self._flip_from = (header.length - self._flip_left) // 2
        return i

    def _body(self, chunk: bytearray, i: int) -> int:
        n = min(self._body_left, len(chunk) - i)
        if self._flip_left > 0:
            start = i + self._flip_from
            end = min(i + n, start + self._flip_left)
            for k in range(start, end):  # nothing when the flip starts past this chunk
                chunk[k] ^= 0xFF
            flipped = max(0, end - start)
            self._flip_left -= flipped
            self.num_flipped_bytes += flipped
            self._flip_from = max(0, self._flip_from - n)
        self._body_left -= n
        return i + n


class FaultProxy:
    """`with FaultProxy("127.0.0.1", port) as proxy:` senders connect to `proxy.address`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.Server | None = None
        # both sides of every open connection: (sender's, receiver's)
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # the mode, switched from the test's thread (plain attributes: one writer at a time)
        self._rate_bytes_per_s: float | None = None
        self._is_stalled = False
        self._next_send_at = 0.0
        self._corrupt_frames_left = 0
        self._corrupt_bytes_per_frame = 1
        self._armed: tuple[int, Callable[[], None]] | None = None  # (at upstream bytes, action)
        # what happened
        self.num_connections = 0
        self.num_reset_connections = 0
        self.num_corrupted_frames = 0
        self.num_upstream_bytes = 0  # sender -> receiver bytes forwarded
        self.num_throttled_bytes = 0  # of those, forwarded under a rate limit

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._listener.close()

    # ---- modes (called from the test's thread) ----------------------------------------------
    def pass_through(self) -> None:
        self._armed = None
        self._rate_bytes_per_s, self._is_stalled = None, False
        self._corrupt_frames_left = 0

    def throttle(self, bytes_per_s: float, after_bytes: int = 0) -> None:
        if not bytes_per_s > 0:
            raise ValueError(f"bytes_per_s must be > 0, got {bytes_per_s}")

        def start() -> None:
            self._next_send_at = time.monotonic()
            self._rate_bytes_per_s = float(bytes_per_s)

        self._arm(after_bytes, start)

    def stall(self) -> None:
        self._is_stalled = True

    def reset_all(self, after_bytes: int = 0) -> None:
        def reset() -> None:
            self._loop.call_soon_threadsafe(self._reset_now)

        self._arm(after_bytes, reset)

    def corrupt_payloads(self, num_frames: int, num_bytes: int = 1) -> None:
        if num_frames < 0 or num_bytes < 1:
            raise ValueError("num_frames must be >= 0 and num_bytes >= 1")
        self._corrupt_bytes_per_frame = num_bytes
        self._corrupt_frames_left = num_frames

    def _arm(self, after_bytes: int, action: Callable[[], None]) -> None:
        if after_bytes <= 0:
            action()
        else:
            self._armed = (self.num_upstream_bytes + after_bytes, action)

    # ---- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._started.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._on_client, sock=self._listener)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_now()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _reset_now(self) -> None:
        """RST every open connection, on the sender's side and on the receiver's."""
        for conn in list(self._conns):
            for writer in conn:
                with contextlib.suppress(OSError, AttributeError):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                writer.transport.abort()
            self.num_reset_connections += 1
        self._conns.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self.num_connections += 1
        self._conns.add((writer, up_writer))
        corrupter = _PayloadCorrupter(self._take_corrupt_frame)
        tasks = (
            asyncio.create_task(self._pump_up(reader, up_writer, corrupter)),
            asyncio.create_task(self._pump_down(up_reader, writer)),
        )
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        self._conns.discard((writer, up_writer))
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.transport.abort()

    def _take_corrupt_frame(self) -> int:
        if self._corrupt_frames_left <= 0:
            return 0
        self._corrupt_frames_left -= 1
        self.num_corrupted_frames += 1
        return self._corrupt_bytes_per_frame

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(_CHUNK_BYTES):
                writer.write(data)
                await writer.drain()
        _close_both(writer)

    async def _pump_up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, corrupter: Any
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                await self._wait_while_stalled()
                data = await reader.read(self._chunk_bytes())
                if not data:
                    break
                chunk = bytearray(data)
                corrupter.feed(chunk)
                await self._pace(len(chunk))
                writer.write(chunk)
                await writer.drain()
                self._count_upstream(len(chunk))
        _close_both(writer)

    def _chunk_bytes(self) -> int:
        rate = self._rate_bytes_per_s
        if rate is None:
            return _CHUNK_BYTES
        return int(min(_CHUNK_BYTES, max(_MIN_PACED_CHUNK_BYTES, rate * _PACED_CHUNK_S)))

    async def _wait_while_stalled(self) -> None:
        while self._is_stalled:
            await asyncio.sleep(_STALL_POLL_S)

    async def _pace(self, num_bytes: int) -> None:
        """Under a rate limit, send this chunk at the link's next free moment."""
        rate = self._rate_bytes_per_s
        if rate is None:
            return
        now = time.monotonic()
        send_at = max(now, self._next_send_at)
        self._next_send_at = send_at + num_bytes / rate
        self.num_throttled_bytes += num_bytes
        if send_at > now:
            await asyncio.sleep(send_at - now)

    def _count_upstream(self, num_bytes: int) -> None:
        self.num_upstream_bytes += num_bytes
        armed = self._armed
        if armed is not None and self.num_upstream_bytes >= armed[0]:
            self._armed = None
            armed[1]()


def _close_both(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
