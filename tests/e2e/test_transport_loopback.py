"""KV transport end to end over 127.0.0.1: striping, resume after cut connections, deadlines,
authentication (token and mutual TLS), metrics. Every wait is bounded, and polls for what it
waits for (`polling.until`) instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import prfaas.transport.receiver as receiver_module
from polling import WAIT_TIMEOUT_S, until
from prfaas.bench.shaper import LinkShape, ShapedProxy
from prfaas.messages import KVManifest
from prfaas.transport.config import TransportConfig
from prfaas.transport.frames import (
    HEADER_BYTES,
    FrameType,
    encode_control,
    parse_header,
    payload_header,
)
from prfaas.transport.linkstats import TransportMetrics
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender
from prfaas.transport.session import ReceivedTransfer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "transport"))
from transport_factories import make_manifest, views_by_layer

TOKEN = "test-token"
MIB = 1 << 20


def run(coro_fn: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout_s):
            return await coro_fn()

    return asyncio.run(bounded())


def config(**kw: Any) -> TransportConfig:
    base: dict[str, Any] = {"token": TOKEN, "frame_bytes": 64 * 1024, "connect_timeout_s": 5.0}
    return TransportConfig(**{**base, **kw})


def assert_identical(manifest: KVManifest, views: list[memoryview], got: ReceivedTransfer) -> None:
    tensors = [t for layer in manifest.layers for t in layer.tensors]
    for entry, view in zip(tensors, views, strict=True):
        assert got.tensor_view(entry) == view, entry.name
    assert got.manifest == manifest


HYBRID = [[4096, 65536], [300_000, 300_000], [], [4096, 65536], [1_000_000, 1_000_000]]


@pytest.mark.parametrize("io_threads", [False, True])
@pytest.mark.parametrize("num_connections", [1, 4])
def test_layer_by_layer_transfer_is_byte_identical(num_connections: int, io_threads: bool) -> None:
    manifest, views = make_manifest(HYBRID)

    async def main() -> None:
        cfg = config(num_connections=num_connections, io_threads=io_threads)
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            t = await tx.begin(rx.address, manifest.transfer_id, manifest.req_id)
            for layer, lv in zip(manifest.layers, views_by_layer(manifest, views), strict=True):
                await t.send_layer(layer, lv)
                await asyncio.sleep(0.001)  # the engine computing the next layer
            ack = await t.finish(manifest)
            assert ack.ok, ack.error
            got = await rx.get()
            assert_identical(manifest, views, got)
            got.release()
            assert rx.pool.in_use_bytes == 0

    run(main)


def test_send_layer_returns_while_the_layer_is_still_on_the_wire() -> None:
    """Layer i must not wait for its bytes to be sent: the engine computes layer i+1 meanwhile."""
    manifest, views = make_manifest([[2 * MIB], [2 * MIB]])

    async def main() -> None:
        cfg = config(num_connections=2)
        async with KVReceiver(cfg) as rx:
            host, port = rx.address.split(":")
            shape = LinkShape(rate_bytes_per_s=8 * MIB)
            async with ShapedProxy(host, int(port), shape) as proxy, KVSender(cfg) as tx:
                t = await tx.begin(proxy.address, "t1", "r1")
                per_layer = views_by_layer(manifest, views)
                await t.send_layer(manifest.layers[0], per_layer[0])
                assert t.num_pending > 0  # still queued or in flight
                await t.send_layer(manifest.layers[1], per_layer[1])
                assert (await t.finish(manifest)).ok
                assert_identical(manifest, views, await rx.get())

    run(main)


@pytest.mark.parametrize("io_threads", [False, True])
def test_one_shot_send_many_transfers_reuse_buffers(io_threads: bool) -> None:
    async def main() -> None:
        cfg = config(num_connections=2, io_threads=io_threads)
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            for i in range(4):
                manifest, views = make_manifest(HYBRID, transfer_id=f"t{i}", seed=i)
                ack = await tx.send(rx.address, manifest, views)
                assert ack.ok and ack.transfer_id == f"t{i}"
                got = await rx.get()
                assert_identical(manifest, views, got)
                got.release()
            assert rx.pool.num_allocations == 4  # one per layer with tensors, then reused

    run(main)


@pytest.mark.parametrize("io_threads", [False, True])
def test_resume_after_every_connection_is_cut_mid_transfer(io_threads: bool) -> None:
    manifest, views = make_manifest([[2 * MIB, 2 * MIB]] * 4)

    async def main() -> None:
        # small kernel buffers bound what a cut can lose in flight
        cfg = config(num_connections=3, socket_buffer_bytes=128 * 1024, io_threads=io_threads)
        async with KVReceiver(cfg) as rx:
            host, port = rx.address.split(":")
            shape = LinkShape(rate_bytes_per_s=40 * MIB)
            async with ShapedProxy(host, int(port), shape) as proxy, KVSender(cfg) as tx:
                await tx.connect(proxy.address)
                proxy.cut_after_bytes = manifest.total_bytes // 2
                t = await tx.begin(proxy.address, "t1", "r1")
                for layer, lv in zip(manifest.layers, views_by_layer(manifest, views), strict=True):
                    await t.send_layer(layer, lv)
                ack = await t.finish(manifest)
                assert ack.ok, ack.error
                got = await rx.get()
                assert_identical(manifest, views, got)
                # completed ranges are not sent again: resends stay well under the total
                assert 0 < t.num_resent_bytes < manifest.total_bytes // 2

    run(main)


def test_receiver_frees_an_abandoned_transfer_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender never finishes: at the deadline the receiver drops the transfer. Its clock
    stands still until the first layer is in, then jumps past the deadline (a loaded machine
    cannot make the deadline pass before the layer is seen)."""
    clock = _ReceiverClock()
    monkeypatch.setattr(receiver_module, "time", clock)
    manifest, views = make_manifest([[MIB], [MIB]])

    async def main() -> None:
        cfg = config(num_connections=1)
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            t = await tx.begin(rx.address, "t1", "r1", deadline_s=0.3)
            await t.send_layer(manifest.layers[0], views_by_layer(manifest, views)[0])
            await until(lambda: rx.pool.in_use_bytes > 0, WAIT_TIMEOUT_S, "the first layer")
            clock.now += 0.3 + 0.01
            await until(lambda: rx.pool.in_use_bytes == 0, WAIT_TIMEOUT_S, "the expiry")
            await until(lambda: bool(rx.failures), WAIT_TIMEOUT_S, "the failure record")
            assert rx.failures == [("t1", "deadline exceeded")]

    run(main, timeout_s=2 * WAIT_TIMEOUT_S)


