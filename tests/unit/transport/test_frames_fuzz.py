"""Fuzzing the KV wire parser: the frame decoder, control bodies and the receiver's session.

Whatever bytes arrive, the only exception is the transport's own `FrameError` (the connection
closes with its reason), and the decoder never allocates more than its stated cap: one control
body of at most `max_control_bytes`, plus a 64 KiB scratch buffer for discarded payloads (payload
bodies go into the caller's buffers). Allocation is measured with tracemalloc (peak while
decoding, the input itself excluded). Single-bit corruptions are always caught: a damaged header
is refused (CRC-32C detects every 1-bit error), a damaged body is reported as not intact.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prfaas.transport.frames import (
    HEADER_BYTES,
    VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    FrameHeader,
    FrameType,
    decode_control,
    encode_control,
    frame_crc,
    pack_header,
    payload_header,
)
from prfaas.transport.pool import BufferPool
from prfaas.transport.session import ReceiverSession

MAX_PAYLOAD_BYTES = 1 << 16
MAX_CONTROL_BYTES = 1 << 14
SCRATCH_BYTES = 1 << 16  # the decoder's discard buffer: min(max_payload_bytes, 64 KiB)
SLACK_BYTES = 32 << 10  # Python objects per decoded frame (headers, views, lists)
MAX_U32 = (1 << 32) - 1
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


class Sink:
    """Placement into one preallocated buffer (payload offset = buffer offset)."""

    def __init__(self, size: int = 1 << 17) -> None:
        self.buf = bytearray(size)

    def place(self, h: FrameHeader) -> memoryview | None:
        if h.offset + h.length > len(self.buf):
            return None
        return memoryview(self.buf)[h.offset : h.offset + h.length]


def new_decoder() -> FrameDecoder:
    return FrameDecoder(Sink().place, MAX_PAYLOAD_BYTES, MAX_CONTROL_BYTES)


def decode_all(data: bytes, cuts: list[int], decoder: FrameDecoder | None = None) -> list[Frame]:
    """Feed `data` in pieces split at `cuts`; FrameError propagates."""
    decoder = decoder or new_decoder()
    frames: list[Frame] = []
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        frames.extend(decoder.feed(data[prev:cut]))
        prev = cut
    return frames


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes Python allocated while `fn` ran (FrameError is the allowed outcome); the
    decoder, its scratch buffer and the placement target exist before, as in a receiver."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(FrameError):
            fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ---- strategies ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
control_bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
payload_items = st.tuples(st.integers(0, 60_000), st.binary(max_size=4096))
stream_items = st.lists(st.one_of(control_bodies, payload_items), min_size=1, max_size=5)


def encode_stream(items: list[Any]) -> tuple[bytes, list[tuple[int, int]]]:
    """A valid frame stream and each frame's (start, header end) byte positions."""
    out, spans = b"", []
    for tag, item in enumerate(items):
        if isinstance(item, dict):
            frame = encode_control(FrameType.BEGIN, tag, item)
        else:
            offset, body = item
            frame = payload_header(tag, 1, 0, offset, memoryview(body)) + body
        spans.append((len(out), len(out) + HEADER_BYTES))
        out += frame
    return out, spans


def raw_header(frame_type: int, length: int, flags: int = 0, tag: int = 1) -> bytes:
    """A header with a correct CRC and any field values (what a hostile peer can send)."""
    head = struct.pack("<4sBBHQQIHHI", b"PRFK", VERSION, frame_type, flags, tag, 0, length, 0, 0, 0)
    return head + struct.pack("<I", frame_crc(head))


# ---- the frame decoder ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=8192), st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes_raise_only_frame_error_within_the_memory_cap(
    data: bytes, cuts: list[int]
) -> None:
    decoder = new_decoder()
    peak = peak_bytes(lambda: decode_all(data, cuts, decoder))
    assert peak <= MAX_CONTROL_BYTES + SLACK_BYTES


