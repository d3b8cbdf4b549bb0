"""Fuzzing a live KV port: a `KVReceiver` on 127.0.0.1 (token auth) against hostile clients.

The receiver runs on its own event-loop thread; clients are plain blocking sockets that send
garbage, truncated transfers, huge length prefixes, replayed frames and bad handshakes. After
every case: the receiver closed the connection (no hang), counted the refusal, logged it with its
reason, a valid transfer from a real `KVSender` still arrives byte-identical, and the buffer pool
is back at its baseline (nothing in use, no session left). Every wait is bounded, and polls for
what it waits for (`polling`) instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prfaas.transport.receiver as receiver_module
from polling import WAIT_TIMEOUT_S, wait_until
from prfaas.messages import KVManifest
from prfaas.transport.config import TransportConfig
from prfaas.transport.frames import (
    HEADER_BYTES,
    VERSION,
    FrameDecoder,
    FrameType,
    decode_control,
    encode_control,
    frame_crc,
    payload_header,
)
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender
from prfaas.transport.session import ReceivedTransfer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "transport"))
from transport_factories import make_manifest

T = TypeVar("T")
TOKEN = "kv-fuzz-token"
CONNECT_TIMEOUT_S = 1.0  # the receiver's handshake limit in these tests
REPLY_TIMEOUT_S = 5.0  # a client waits at most this long for the receiver to answer or close
MAX_U32 = (1 << 32) - 1
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def config(**kw: Any) -> TransportConfig:
    base: dict[str, Any] = {"token": TOKEN, "frame_bytes": 64 * 1024}
    return TransportConfig(**{**base, "connect_timeout_s": CONNECT_TIMEOUT_S, **kw})


class LiveReceiver:
    """A KVReceiver on an event-loop thread; delivered transfers are recorded, then released."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.delivered: list[str] = []  # transfer ids, in arrival order
        self._held: list[ReceivedTransfer] = []
        self.rx = KVReceiver(config(), "127.0.0.1", 0, on_transfer=self._on_transfer)
        self.call(self.rx.start())
        host, port = self.rx.address.split(":")
        self.host, self.port = host, int(port)
        self.num_valid = 0

    def _on_transfer(self, received: ReceivedTransfer) -> None:
        self.delivered.append(received.manifest.transfer_id)
        self._held.append(received)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self.call(run())

    def release_all(self) -> None:
        def release() -> None:
            while self._held:
                self._held.pop().release()

        self.on_loop(release)

    def valid_transfer_succeeds(self) -> None:
        """A real sender's transfer arrives complete and byte-identical, then is released."""
        self.num_valid += 1
        manifest, views = make_manifest([[70_000, 3000], [], [5000]], f"ok-{self.num_valid}")

        async def send() -> bool:
            async with KVSender(config(num_connections=2)) as tx:
                ack = await tx.send(self.rx.address, manifest, views)
            return ack.ok

        assert self.call(send())
        received = next(r for r in self._held if r.manifest.transfer_id == manifest.transfer_id)
        tensors = [t for layer in manifest.layers for t in layer.tensors]
        assert all(received.tensor_view(t) == v for t, v in zip(tensors, views, strict=True))
        self.release_all()

    def delivered_since(self, start: int, count: int) -> list[str]:
        """The transfer ids delivered after the first `start`, once `count` have arrived (the ACK
        goes out just before the hand-over)."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while len(self.delivered) < start + count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.delivered[start:]

    def wait_for_baseline(self, timeout_s: float = WAIT_TIMEOUT_S) -> None:
        """Every buffer back in the pool and every session forgotten (expired transfers too)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.on_loop(lambda: (self.rx.pool.in_use_bytes, len(self.rx.sessions)))
            if state == (0, 0):
                return
            time.sleep(0.05)
        raise AssertionError(f"pool in use / sessions left: {state}")

    def close(self) -> None:
        self.release_all()
        self.call(self.rx.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveReceiver]:
    receiver = LiveReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="prfaas.transport")
    return caplog


# ---- clients -------------------------------------------------------------------------------


