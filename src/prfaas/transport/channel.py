"""Byte channels over one TCP socket for asyncio: plain (zero-copy) and TLS (stdlib ssl, in memory).

A channel sends a list of buffers (a frame header and a view of tensor memory) with one `sendmsg`,
without joining them, and receives into a caller-supplied view (`recv_into`), so payload bytes go
from the socket straight into the receiver's preallocated buffer. A plain channel either does all
of this on the event loop or (`threaded`) sends from its own I/O thread and lets a reader thread
use `recv_into_blocking`; socket calls release the GIL, so N connections can use N cores. TLS runs
`ssl.SSLObject` over memory BIOs on the loop (an SSL object must not be shared across threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_TLS_RECORD_CHUNK_BYTES = 256 * 1024
_POLL_SLICE_MS = 500
Buffer = bytes | bytearray | memoryview


_AVAILABLE_CONGESTION_CONTROL = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


def tune_socket(
    sock: socket.socket, buffer_bytes: int = 0, congestion_control: str | None = None
) -> None:
    """Non-blocking, no Nagle delay, optional fixed kernel buffers and congestion control."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if buffer_bytes > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    if congestion_control is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion_control.encode())


def available_congestion_controls() -> tuple[str, ...]:
    """The TCP congestion control algorithms this kernel has loaded (empty where unknown)."""
    try:
        return tuple(_AVAILABLE_CONGESTION_CONTROL.read_text().split())
    except OSError:
        return ()


def check_congestion_control(name: str) -> None:
    """ValueError unless a socket here can use algorithm `name` (TCP_CONGESTION)."""
    if not hasattr(socket, "TCP_CONGESTION"):
        raise ValueError("this platform cannot choose a TCP congestion control (TCP_CONGESTION)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            available = ", ".join(available_congestion_controls()) or "unknown"
            raise ValueError(
                f"TCP congestion control {name!r} is not usable here ({exc.strerror}; "
                f"available: {available})"
            ) from None


class PlainChannel:
    """TCP without encryption. Sends run in order on the channel's own I/O thread."""

    def __init__(self, sock: socket.socket, threaded: bool = True) -> None:
        self.sock = sock
        self.is_threaded = threaded  # sends on an I/O thread; reads may use recv_into_blocking
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._io: ThreadPoolExecutor | None = None
        self._is_closed = False
        self._is_reading_blocking = False
        self._recv_low_water_bytes = 1  # the kernel's default SO_RCVLOWAT
        self.num_sent_bytes = 0
        self.num_received_bytes = 0

    async def send(self, buffers: Sequence[Buffer]) -> None:
        await self.submit(buffers)

    def submit(self, buffers: Sequence[Buffer]) -> asyncio.Future[None]:
        """Queue a send behind earlier ones without waiting for it."""
        if self.is_threaded:
            return self._loop.run_in_executor(self._executor(), self._send_blocking, buffers)
        return asyncio.ensure_future(self._send_on_loop(buffers))

    async def _send_on_loop(self, buffers: Sequence[Buffer]) -> None:
        async with self._send_lock:
            await self._send_all(buffers)

    async def recv_into(self, view: memoryview) -> int:
        n = await self._loop.sock_recv_into(self.sock, view)
        self.num_received_bytes += n
        return n

    def set_recv_low_water(self, num_bytes: int) -> None:
        """Report the socket readable only once `num_bytes` are queued (SO_RCVLOWAT), so the event
        loop wakes, and `recv_into` returns, once per that many bytes instead of once per burst.

        The caller must know that at least `num_bytes` more will arrive (the rest of a frame whose
        header it has read); end of stream and a full receive buffer still wake the reader."""
        num_bytes = max(1, num_bytes)
        if num_bytes == self._recv_low_water_bytes or self._is_closed:
            return
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, num_bytes)
            self._recv_low_water_bytes = num_bytes

    def recv_into_blocking(self, view: memoryview) -> int:
        """For the connection's one reader thread: fill `view` (MSG_WAITALL, one system call per
        frame part); fewer bytes only at end of stream. The loop must not read this socket."""
        if not self._is_reading_blocking:
            self.sock.setblocking(True)
            self._is_reading_blocking = True
        n = self.sock.recv_into(view, len(view), socket.MSG_WAITALL)
        self.num_received_bytes += n
        return n

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self._io is None:
            self.sock.close()
        else:  # after the I/O thread's pending sends have failed fast on the shut socket
            self._io.submit(self.sock.close)
            self._io.shutdown(wait=False)

    def _executor(self) -> ThreadPoolExecutor:
        if self._is_closed:
            raise ConnectionResetError("channel closed")
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="prfaas-kv-io")
        return self._io

    def _send_blocking(self, buffers: Sequence[Buffer]) -> None:
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                _wait_ready(self.sock, select.POLLOUT)
                continue
            self.num_sent_bytes += sent
            views = _drop_prefix(views, sent)

    async def _send_all(self, buffers: Sequence[Buffer]) -> None:
        """Loop-side send for the TLS subclass (non-blocking socket, waits via the loop)."""
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            self.num_sent_bytes += sent
            views = _drop_prefix(views, sent)

    async def _writable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()
        if fd < 0:
            raise ConnectionResetError("socket closed")
        self._loop.add_writer(fd, _resolve, fut)
        try:
            await fut
        finally:
            self._loop.remove_writer(fd)