def test_sender_deadline_on_a_too_slow_link() -> None:
    manifest, views = make_manifest([[4 * MIB]])

    async def main() -> None:
        cfg = config(num_connections=1)
        async with KVReceiver(cfg) as rx:
            host, port = rx.address.split(":")
            async with (
                ShapedProxy(host, int(port), LinkShape(rate_bytes_per_s=4 * MIB)) as proxy,
                KVSender(cfg) as tx,
            ):
                t = await tx.begin(proxy.address, "t1", "r1", deadline_s=0.3)
                await t.send_layer(manifest.layers[0], views)
                ack = await t.finish(manifest)
                assert not ack.ok and ack.error == "deadline exceeded"

    run(main)


def test_wrong_token_and_garbage_are_refused_and_receiver_keeps_serving() -> None:
    manifest, views = make_manifest([[1000]])

    async def main() -> None:
        async with KVReceiver(config()) as rx:
            async with KVSender(config(token="wrong", num_connections=1)) as bad:
                with pytest.raises(ConnectionRefusedError, match="bad or missing token"):
                    await bad.connect(rx.address)
            host, port = rx.address.split(":")
            for junk in (
                b"GET / HTTP/1.1\r\n\r\n" + bytes(64),
                encode_control(FrameType.BEGIN, 1, {}),
            ):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(junk)
                await writer.drain()
                reply = await reader.read(4096)  # an ERROR frame, then EOF
                assert b"reason" in reply
                writer.close()
            assert rx.num_rejected_connections == 3
            async with KVSender(config()) as good:
                assert (await good.send(rx.address, manifest, views)).ok

    run(main)


