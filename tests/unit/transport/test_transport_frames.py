"""Wire format: round trips under every split, and rejection of malformed input without a crash."""

from __future__ import annotations

import struct
from typing import cast

import pytest
from hypothesis import given, settings
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

MAX_PAYLOAD = 4096


class Sink:
    """Placement into one preallocated buffer (offset = payload offset), like the receiver."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.buf = bytearray(size)
        self.num_placed = 0

    def place(self, h: FrameHeader) -> memoryview | None:
        if h.offset + h.length > len(self.buf):
            return None
        self.num_placed += 1
        return memoryview(self.buf)[h.offset : h.offset + h.length]


control_bodies = st.dictionaries(
    st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=16), st.booleans()), max_size=4
)
payloads = st.tuples(st.integers(0, 50000), st.binary(max_size=MAX_PAYLOAD))
frames = st.lists(st.one_of(control_bodies, payloads), min_size=1, max_size=6)


def encode(items: list[object]) -> bytes:
    out = b""
    for i, item in enumerate(items):
        if isinstance(item, dict):
            out += encode_control(FrameType.BEGIN, i, item)
        else:
            offset, body = cast(tuple[int, bytes], item)
            out += payload_header(i, 2, 1, _slot(i, offset), memoryview(body)) + body
    return out


def _slot(index: int, offset: int) -> int:
    """Non-overlapping placement per frame, so every body can be checked after decoding."""
    return index * (MAX_PAYLOAD + 128) + offset % 128 if offset < 60000 else offset


def decode_in_chunks(data: bytes, cuts: list[int]) -> tuple[list[Frame], Sink, FrameDecoder]:
    sink = Sink()
    decoder = FrameDecoder(sink.place, MAX_PAYLOAD)
    out: list[Frame] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(decoder.feed(data[prev:cut]))
        prev = cut
    return out, sink, decoder


def check_round_trip(items: list[object], got: list[Frame], sink: Sink) -> None:
    assert len(got) == len(items)
    for i, (item, frame) in enumerate(zip(items, got, strict=True)):
        assert frame.header.tag == i
        assert frame.is_intact
        if isinstance(item, dict):
            assert frame.header.frame_type is FrameType.BEGIN
            assert decode_control(frame.body) == item
        else:
            _, body = cast(tuple[int, bytes], item)
            assert frame.header.frame_type is FrameType.PAYLOAD
            assert (frame.header.layer, frame.header.tensor) == (2, 1)
            assert bytes(frame.body) == body


@given(frames, st.lists(st.integers(0, 10**6), max_size=12))
@settings(max_examples=200, deadline=None)
def test_round_trip_under_arbitrary_splits(items: list[object], raw_cuts: list[int]) -> None:
    data = encode(items)
    cuts = [c % (len(data) + 1) for c in raw_cuts]
    got, sink, decoder = decode_in_chunks(data, cuts)
    check_round_trip(items, got, sink)
    assert decoder.is_idle


def test_round_trip_split_at_every_position() -> None:
    items: list[object] = [{"a": 1}, (100, b"x" * 300), {}, (0, b""), (7, bytes(range(256)))]
    data = encode(items)
    for cut in range(len(data) + 1):
        got, sink, _ = decode_in_chunks(data, [cut])
        check_round_trip(items, got, sink)


def test_one_byte_at_a_time() -> None:
    items: list[object] = [(5, b"abc" * 50), {"k": "v"}]
    data = encode(items)
    got, sink, _ = decode_in_chunks(data, list(range(len(data))))
    check_round_trip(items, got, sink)


def test_payload_lands_in_the_placed_buffer() -> None:
    data = encode([(100, b"hello")])
    got, sink, _ = decode_in_chunks(data, [])
    assert sink.buf[100:105] == b"hello"
    assert got[0].body.obj is sink.buf  # no intermediate copy


@given(frames, st.integers(1, 10**6))
@settings(max_examples=100, deadline=None)
def test_truncated_stream_is_not_a_clean_end(items: list[object], raw_cut: int) -> None:
    data = encode(items)
    cut = raw_cut % len(data)
    got, _, decoder = decode_in_chunks(data[:cut], [])
    assert len(got) < len(items)
    assert not decoder.is_idle or cut in _frame_boundaries(items)


def _frame_boundaries(items: list[object]) -> set[int]:
    bounds, pos = {0}, 0
    for i in range(len(items)):
        pos = len(encode(items[: i + 1]))
        bounds.add(pos)
    return bounds


def _header_fields(**overrides: int) -> bytes:
    fields = {"magic": 0, "version": VERSION, "type": 5, "length": 10, "hcrc": None}
    fields.update(overrides)
    magic = b"XXXX" if fields["magic"] else b"PRFK"
    head = struct.pack("<4sBBHQQIHHI", magic, fields["version"], fields["type"], 0, 1, 0,
                       fields["length"], 0, 0, 0)  # fmt: skip
    crc = frame_crc(head) if fields["hcrc"] is None else fields["hcrc"]
    return head + struct.pack("<I", crc)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_header_fields(magic=1), "bad magic"),
        (_header_fields(version=1), "unsupported wire version 1"),
        (_header_fields(type=99), "unknown frame type 99"),
        (_header_fields(length=1 << 31), "exceeds the limit"),
        (_header_fields(hcrc=12345), "header checksum"),
        (_header_fields(type=3, length=MAX_PAYLOAD + 1 + (1 << 20)), "exceeds the limit"),
    ],
)
def test_bad_headers_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    decoder = FrameDecoder(Sink().place, MAX_PAYLOAD)
    with pytest.raises(FrameError, match=reason):
        decoder.feed(raw)


def test_payload_over_the_payload_limit_is_rejected_before_reading_it() -> None:
    h = FrameHeader(FrameType.PAYLOAD, 1, 0, MAX_PAYLOAD + 1)
    with pytest.raises(FrameError, match="over"):
        FrameDecoder(Sink().place, MAX_PAYLOAD).feed(pack_header(h))


def test_bad_body_checksum_is_reported_not_accepted() -> None:
    data = bytearray(encode([(0, b"payload bytes")]))
    data[-1] ^= 0xFF
    got, _, _ = decode_in_chunks(bytes(data), [])
    assert len(got) == 1
    assert not got[0].is_intact


def test_unplaceable_payload_is_discarded_and_stream_continues() -> None:
    items: list[object] = [(10**6, b"far away"), {"next": True}]
    got, sink, _ = decode_in_chunks(encode(items), [])
    assert not got[0].is_intact and len(got[0].body) == 0
    assert decode_control(got[1].body) == {"next": True}
    assert sink.num_placed == 0


@given(st.binary(min_size=1, max_size=2000))
@settings(max_examples=300, deadline=None)
def test_garbage_never_crashes_or_allocates_beyond_limits(garbage: bytes) -> None:
    decoder = FrameDecoder(Sink().place, MAX_PAYLOAD, max_control_bytes=1024)
    try:
        got = decoder.feed(garbage)
    except FrameError:
        return
    assert got == [] or all(f.header.length <= 1024 for f in got)
    assert len(decoder.want()) <= max(MAX_PAYLOAD, 1024, HEADER_BYTES)


def test_control_body_must_be_a_json_object() -> None:
    with pytest.raises(FrameError):
        decode_control(b"[1, 2]")
    with pytest.raises(FrameError):
        decode_control(b"\xff\xfe")


def test_payload_without_checksum_is_refused_unless_allowed() -> None:
    body = b"no crc here"
    data = payload_header(1, 0, 0, 0, memoryview(body), checksum=False) + body
    with pytest.raises(FrameError, match="without a payload checksum"):
        FrameDecoder(Sink().place, MAX_PAYLOAD).feed(data)
    sink = Sink()
    got = FrameDecoder(sink.place, MAX_PAYLOAD, allow_unchecked_payload=True).feed(data)
    assert got[0].is_intact and bytes(got[0].body) == body


def test_unknown_header_flags_are_refused() -> None:
    h = FrameHeader(FrameType.BEGIN, 1, 0, 0, flags=0x80)
    with pytest.raises(FrameError, match="unknown header flags"):
        FrameDecoder(Sink().place, MAX_PAYLOAD).feed(pack_header(h))


def test_checksum_is_crc32c_and_header_crc_covers_the_header() -> None:
    """Wire version 2 uses CRC-32C (Castagnoli); 0xE3069283 is its standard check value."""
    assert frame_crc(b"123456789") == 0xE3069283
    assert frame_crc(b"6789", frame_crc(b"12345")) == 0xE3069283  # incremental
    assert frame_crc(memoryview(bytearray(b"123456789"))[2:]) == frame_crc(b"3456789")
    head = pack_header(FrameHeader(FrameType.PAYLOAD, 3, 4096, 10, 1, 2, frame_crc(b"x" * 10)))
    assert int.from_bytes(head[-4:], "little") == frame_crc(head[:-4])
    assert head[4] == VERSION == 2


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 10**6])
def test_a_flipped_body_byte_is_caught_whatever_the_chunking(chunk_bytes: int) -> None:
    """The body CRC runs chunk by chunk as bytes arrive; every position must still count."""
    body = bytes(range(256)) * 2
    clean = encode([(0, body)])
    for pos in range(HEADER_BYTES, len(clean), 13):
        data = bytearray(clean)
        data[pos] ^= 0x01
        cuts = list(range(chunk_bytes, len(data), chunk_bytes))
        got, _, decoder = decode_in_chunks(bytes(data), cuts)
        assert len(got) == 1 and not got[0].is_intact, pos
        assert decoder.is_idle
    got, _, _ = decode_in_chunks(clean, list(range(chunk_bytes, len(clean), chunk_bytes)))
    assert got[0].is_intact


def test_unverified_payload_is_not_reported_intact() -> None:
    sink = Sink()
    decoder = FrameDecoder(sink.place, MAX_PAYLOAD, verify_payload=False)
    got = decoder.feed(encode([(0, b"abc")]))
    assert got[0].is_placed and not got[0].is_intact