def exchange(live: LiveReceiver, data: bytes, *, hello: str | None = None) -> bytes:
    """Connect, authenticate as session `hello` if given, send `data`, half-close; return every
    byte until the receiver closes. Fails if it does not close within REPLY_TIMEOUT_S."""
    with socket.create_connection((live.host, live.port), timeout=REPLY_TIMEOUT_S) as sock:
        if hello is not None:
            authenticate(sock, hello)
        ignore_reset(lambda: sock.sendall(data))
        ignore_reset(lambda: sock.shutdown(socket.SHUT_WR))
        return read_until_eof(sock)


def fresh_session() -> str:
    """A new sender session id: its tags have never been used on this receiver."""
    return f"fuzz-{uuid.uuid4().hex}"


def authenticate(sock: socket.socket, session: str) -> None:
    sock.sendall(hello_frame(session, TOKEN))
    assert [kind for kind, _ in replies(recv_frames(sock, 1))] == [FrameType.HELLO_OK]


def ignore_reset(fn: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):  # the receiver closed first: the reply says why
        fn()


def read_until_eof(sock: socket.socket) -> bytes:
    out = b""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError("the receiver neither answered nor closed the connection")


def recv_frames(sock: socket.socket, count: int) -> bytes:
    """The next `count` whole frames the receiver sends."""
    out = b""
    for _ in range(count):
        head = recv_exactly(sock, HEADER_BYTES)
        length = int.from_bytes(head[24:28], "little")
        out += head + recv_exactly(sock, length)
    return out


def recv_exactly(sock: socket.socket, num_bytes: int) -> bytes:
    out = b""
    while len(out) < num_bytes:
        chunk = sock.recv(num_bytes - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def replies(data: bytes) -> list[tuple[FrameType, dict[str, Any]]]:
    """The frames the receiver sent back (ERROR carries a reason)."""
    out = []
    for frame in FrameDecoder(lambda _: None, 0, max_control_bytes=1 << 20).feed(data):
        body = decode_control(frame.body) if frame.header.length else {}
        out.append((frame.header.frame_type, body))
    return out


def hello_frame(session: str, token: object, conn_index: object = 0) -> bytes:
    return encode_control(
        FrameType.HELLO, 0, {"session": session, "conn_index": conn_index, "token": token}
    )


def raw_header(frame_type: int, length: int, tag: int = 1) -> bytes:
    """A header with a correct CRC declaring any body length."""
    head = struct.pack("<4sBBHQQIHHI", b"PRFK", VERSION, frame_type, 0, tag, 0, length, 0, 0, 0)
    return head + struct.pack("<I", frame_crc(head))


def transfer_frames(
    manifest: KVManifest, views: list[memoryview], tag: int, deadline_s: float
) -> list[bytes]:
    """A complete single-connection transfer as a sender would write it."""
    begin = {
        "transfer_id": manifest.transfer_id,
        "req_id": manifest.req_id,
        "deadline_s": deadline_s,
    }
    frames = [encode_control(FrameType.BEGIN, tag, begin)]
    pos = 0
    for layer in manifest.layers:
        frames.append(encode_control(FrameType.LAYER, tag, layer.to_dict()))
        for i, t in enumerate(layer.tensors):
            view = views[pos]
            pos += 1
            frames.append(
                payload_header(tag, layer.layer_index, i, t.offset_bytes, view) + bytes(view)
            )
    end = {"manifest": manifest.to_dict(), "conns": [0]}
    frames.append(encode_control(FrameType.END, tag, end))
    return frames


def refusals(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if "refused connection from" in r.getMessage()]


def protocol_errors(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if "protocol error:" in r.getMessage()]


# ---- unauthenticated garbage ---------------------------------------------------------------

GARBAGE_EXAMPLES = 60


@settings(FUZZ, max_examples=GARBAGE_EXAMPLES)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=4096),
        st.binary(max_size=64).map(lambda b: b"PRFK" + bytes([VERSION]) + b),
        st.sampled_from(
            [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00" + bytes(60)]
        ),
    )
)
def test_garbage_before_authentication_is_refused_logged_and_counted(
    live: LiveReceiver, logs: pytest.LogCaptureFixture, data: bytes
) -> None:
    logs.clear()
    before = live.rx.num_rejected_connections
    reply = exchange(live, data)
    assert all(kind is FrameType.ERROR and body.get("reason") for kind, body in replies(reply))
    counted = lambda: live.rx.num_rejected_connections != before  # noqa: E731
    wait_until(counted, WAIT_TIMEOUT_S, "the refusal to be counted")
    assert live.rx.num_rejected_connections == before + 1
    assert len(refusals(logs)) == 1 and refusals(logs)[0].split(": ", 1)[1]