def test_receiver_without_any_authentication_is_refused() -> None:
    with pytest.raises(ValueError, match="TLS certificates or a shared token"):
        KVReceiver(TransportConfig())


def test_metrics_and_link_stats_after_a_transfer() -> None:
    manifest, views = make_manifest(HYBRID)
    registry = CollectorRegistry()

    async def main() -> None:
        cfg = config(num_connections=2)
        async with KVReceiver(cfg) as rx, KVSender(cfg, TransportMetrics(registry)) as tx:
            assert (await tx.send(rx.address, manifest, views)).ok
            (await rx.get()).release()
            view = tx.link_stats(rx.address)
            assert view is not None and view.num_connections == 2 and view.num_transfers == 1
            # the backlog includes the sockets' unacknowledged bytes: the last END frames may
            # wait for a delayed ACK for a moment, then nothing is left
            deadline = asyncio.get_running_loop().time() + 30.0
            while True:
                policy_view = tx.link_view(rx.address, capacity_bytes_per_s=1e9)
                assert policy_view is not None and policy_view.backlog_bytes < 64 << 10
                if policy_view.backlog_bytes == 0:
                    break
                assert asyncio.get_running_loop().time() < deadline, policy_view
                await asyncio.sleep(0.01)
            assert view.goodput_bytes_per_s > 0 and view.rtt_s > 0
            labels = {"dest": rx.address}
            got = registry.get_sample_value("prfaas:kv_transfer_bytes_total", labels)
            assert got == manifest.total_bytes
            assert registry.get_sample_value("prfaas:kv_transfer_seconds_count", labels) == 1
            assert registry.get_sample_value("prfaas:link_rtt_seconds", labels) == view.rtt_s
            rate = registry.get_sample_value("prfaas:link_delivery_rate_bytes_per_second", labels)
            assert rate is not None and rate > 0

    run(main)


def test_shaper_limits_the_rate() -> None:
    async def main() -> float:
        got = bytearray()
        done = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1 << 16):
                got.extend(data)
            done.set()
            writer.close()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        shape = LinkShape(rate_bytes_per_s=8 * MIB, latency_s=0.02, jitter_s=0.01)
        async with server, ShapedProxy("127.0.0.1", port, shape) as proxy:
            host, pport = proxy.address.split(":")
            _, writer = await asyncio.open_connection(host, int(pport))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            writer.write(bytes(2 * MIB))
            await writer.drain()
            writer.write_eof()
            await done.wait()
            writer.close()
            assert len(got) == 2 * MIB
            return loop.time() - t0

    elapsed_s = run(main)
    # 2 MiB through an 8 MiB/s bucket with a 128 KiB burst cannot finish in under ~0.23 s
    assert elapsed_s > 0.2


# ---------------- mutual TLS ----------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(key), "-out", str(crt), "-days", "2",
             "-subj", f"/CN={name}")  # fmt: skip
    return crt, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path]) -> tuple[str, str]:
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(crt), "-days", "2")  # fmt: skip
    return str(crt), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = _make_ca(d, "ca"), _make_ca(d, "rogue")
    return {
        "ca": str(ca[0]),
        "server": _make_leaf(d, "decode", ca),
        "client": _make_leaf(d, "prefill", ca),
        "rogue": _make_leaf(d, "intruder", rogue_ca),
    }


def _tls(pki: dict[str, Any], who: str, **kw: Any) -> TransportConfig:
    cert, key = pki[who]
    return TransportConfig(
        tls_cert=cert, tls_key=key, tls_ca=pki["ca"], connect_timeout_s=1.0, **kw
    )


def test_mutual_tls_transfer(pki: dict[str, Any]) -> None:
    manifest, views = make_manifest(HYBRID)

    async def main() -> None:
        async with KVReceiver(_tls(pki, "server")) as rx, KVSender(_tls(pki, "client")) as tx:
            assert (await tx.send(rx.address, manifest, views)).ok
            got = await rx.get()
            assert_identical(manifest, views, got)

    run(main)