def _wait_ready(sock: socket.socket, event: int) -> None:
    fd = sock.fileno()
    if fd < 0:
        raise ConnectionResetError("socket closed")
    poller = select.poll()
    poller.register(fd, event | select.POLLERR | select.POLLHUP)
    while True:
        ready = poller.poll(_POLL_SLICE_MS)
        if ready:
            return  # errors surface from the next socket call


class TlsChannel(PlainChannel):
    """TLS over the same socket: records are built in memory and sent from the event loop."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool) -> None:
        super().__init__(sock, threaded=False)
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._raw = bytearray(_TLS_RECORD_CHUNK_BYTES)

    async def handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("peer closed during the TLS handshake") from None
        await self._flush()

    def submit(self, buffers: Sequence[Buffer]) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.send(buffers))

    def set_recv_low_water(self, num_bytes: int) -> None:
        """No-op: socket bytes are TLS records, not frame bytes, so frame sizes say nothing."""

    async def send(self, buffers: Sequence[Buffer]) -> None:
        async with self._send_lock:
            for buf in buffers:
                view = memoryview(buf).cast("B")
                for pos in range(0, len(view), _TLS_RECORD_CHUNK_BYTES):
                    self._ssl.write(view[pos : pos + _TLS_RECORD_CHUNK_BYTES])
                    await self._flush_locked()

    async def recv_into(self, view: memoryview) -> int:
        while True:
            try:
                return int(self._ssl.read(len(view), view))
            except ssl.SSLWantReadError:
                if not await self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    async def _flush(self) -> None:
        async with self._send_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._send_all([data])

    async def _fill(self) -> bool:
        n = await self._loop.sock_recv_into(self.sock, self._raw)
        if n == 0:
            self._incoming.write_eof()
            return False
        self.num_received_bytes += n
        self._incoming.write(memoryview(self._raw)[:n])
        return True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _drop_prefix(views: list[memoryview], num_bytes: int) -> list[memoryview]:
    while num_bytes:
        if num_bytes >= len(views[0]):
            num_bytes -= len(views[0])
            views.pop(0)
        else:
            views[0] = views[0][num_bytes:]
            num_bytes = 0
    return views


def server_tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Receiver side: present `cert`, require a client certificate signed by `ca`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Sender side: present `cert`, require a server certificate signed by `ca`.

    Peers are authenticated by the deployment's private CA, not by host name: instances are
    addressed by IP inside and across datacenters.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def open_channel(
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    buffer_bytes: int = 0,
    threaded: bool = True,
    congestion_control: str | None = None,
) -> PlainChannel:
    """Connect (and run the TLS handshake when `tls` is given)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        tune_socket(sock, buffer_bytes, congestion_control)
        await loop.sock_connect(sock, (host, port))
        return await _wrap(sock, tls, server_side=False, threaded=threaded)
    except BaseException:
        sock.close()
        raise


async def accept_channel(
    sock: socket.socket, tls: ssl.SSLContext | None, buffer_bytes: int = 0, threaded: bool = True
) -> PlainChannel:
    tune_socket(sock, buffer_bytes)
    return await _wrap(sock, tls, server_side=True, threaded=threaded)


async def _wrap(
    sock: socket.socket, tls: ssl.SSLContext | None, server_side: bool, threaded: bool
) -> PlainChannel:
    if tls is None:
        return PlainChannel(sock, threaded)
    channel = TlsChannel(sock, tls, server_side)
    await channel.handshake()
    return channel