# ---- bad handshakes ------------------------------------------------------------------------


def nested_hello() -> bytes:
    """A HELLO of about 4 KiB with the right token and JSON nested 1900 deep."""
    body = b'{"token": "' + TOKEN.encode() + b'", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}"
    head = struct.pack(
        "<4sBBHQQIHHI", b"PRFK", VERSION, FrameType.HELLO, 0, 0, 0, len(body), 0, 0, frame_crc(body)
    )
    return head + struct.pack("<I", frame_crc(head)) + body


def bad_crc(frame: bytes) -> bytes:
    damaged = bytearray(frame)
    damaged[HEADER_BYTES - 1] ^= 0xFF
    return bytes(damaged)


HANDSHAKES = {
    "no token": (encode_control(FrameType.HELLO, 0, {"session": "s", "conn_index": 0}), "token"),
    "wrong token": (hello_frame("s", "not-the-token"), "bad or missing token"),
    "empty token": (hello_frame("s", ""), "bad or missing token"),
    "non-ASCII token": (hello_frame("s", "jeton-é-€"), "bad or missing token"),
    "lone surrogate token": (hello_frame("s", "\ud800"), "bad or missing token"),
    "token as a number": (hello_frame("s", 12345), "bad or missing token"),
    "token as a list": (hello_frame("s", [TOKEN]), "bad or missing token"),
    "token prefix": (hello_frame("s", TOKEN[:-1]), "bad or missing token"),
    "no session": (hello_frame("", TOKEN), "session id"),
    "negative conn_index": (hello_frame("s", TOKEN, -1), "conn_index"),
    "nested HELLO": (nested_hello(), "not JSON"),
    "HELLO over 4 KiB": (raw_header(FrameType.HELLO, 4097), "exceeds the limit"),
    "HELLO of 4 GiB": (raw_header(FrameType.HELLO, MAX_U32), "exceeds the limit"),
    "BEGIN first": (encode_control(FrameType.BEGIN, 1, {"transfer_id": "t"}), "expected HELLO"),
    "empty PAYLOAD first": (raw_header(FrameType.PAYLOAD, 0), "expected HELLO"),
    "PAYLOAD first": (raw_header(FrameType.PAYLOAD, 16) + bytes(16), "PAYLOAD body of 16 bytes"),
    "half a header": (hello_frame("s", TOKEN)[:20], "peer closed"),
    "bad header CRC": (bad_crc(hello_frame("s", TOKEN)), "header checksum"),
}


@pytest.mark.parametrize("case", sorted(HANDSHAKES))
def test_bad_handshakes_are_refused_with_their_reason(
    live: LiveReceiver, logs: pytest.LogCaptureFixture, case: str
) -> None:
    data, reason = HANDSHAKES[case]
    before = live.rx.num_rejected_connections
    reply = exchange(live, data)
    errors = [body["reason"] for kind, body in replies(reply) if kind is FrameType.ERROR]
    assert errors and reason in errors[0], (errors, reason)
    assert live.rx.num_rejected_connections == before + 1
    assert any(reason in line for line in refusals(logs)), refusals(logs)
    assert TOKEN not in logs.text  # the secret is never logged, not even when a peer sends it