def test_tls_without_payload_checksums_needs_both_sides_to_agree(pki: dict[str, Any]) -> None:
    manifest, views = make_manifest(HYBRID)
    no_crc = {"payload_checksum": False}

    async def main() -> None:
        async with (
            KVReceiver(_tls(pki, "server", **no_crc)) as rx,
            KVSender(_tls(pki, "client", **no_crc)) as tx,
        ):
            assert (await tx.send(rx.address, manifest, views)).ok
            assert_identical(manifest, views, await rx.get())
        async with (
            KVReceiver(_tls(pki, "server")) as rx,
            KVSender(_tls(pki, "client", **no_crc)) as tx,
        ):
            t = await tx.begin(rx.address, "t2", "r2", deadline_s=0.5)
            for layer, lv in zip(manifest.layers, views_by_layer(manifest, views), strict=True):
                await t.send_layer(layer, lv)
            assert not (await t.finish(manifest)).ok  # receiver refuses unchecked payload

    run(main)


def test_tls_peer_with_a_certificate_from_another_ca_is_refused(pki: dict[str, Any]) -> None:
    async def main() -> None:
        async with KVReceiver(_tls(pki, "server")) as rx:
            async with KVSender(_tls(pki, "rogue")) as tx:
                with pytest.raises((ConnectionError, OSError)):
                    await tx.connect(rx.address)
            refused = lambda: rx.num_rejected_connections >= 1  # noqa: E731
            await until(refused, WAIT_TIMEOUT_S, "the receiver to count the refusal")

    run(main)


def test_plain_client_cannot_talk_to_a_tls_receiver(pki: dict[str, Any]) -> None:
    def plain_hello(host: str, port: int) -> bytes:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(encode_control(FrameType.HELLO, 0, {"session": "x", "conn_index": 0}))
            try:
                return sock.recv(4096)
            except OSError:
                return b""

    async def main() -> None:
        async with KVReceiver(_tls(pki, "server")) as rx:
            host, port = rx.address.split(":")
            data = await asyncio.to_thread(plain_hello, host, int(port))  # loop stays free
            assert not data.startswith(b"PRFK")  # never a HELLO_OK, only a TLS alert or EOF
            refused = lambda: rx.num_rejected_connections >= 1  # noqa: E731
            await until(refused, WAIT_TIMEOUT_S, "the receiver to count the refusal")
            assert rx.num_rejected_connections == 1

    run(main)