@FUZZ
@given(stream_items, st.data())
def test_a_single_flipped_bit_is_always_caught(items: list[Any], data: st.DataObject) -> None:
    stream, spans = encode_stream(items)
    bit = data.draw(st.integers(0, len(stream) * 8 - 1), label="bit")
    damaged = bytearray(stream)
    damaged[bit // 8] ^= 1 << (bit % 8)
    byte = bit // 8
    hit = next(i for i, (start, _) in reversed(list(enumerate(spans))) if start <= byte)
    in_header = byte < spans[hit][1]
    cuts = data.draw(st.lists(st.integers(0, 10**6), max_size=4), label="cuts")
    try:
        frames = decode_all(bytes(damaged), cuts)
    except FrameError:
        assert in_header  # a body flip never breaks framing
        return
    assert not in_header, "a header with a flipped bit was accepted"
    assert [f.header.tag for f in frames] == list(range(len(items)))
    assert [f.is_intact for f in frames] == [i != hit for i in range(len(items))]


@FUZZ
@given(stream_items, st.data())
def test_truncated_streams_stop_cleanly_with_only_complete_frames(
    items: list[Any], data: st.DataObject
) -> None:
    stream, spans = encode_stream(items)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    decoder = FrameDecoder(Sink().place, MAX_PAYLOAD_BYTES, MAX_CONTROL_BYTES)
    frames = decoder.feed(stream[:cut])
    ends = [start for start, _ in spans[1:]] + [len(stream)]
    assert len(frames) == sum(1 for end in ends if end <= cut)
    assert all(f.is_intact for f in frames)
    assert decoder.is_idle == (cut == 0 or cut in ends)


@FUZZ
@given(
    st.sampled_from(list(FrameType)),
    st.integers(MAX_PAYLOAD_BYTES + 1, MAX_U32),
    st.sampled_from([0, 1]),
)
def test_huge_declared_lengths_are_refused_before_any_allocation(
    frame_type: FrameType, length: int, flags: int
) -> None:
    errors: list[str] = []
    decoder, data = new_decoder(), raw_header(frame_type, length, flags) + bytes(64)

    def feed() -> None:
        try:
            decode_all(data, [], decoder)
        except FrameError as exc:
            errors.append(str(exc))
            raise

    assert peak_bytes(feed) <= SLACK_BYTES
    assert errors, "a header declaring a body over every limit was accepted"


@FUZZ
@given(st.sampled_from([t for t in FrameType if t is not FrameType.PAYLOAD]), st.data())
def test_control_bodies_over_the_control_cap_are_refused(
    frame_type: FrameType, data: st.DataObject
) -> None:
    length = data.draw(st.integers(MAX_CONTROL_BYTES + 1, MAX_PAYLOAD_BYTES), label="length")
    errors: list[str] = []
    decoder, data = new_decoder(), raw_header(frame_type, length)

    def feed() -> None:
        try:
            decode_all(data, [], decoder)
        except FrameError as exc:
            errors.append(str(exc))
            raise

    assert peak_bytes(feed) <= SLACK_BYTES
    assert errors and f"over {MAX_CONTROL_BYTES}" in errors[0]


# ---- control bodies ------------------------------------------------------------------------

hostile_json = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=256).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b'{"a": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(1, 5000).map(lambda n: b'{"a": 1' + b"0" * n + b"}"),
    st.sampled_from([b'{"a": NaN}', b'{"a": 1e999}', b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}"]),
)


@FUZZ
@given(hostile_json)
def test_control_bodies_decode_to_an_object_or_raise_frame_error(body: bytes) -> None:
    try:
        obj = decode_control(body)
    except FrameError as exc:
        assert str(exc)
        return
    assert isinstance(obj, dict)


def test_deep_nesting_and_huge_integers_are_protocol_errors() -> None:
    for body, reason in [
        (b"[" * 100_000, "not JSON"),
        (b'{"a": 1' + b"0" * 10_000 + b"}", "not JSON"),
        (b"[1]", "not a JSON object"),
    ]:
        try:
            decode_control(body)
        except FrameError as exc:
            assert reason in str(exc)
        else:
            raise AssertionError(f"{body[:20]!r} was accepted")


# ---- the receiver's session state machine --------------------------------------------------

begin_bodies = st.fixed_dictionaries(
    {},
    optional={
        "transfer_id": st.one_of(st.text(max_size=8), json_values),
        "req_id": st.one_of(st.text(max_size=8), json_values),
        "deadline_s": st.one_of(st.floats(), st.integers(), json_values),
    },
)
tensor_dicts = st.fixed_dictionaries(
    {
        "name": st.text(max_size=4),
        "layer_index": st.integers(-2, 3),
        "dtype": st.just("uint8"),
        "shape": st.lists(st.integers(-1, 64), max_size=2),
        "offset_bytes": st.integers(-10, 1 << 40),
        "num_bytes": st.integers(-10, 1 << 40) | st.integers(0, 4096),
    }
)
layer_bodies = st.fixed_dictionaries(
    {
        "layer_index": st.integers(-1, 3) | json_values,
        "tensors": st.lists(tensor_dicts, max_size=3),
    },
    optional={"layer_kind": st.text(max_size=4), "cache_class": json_values, "flags": json_values},
)
end_bodies = st.fixed_dictionaries(
    {},
    optional={
        "conns": st.lists(st.integers(-1, 3), max_size=3) | json_values,
        "manifest": st.fixed_dictionaries(
            {
                "transfer_id": st.text(max_size=4),
                "req_id": st.text(max_size=4),
                "arch": st.just("x"),
                "num_layers": st.integers(0, 4) | json_values,
                "layers": st.lists(layer_bodies, max_size=2),
                "num_computed_tokens": st.integers(-2, 10),
                "first_token_id": st.none() | st.integers(),
                "num_prefix_tokens": st.integers(-2, 10) | json_values,
            }
        )
        | json_values,
    },
)


def typed_frames(frame_type: FrameType, bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """(type, tag, epoch or payload offset, body, corrupt the body's CRC) of one frame."""
    corrupt = st.sampled_from([False, False, False, True])
    return st.tuples(st.just(frame_type), st.integers(0, 2), st.integers(0, 2), bodies, corrupt)


session_frames = st.lists(
    st.one_of(
        typed_frames(FrameType.BEGIN, begin_bodies),
        typed_frames(FrameType.LAYER, layer_bodies),
        typed_frames(FrameType.END, end_bodies),
        typed_frames(FrameType.CANCEL, control_bodies),
        typed_frames(FrameType.PAYLOAD, control_bodies),
        typed_frames(FrameType.ACK, control_bodies),
    ),
    min_size=1,
    max_size=10,
)


def session_bytes(frames: list[tuple[FrameType, int, int, dict[str, Any], bool]]) -> bytes:
    out = b""
    for frame_type, tag, offset, body, corrupt in frames:
        if frame_type is FrameType.PAYLOAD:
            data = json.dumps(body).encode()[:512]
            out += payload_header(tag, offset % 2, 0, offset * 16, memoryview(data)) + data
            continue
        frame = bytearray(encode_control(frame_type, tag, body, offset=offset))
        if corrupt and len(frame) > HEADER_BYTES:
            frame[-1] ^= 0x01
        out += bytes(frame)
    return out


@settings(FUZZ, max_examples=150)
@given(session_frames, st.integers(0, 2))
def test_session_raises_only_frame_error_and_frees_every_buffer(
    frames: list[tuple[FrameType, int, int, dict[str, Any], bool]], conn: int
) -> None:
    pool = BufferPool(1 << 20)
    session = ReceiverSession("fuzz", pool, max_transfer_bytes=1 << 19)
    decoder = FrameDecoder(session.place, MAX_PAYLOAD_BYTES, MAX_CONTROL_BYTES)
    now = 0.0
    try:
        for frame in decoder.feed(session_bytes(frames)):
            if frame.is_placed:
                session.end_write(frame.body)
            session.handle(conn, frame, now)
            now += 1.0
            session.expire(now)
    except FrameError as exc:
        assert str(exc)
    assert pool.in_use_bytes <= 1 << 20
    placed = decoder.placed_body()
    if placed is not None:  # the stream ended mid-body, as a closed connection would
        session.end_write(placed)
    session.close()
    assert pool.in_use_bytes == 0


def test_a_finished_tag_is_not_revived_by_a_replayed_begin() -> None:
    pool = BufferPool(1 << 20)
    session = ReceiverSession("s", pool, max_transfer_bytes=1 << 19)
    body = b"0123456789abcdef"
    tensor = {"name": "t", "layer_index": 0, "dtype": "uint8", "shape": [16]}
    layer = {"layer_index": 0, "layer_kind": "full_attention", "cache_class": "C", "flags": {}}
    layer["tensors"] = [{**tensor, "offset_bytes": 0, "num_bytes": 16}]
    manifest = {"transfer_id": "t1", "req_id": "r1", "arch": "x", "num_layers": 1}
    manifest |= {"layers": [layer], "num_computed_tokens": 4, "first_token_id": None}
    begin = {"transfer_id": "t1", "req_id": "r1", "deadline_s": 5.0}
    parts = [
        encode_control(FrameType.BEGIN, 7, begin),
        encode_control(FrameType.LAYER, 7, layer),
        payload_header(7, 0, 0, 0, memoryview(body)) + body,
        encode_control(FrameType.END, 7, {"manifest": manifest, "conns": [0]}),
    ]

    def run() -> int:
        decoder = FrameDecoder(session.place, MAX_PAYLOAD_BYTES, MAX_CONTROL_BYTES)
        delivered = 0
        for part in parts:  # one frame at a time, as a receiver handles them
            for frame in decoder.feed(part):
                if frame.is_placed:
                    session.end_write(frame.body)
                outcome = session.handle(0, frame, 0.0)
                delivered += len(outcome.delivered)
                for received in outcome.delivered:
                    assert bytes(received.layer_buffers[0]) == body
                    received.release()
        return delivered

    assert run() == 1
    assert run() == 0  # the same frames again on this session: ignored, not delivered twice
    assert not session.transfers and pool.in_use_bytes == 0


def test_begin_with_a_non_finite_deadline_is_a_protocol_error() -> None:
    session = ReceiverSession("s", BufferPool(1 << 20), max_transfer_bytes=1 << 19)
    for deadline in (float("nan"), float("inf"), 10**400, -1.0, 0, "5", True, None):
        body = {"transfer_id": "t", "req_id": "r", "deadline_s": deadline}
        frame = FrameDecoder(session.place, 0).feed(encode_control(FrameType.BEGIN, 1, body))[0]
        try:
            session.handle(0, frame, 0.0)
        except FrameError as exc:
            assert "deadline_s" in str(exc)
        else:
            raise AssertionError(f"deadline_s={deadline!r} was accepted")
    assert not session.transfers


def test_pack_header_round_trips_every_field_at_its_extremes() -> None:
    h = FrameHeader(FrameType.PAYLOAD, (1 << 64) - 1, (1 << 64) - 1, MAX_U32, 65535, 65535, MAX_U32)
    raw = pack_header(h)
    decoder = FrameDecoder(lambda _: None, MAX_U32)
    assert decoder.feed(raw) == []  # header accepted, body of 4 GiB awaited into scratch only
    assert len(decoder.want()) == SCRATCH_BYTES