def test_silent_and_slow_handshakes_are_cut_at_the_connect_timeout(
    live: LiveReceiver, logs: pytest.LogCaptureFixture
) -> None:
    before = live.rx.num_rejected_connections
    t0 = time.monotonic()
    address = (live.host, live.port)
    with socket.create_connection(address) as silent, socket.create_connection(address) as slow:
        for byte in hello_frame("s", TOKEN)[:30]:  # a byte per 50 ms: no whole HELLO in time
            ignore_reset(lambda b=byte: slow.sendall(bytes([b])))
            time.sleep(0.05)
        assert replies(read_until_eof(silent))[0][0] is FrameType.ERROR
        read_until_eof(slow)
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + REPLY_TIMEOUT_S
    assert live.rx.num_rejected_connections == before + 2
    assert sum("Timeout" in line for line in refusals(logs)) == 2


def test_pending_handshakes_are_capped(
    live: LiveReceiver, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver_module, "_MAX_PENDING_HANDSHAKES", 4)
    idle = [socket.create_connection((live.host, live.port)) for _ in range(4)]
    try:
        pending = lambda: live.on_loop(lambda: live.rx._num_pending_handshakes)  # noqa: E731
        wait_until(lambda: pending() == 4, WAIT_TIMEOUT_S, "all four to be authenticating")
        t0 = time.monotonic()
        with socket.create_connection((live.host, live.port), timeout=REPLY_TIMEOUT_S) as fifth:
            assert read_until_eof(fifth) == b""  # closed at once, before any timeout
        assert time.monotonic() - t0 < CONNECT_TIMEOUT_S / 2
        assert any("already authenticating" in line for line in refusals(logs))
    finally:
        for sock in idle:
            sock.close()
    live.valid_transfer_succeeds()
    live.wait_for_baseline()


def test_failed_accepts_do_not_stop_the_listener(
    live: LiveReceiver, logs: pytest.LogCaptureFixture
) -> None:
    real = live.loop.sock_accept
    failures = [OSError(errno.EMFILE, "Too many open files")] * 3

    async def flaky(sock: socket.socket) -> Any:
        if failures:
            raise failures.pop()
        return await real(sock)

    live.on_loop(lambda: setattr(live.loop, "sock_accept", flaky))
    try:
        live.valid_transfer_succeeds()
    finally:
        live.on_loop(lambda: delattr(live.loop, "sock_accept"))
    assert sum("accept failed" in r.getMessage() for r in logs.records) == 3


# ---- authenticated garbage, truncation, huge lengths ----------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
control_frames = st.builds(
    lambda kind, tag, body, deadline_s: encode_control(
        kind, tag, {**body, "deadline_s": deadline_s} if kind is FrameType.BEGIN else body
    ),
    st.sampled_from(list(FrameType)),
    st.integers(0, 3),
    st.dictionaries(
        st.sampled_from(["transfer_id", "req_id", "conns", "manifest", "x"]), json_values
    ),
    st.floats(0.05, 0.5),  # transfers opened by the fuzzer expire quickly
)
AUTH_EXAMPLES = 60


@settings(FUZZ, max_examples=AUTH_EXAMPLES)
@given(st.lists(st.one_of(control_frames, st.binary(max_size=256)), min_size=1, max_size=6))
def test_garbage_after_authentication_closes_only_that_connection(
    live: LiveReceiver, logs: pytest.LogCaptureFixture, parts: list[bytes]
) -> None:
    logs.clear()
    reply = exchange(live, b"".join(parts), hello=fresh_session())
    for kind, body in replies(reply):
        assert kind in (FrameType.ERROR, FrameType.ACK, FrameType.NACK), kind
        if kind is FrameType.ERROR:
            assert body["reason"]
    assert not [r for r in logs.records if r.levelno >= logging.ERROR], logs.text


def test_after_authenticated_garbage_the_pool_returns_to_baseline(live: LiveReceiver) -> None:
    live.wait_for_baseline()
    live.valid_transfer_succeeds()
    live.wait_for_baseline()


TRUNCATION_EXAMPLES = 20