def test_sender_ignores_stale_nacks_and_duplicate_acks() -> None:
    """A scripted receiver answers each END with a NACK for an old round, then the ACK twice."""
    from prfaas.messages import TransferAck
    from prfaas.transport.frames import FrameDecoder, decode_control

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(lambda h: None, 64 * MIB, 16 * MIB)
        while data := await reader.read(1 << 16):
            for frame in decoder.feed(data):
                h = frame.header
                if h.frame_type is FrameType.HELLO:
                    writer.write(encode_control(FrameType.HELLO_OK, 0, {}))
                elif h.frame_type is FrameType.END:
                    tid = decode_control(frame.body)["manifest"]["transfer_id"]
                    ack = TransferAck(tid, ok=True).to_dict()
                    stale = {"ranges": [[0, 10]]}
                    writer.write(encode_control(FrameType.NACK, h.tag, stale, offset=h.offset + 7))
                    writer.write(encode_control(FrameType.ACK, h.tag, ack) * 2)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(scripted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, KVSender(config(num_connections=1)) as tx:
            for i in range(2):
                manifest, views = make_manifest([[1000]], transfer_id=f"t{i}")
                t = await tx.begin(f"127.0.0.1:{port}", manifest.transfer_id, manifest.req_id)
                await t.send_layer(manifest.layers[0], views)
                ack = await t.finish(manifest)
                assert ack.ok and ack.transfer_id == f"t{i}"
                assert t.num_resent_bytes == 0  # the NACK for another round was not acted on

    run(main)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _ReceiverClock:
    """Stands in for the `time` module of `prfaas.transport.receiver`: `monotonic()` moves only
    when the test advances it, so a receiver deadline passes exactly when the test says."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("io_threads", [False, True])
def test_deadline_expiry_gives_the_memory_back_to_the_kernel(
    io_threads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that dies after sending all 64 MiB but before END: at the deadline the receiver
    drops the transfer and its pages go back to the kernel (MADV_DONTNEED), not only to the pool.

    The receiver's clock stands still until every byte has demonstrably arrived, then jumps past
    the deadline, so a slow (loaded) machine cannot make the deadline fire mid-transfer.
    """
    clock = _ReceiverClock()
    monkeypatch.setattr(receiver_module, "time", clock)
    manifest, views = make_manifest([[16 * MIB]] * 4, seed=1)
    deadline_s = 0.5

    async def main() -> None:
        cfg = config(num_connections=2, io_threads=io_threads)
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            gc.collect()  # earlier tests' garbage freed now, not while the payload arrives
            rss_before = _rss_bytes()
            t = await tx.begin(rx.address, "t1", "r1", deadline_s=deadline_s)
            for layer, lv in zip(manifest.layers, views_by_layer(manifest, views), strict=True):
                await t.send_layer(layer, lv)  # never finished: the sender "dies" before END

            def covered_bytes() -> int:
                inbound = [x for s in rx.sessions.values() for x in s.transfers.values()]
                return sum(x.verified.covered_bytes for x in inbound)

            await until(lambda: covered_bytes() == manifest.total_bytes, 30.0, "the payload")
            assert rx.pool.in_use_bytes == manifest.total_bytes
            assert rx.failures == []
            rss_full = _rss_bytes()
            assert rss_full - rss_before > 48 * MIB  # the payload really is resident

            clock.now += deadline_s + 0.01
            await until(lambda: rx.pool.in_use_bytes == 0, 10.0, "the expiry to free the pool")
            await until(lambda: bool(rx.failures), 10.0, "the expiry to be recorded")
            assert rx.failures == [("t1", "deadline exceeded")]
            assert all(not s.transfers for s in rx.sessions.values())
            assert _rss_bytes() - rss_before < 16 * MIB  # given back to the kernel

    run(main, timeout_s=60.0)


@pytest.mark.parametrize("io_threads", [False, True])
def test_a_buffer_dropped_mid_write_returns_to_the_pool_when_the_sender_leaves(
    io_threads: bool,
) -> None:
    """Connection 0 is in the middle of a payload body when connection 1 cancels the transfer;
    then the sender goes away. The buffer could not be freed while it was being written, and
    must go back to the pool once the last connection has closed and the session is forgotten."""
    manifest, views = make_manifest([[4 * MIB]])
    body = views[0]

    async def main() -> None:
        async with KVReceiver(config(io_threads=io_threads)) as rx:
            host, port = rx.address.split(":")
            writers = []
            for conn_index in range(2):
                reader, writer = await asyncio.open_connection(host, int(port))
                hello = {"session": "s1", "conn_index": conn_index, "token": TOKEN}
                writer.write(encode_control(FrameType.HELLO, 0, hello))
                await writer.drain()
                reply = await reader.readexactly(HEADER_BYTES)
                assert parse_header(reply, 1 << 16).frame_type is FrameType.HELLO_OK
                await reader.readexactly(parse_header(reply, 1 << 16).length)
                writers.append(writer)
            begin = {"transfer_id": "t1", "req_id": "r1", "deadline_s": 30.0}
            writers[0].write(encode_control(FrameType.BEGIN, 1, begin))
            writers[0].write(encode_control(FrameType.LAYER, 1, manifest.layers[0].to_dict()))
            writers[0].write(payload_header(1, 0, 0, 0, body) + bytes(body[:MIB]))  # 1 of 4 MiB
            await writers[0].drain()

            def first_mib_written() -> bool:
                session = rx.sessions.get("s1")
                inbound = session.transfers.get(1) if session is not None else None
                slot = inbound.layers.get(0) if inbound is not None else None
                buf = slot.buffer if slot is not None else None
                return buf is not None and buf.view[:MIB] == body[:MIB]

            await until(first_mib_written, 30.0, "the first MiB of the body")
            writers[1].write(encode_control(FrameType.CANCEL, 1, {}))
            await writers[1].drain()
            await until(lambda: bool(rx.failures), 10.0, "the cancel")
            assert rx.failures == [("t1", "cancelled by sender")]
            assert rx.pool.in_use_bytes == 4 * MIB  # still being written: not reusable yet
            for writer in writers:
                writer.close()
            await until(lambda: not rx.sessions, 10.0, "the session to be forgotten")
            assert rx.pool.in_use_bytes == 0

    run(main, timeout_s=60.0)


def test_full_receive_pool_holds_the_sender_back_until_buffers_are_released() -> None:
    first, first_views = make_manifest([[2 * MIB]], transfer_id="t1")
    second, second_views = make_manifest([[2 * MIB]], transfer_id="t2", seed=2)

    async def main() -> None:
        cfg = config(num_connections=1, max_buffer_bytes=3 * MIB)  # room for one transfer
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            assert (await tx.send(rx.address, first, first_views)).ok
            held = await rx.get()  # the consumer keeps transfer 1's buffers for a while
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, held.release)
            t0 = loop.time()
            ack = await tx.send(rx.address, second, second_views)
            assert ack.ok, ack.error
            assert loop.time() - t0 >= 0.25  # it waited for the release instead of failing
            assert_identical(second, second_views, await rx.get())

    run(main)


