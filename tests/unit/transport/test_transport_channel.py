"""PlainChannel's receive low-water mark (SO_RCVLOWAT) on a real socket pair."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

from prfaas.transport.channel import PlainChannel, tune_socket


@contextlib.contextmanager
def _loop_channel(
    low_water_bytes: int,
) -> Iterator[tuple[socket.socket, socket.socket, PlainChannel]]:
    """A loopback TCP pair: (client, accepted peer, the peer's loop-driven channel with the given
    low-water mark). Closes the channel and the client on exit."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        tune_socket(peer)
        ch = PlainChannel(peer, threaded=False)
        ch.set_recv_low_water(low_water_bytes)
        try:
            yield client, peer, ch
        finally:
            ch.close()
            client.close()


def test_low_water_is_set_on_the_socket_and_reset_to_one() -> None:
    async def main() -> None:
        with _loop_channel(65536) as (_, peer, ch):
            assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 65536
            ch.set_recv_low_water(0)
            assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1

    asyncio.run(main())


def test_loop_read_waits_for_the_low_water_mark_then_returns_all_of_it() -> None:
    """A waiting loop reader is woken only when the bytes the frame still owes are queued."""

    async def main() -> None:
        with _loop_channel(3000) as (client, _, ch):
            buf = memoryview(bytearray(3000))
            read = asyncio.ensure_future(ch.recv_into(buf))
            await asyncio.sleep(0.01)  # the read found nothing and waits for readiness
            client.sendall(b"a" * 1000)
            await asyncio.sleep(0.05)
            assert not read.done()  # 1000 < 3000 queued: not readable yet
            client.sendall(b"b" * 2000)
            assert await asyncio.wait_for(read, 5) == 3000
            assert bytes(buf) == b"a" * 1000 + b"b" * 2000

    asyncio.run(main())


def test_end_of_stream_wakes_a_reader_below_the_low_water_mark() -> None:
    async def main() -> None:
        with _loop_channel(4096) as (client, _, ch):
            buf = memoryview(bytearray(4096))
            read = asyncio.ensure_future(ch.recv_into(buf))
            client.sendall(b"x" * 10)
            client.close()
            first = await asyncio.wait_for(read, 5)
            assert first == 10
            assert await asyncio.wait_for(ch.recv_into(buf[first:]), 5) == 0

    asyncio.run(main())