@settings(FUZZ, max_examples=TRUNCATION_EXAMPLES)
@given(st.data())
def test_truncated_transfers_are_never_delivered_and_expire(
    live: LiveReceiver, data: st.DataObject
) -> None:
    manifest, views = make_manifest([[20_000], [5000, 100]], transfer_id="cut")
    stream = b"".join(transfer_frames(manifest, views, tag=1, deadline_s=0.3))
    cut = data.draw(st.integers(1, len(stream) - 1), label="cut")
    before = len(live.delivered)
    exchange(live, stream[:cut], hello=fresh_session())
    live.wait_for_baseline()  # the cut transfer expired after 0.3 s and freed its buffers
    assert len(live.delivered) == before


def test_huge_length_prefixes_allocate_nothing(
    live: LiveReceiver, logs: pytest.LogCaptureFixture
) -> None:
    cases = [
        (raw_header(FrameType.PAYLOAD, MAX_U32), "exceeds the limit"),
        (raw_header(FrameType.BEGIN, MAX_U32), "exceeds the limit"),
        (raw_header(FrameType.END, (16 << 20) + 1), "over"),
        (raw_header(FrameType.PAYLOAD, (64 << 20) + 1), "exceeds the limit"),
    ]
    before = live.rx.num_protocol_errors
    tracemalloc.start()
    try:
        for data, reason in cases:
            reply = exchange(live, data + bytes(1024), hello=fresh_session())
            errors = [body["reason"] for kind, body in replies(reply) if kind is FrameType.ERROR]
            assert errors and reason in errors[0], errors
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # nothing near the declared sizes (4 GiB, 16 MiB, 64 MiB)
    assert live.rx.num_protocol_errors == before + len(cases)
    assert len(protocol_errors(logs)) == len(cases)
    live.wait_for_baseline()


# ---- replays -------------------------------------------------------------------------------


def test_replayed_frames_are_never_delivered_twice_by_a_session(
    live: LiveReceiver, logs: pytest.LogCaptureFixture
) -> None:
    manifest, views = make_manifest([[30_000], [2000]], transfer_id="replayed")
    frames = transfer_frames(manifest, views, tag=5, deadline_s=2.0)
    before = len(live.delivered)

    def session_send(session: str, parts: list[bytes], expect_ack: bool) -> None:
        with socket.create_connection((live.host, live.port), timeout=REPLY_TIMEOUT_S) as sock:
            authenticate(sock, session)
            sock.sendall(b"".join(parts))
            if expect_ack:
                kinds = [kind for kind, _ in replies(recv_frames(sock, 1))]
                assert kinds == [FrameType.ACK]
            else:  # the receiver closes once it has handled every frame sent before the half-close,
                # so a (wrong) delivery has happened by then; it may close first (replay refused)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                read_until_eof(sock)

    session_send("sess-a", frames, expect_ack=True)
    assert live.delivered_since(before, 1) == ["replayed"]
    session_send("sess-a", frames, expect_ack=False)  # the whole transfer again, same session
    session_send("sess-b", frames[2:], expect_ack=False)  # its payload and END, other session
    assert live.delivered[before:] == ["replayed"]
    assert any("replayed or late" in r.getMessage() for r in logs.records)
    live.release_all()
    live.wait_for_baseline()
    live.valid_transfer_succeeds()  # a later transfer arrived, and the replay still did not
    assert live.delivered[before:].count("replayed") == 1


def test_a_full_replay_on_a_new_session_is_a_new_transfer_from_a_token_holder(
    live: LiveReceiver,
) -> None:
    """Not a defense: whoever holds the token may send any transfer (docs/security.md). Over
    plain TCP the token crosses in clear, so only TLS keeps it from an on-path observer."""
    manifest, views = make_manifest([[4000]], transfer_id="again")
    frames = transfer_frames(manifest, views, tag=1, deadline_s=2.0)
    before = len(live.delivered)
    for session in ("new-1", "new-2"):
        with socket.create_connection((live.host, live.port), timeout=REPLY_TIMEOUT_S) as sock:
            authenticate(sock, session)
            sock.sendall(b"".join(frames))
            assert [kind for kind, _ in replies(recv_frames(sock, 1))] == [FrameType.ACK]
    assert live.delivered_since(before, 2) == ["again", "again"]
    live.release_all()
    live.wait_for_baseline()