def test_full_receive_pool_refuses_at_the_deadline_if_nothing_is_released() -> None:
    first, first_views = make_manifest([[2 * MIB]], transfer_id="t1")
    second, second_views = make_manifest([[2 * MIB]], transfer_id="t2", seed=2)

    async def main() -> None:
        cfg = config(num_connections=1, max_buffer_bytes=3 * MIB, deadline_s=0.4)
        async with KVReceiver(cfg) as rx, KVSender(cfg) as tx:
            assert (await tx.send(rx.address, first, first_views)).ok
            _held = await rx.get()
            ack = await tx.send(rx.address, second, second_views)
            assert not ack.ok
            refused = lambda: any(  # noqa: E731
                "out of buffer memory" in r or "deadline" in r for _, r in rx.failures
            )
            await until(refused, WAIT_TIMEOUT_S, "the receiver to record why it refused")

    run(main)


def test_bench_reports_goodput_and_cpu_per_transfer_for_both_modes() -> None:
    from prfaas.bench.transport import BenchSpec, run_bench
    from prfaas.types import MIB

    r = run_bench(BenchSpec(8 * MIB, connections=2, repeats=2, rounds=1))
    assert len(r["goodput_gbps_runs"]) == len(r["raw_socket_gbps_runs"]) == 2
    assert r["ratio"] == r["goodput_gbps"] / r["raw_socket_gbps"]
    for key in ("tx_cpu_s_per_transfer", "rx_cpu_s_per_transfer",
                "raw_tx_cpu_s_per_transfer", "raw_rx_cpu_s_per_transfer"):  # fmt: skip
        assert 0 < r[key] < 10, key


def test_on_failure_hears_every_failed_transfer() -> None:
    """A transfer the sender cancels is reported to `on_failure` with its id and reason."""
    manifest, views = make_manifest([[2 * MIB], [2 * MIB]])
    heard: list[tuple[str, str]] = []

    async def main() -> None:
        cfg = config(num_connections=1)
        on_failure = lambda tid, reason: heard.append((tid, reason))  # noqa: E731
        async with KVReceiver(cfg, on_failure=on_failure) as rx, KVSender(cfg) as tx:
            t = await tx.begin(rx.address, "t-cancel", "r1")
            await t.send_layer(manifest.layers[0], views_by_layer(manifest, views)[0])
            begun = lambda: any(s.transfers for s in rx.sessions.values())  # noqa: E731
            await until(begun, 10.0, "the receiver to hear of the transfer")
            await t.cancel("client went away")
            await until(lambda: bool(heard), 10.0, "the failure callback")
            assert heard == [("t-cancel", "cancelled by sender")] == rx.failures

    run(main)
