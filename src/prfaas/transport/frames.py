"""KV wire format, version 2: fixed 40-byte frame headers and an incremental, sans-IO decoder.

Knows nothing about sockets, clocks or tensors. Rule 1: every frame is a header followed by exactly
`length` body bytes. Rule 2: a header is trusted only after its own CRC, magic, version, type and
length bound check pass; a payload body is written where the caller's `place` callback says, and
counted only if its CRC-32C matches (computed chunk by chunk as the body arrives).

Header layout (little endian):

    magic 4s | version u8 | type u8 | flags u16 | tag u64 | offset u64 | length u32 |
    layer u16 | tensor u16 | body_crc u32 | header_crc u32            (40 bytes)

`tag` names one transfer within one sender session; `offset` is a byte offset into the transfer's
payload (PAYLOAD) or an epoch counter (END); `layer`/`tensor` locate a payload frame's tensor.
Both CRC fields are CRC-32C (Castagnoli, hardware-accelerated by the `crc32c` package); version 1
used zlib's CRC-32 in the same fields, so the version number changed with the algorithm.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from crc32c import crc32c

MAGIC = b"PRFK"
FLAG_NO_PAYLOAD_CRC = 0x1  # PAYLOAD body carries no CRC (link integrity from TLS, by agreement)
_KNOWN_FLAGS = FLAG_NO_PAYLOAD_CRC
VERSION = 2  # 1: zlib CRC-32 checksums; 2: CRC-32C
_HEADER = struct.Struct("<4sBBHQQIHHII")
HEADER_BYTES = 40
_CRC_COVERED_BYTES = HEADER_BYTES - 4


class FrameType(IntEnum):
    """Every frame kind. Control frames carry a JSON object body; PAYLOAD carries raw bytes."""

    HELLO = 1  # sender -> receiver, first frame: {"session", "conn_index", "token"}
    HELLO_OK = 2  # receiver -> sender: authenticated, frames may follow
    BEGIN = 3  # a transfer starts: {"transfer_id", "req_id", "deadline_s"}
    LAYER = 4  # one layer's LayerEntry (final), before any of its payload on that connection
    PAYLOAD = 5  # raw bytes [offset, offset+length) of tensor `tensor` of layer `layer`
    END = 6  # no more frames on this connection for epoch `offset`: {"manifest", "conns"}
    ACK = 7  # receiver -> sender: TransferAck as JSON
    NACK = 8  # receiver -> sender: {"ranges": [[offset, length], ...]} to send again
    ERROR = 9  # either way: {"reason"}; the connection closes after it
    CANCEL = 10  # sender -> receiver: drop the transfer and free its buffers


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    frame_type: FrameType
    tag: int  # transfer tag, unique within one sender session
    offset: int  # payload byte offset (PAYLOAD) or epoch (END); 0 otherwise
    length: int  # body bytes following the header
    layer: int = 0  # layer index of a PAYLOAD/LAYER frame
    tensor: int = 0  # tensor index within the layer of a PAYLOAD frame
    body_crc: int = 0  # frame_crc(body)
    flags: int = 0  # FLAG_* bits; unknown bits are refused


def frame_crc(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of `data`, continuing from `value`; releases the GIL for buffers >= 32 KiB."""
    return crc32c(data, value)


def pack_header(h: FrameHeader) -> bytes:
    """Encode a header; the trailing CRC is computed here."""
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        int(h.frame_type),
        h.flags,
        h.tag,
        h.offset,
        h.length,
        h.layer,
        h.tensor,
        h.body_crc,
        0,
    )[:_CRC_COVERED_BYTES]
    return head + frame_crc(head).to_bytes(4, "little")


def parse_header(buf: bytes | bytearray | memoryview, max_body_bytes: int) -> FrameHeader:
    """Decode and validate 40 header bytes; raise FrameError with the reason otherwise."""
    if len(buf) != HEADER_BYTES:
        raise FrameError(f"header must be {HEADER_BYTES} bytes, got {len(buf)}")
    fields = _HEADER.unpack(buf)
    magic, version, type_code, flags, tag, offset, length, layer, tensor, body_crc, hcrc = fields
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise FrameError(f"unsupported wire version {version} (this side speaks {VERSION})")
    if frame_crc(buf[:_CRC_COVERED_BYTES]) != hcrc:
        raise FrameError("header checksum mismatch")
    try:
        frame_type = FrameType(type_code)
    except ValueError:
        raise FrameError(f"unknown frame type {type_code}") from None
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown header flags {flags:#x}")
    if length > max_body_bytes:
        raise FrameError(f"frame body of {length} bytes exceeds the limit of {max_body_bytes}")
    return FrameHeader(frame_type, tag, offset, length, layer, tensor, body_crc, flags)


def encode_control(frame_type: FrameType, tag: int, body: dict[str, Any], offset: int = 0) -> bytes:
    """A control frame (JSON body) as one bytes object."""
    data = json.dumps(body, separators=(",", ":")).encode()
    header = FrameHeader(frame_type, tag, offset, len(data), body_crc=frame_crc(data))
    return pack_header(header) + data


def payload_header(
    tag: int, layer: int, tensor: int, offset: int, body: memoryview, checksum: bool = True
) -> bytes:
    """Header for a payload frame whose body is `body` (sent separately, zero-copy).

    Without `checksum` the frame is flagged FLAG_NO_PAYLOAD_CRC; receivers refuse such frames
    unless they were configured to accept them."""
    crc, flags = (frame_crc(body), 0) if checksum else (0, FLAG_NO_PAYLOAD_CRC)
    header = FrameHeader(FrameType.PAYLOAD, tag, offset, len(body), layer, tensor, crc, flags)
    return pack_header(header)


def decode_control(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse a control body; raise FrameError unless it is a JSON object.

    Any input gives a dict or a FrameError: invalid UTF-8 or JSON, integers past Python's digit
    limit (a plain ValueError) and nesting past the recursion limit (RecursionError) included."""
    try:
        obj = json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise FrameError(f"control body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise FrameError("control body is not a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. For PAYLOAD, `body` is the caller's placed buffer slice."""

    header: FrameHeader
    body: memoryview  # control body bytes, or the placed payload slice
    is_intact: bool  # body CRC matched
    is_placed: bool = False  # a PAYLOAD body written into a buffer from `place`


# Where a payload body goes: a writable view of exactly `header.length` bytes, or None to discard.
PlaceFn = Callable[[FrameHeader], memoryview | None]


class FrameDecoder:
    """Incremental decoder: ask `want()` where the next bytes go, then report them with `advance`.

    Payload bodies land directly in the view returned by `place` (no intermediate copy); control
    bodies land in a private buffer bounded by `max_control_bytes`. Discarded payloads are read into
    a fixed scratch buffer, so no input can make the decoder allocate more than its limits.
    """

    def __init__(
        self,
        place: PlaceFn,
        max_payload_bytes: int,
        max_control_bytes: int = 1 << 20,
        verify_payload: bool = True,
        allow_unchecked_payload: bool = False,
    ) -> None:
        self._place = place
        self._verify_payload = verify_payload  # False: caller checks payload CRCs (is_intact False)
        self._allow_unchecked = allow_unchecked_payload  # accept FLAG_NO_PAYLOAD_CRC frames
        self._max_payload_bytes = max_payload_bytes
        self._max_control_bytes = max_control_bytes
        self._header_buf = bytearray(HEADER_BYTES)
        self._scratch = bytearray(max(1, min(max_payload_bytes, 1 << 16)))
        self._header: FrameHeader | None = None
        self._target: memoryview = memoryview(self._header_buf)
        self._filled = 0
        self._discarding = False
        self._body_crc = 0  # CRC-32C of the placed payload body bytes received so far
        self._is_crc_running = False  # the current payload body is checked chunk by chunk

    def want(self) -> memoryview:
        """The writable view the next received bytes should go into (never empty)."""
        if self._discarding:
            assert self._header is not None
            remaining = self._header.length - self._filled
            return memoryview(self._scratch)[: min(remaining, len(self._scratch))]
        return self._target[self._filled :]

    def advance(self, num_bytes: int) -> list[Frame]:
        """Account for `num_bytes` written into `want()`; return the frames that completed.

        A placed payload body is checksummed here, one received chunk at a time, while the chunk
        is still in the CPU cache the socket copy just wrote it to (no second pass over memory)."""
        if self._is_crc_running:
            chunk = self._target[self._filled : self._filled + num_bytes]
            self._body_crc = frame_crc(chunk, self._body_crc)
        self._filled += num_bytes
        frames: list[Frame] = []
        while True:
            frame = self._step()
            if frame is None:
                return frames
            frames.append(frame)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Copy `data` through `want()`/`advance()`: the path tests and in-memory links use."""
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            target = self.want()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            frames.extend(self.advance(n))
        return frames

    def placed_body(self) -> memoryview | None:
        """The caller's buffer slice a payload body is being written into, if mid-body."""
        h = self._header
        if h is None or h.frame_type is not FrameType.PAYLOAD or self._discarding:
            return None
        return self._target

    @property
    def is_idle(self) -> bool:
        """True between frames: a stream that ends here ended cleanly."""
        return self._header is None and self._filled == 0

    def _step(self) -> Frame | None:
        if self._header is None:
            if self._filled < HEADER_BYTES:
                return None
            self._start_body(parse_header(self._header_buf, self._max_body_limit()))
            if self._header is not None and self._header.length > 0:
                return None
        header = self._header
        assert header is not None
        if self._filled < header.length:
            return None
        return self._finish_body(header)

    def _max_body_limit(self) -> int:
        return max(self._max_payload_bytes, self._max_control_bytes)

    def _start_body(self, header: FrameHeader) -> None:
        is_payload = header.frame_type is FrameType.PAYLOAD
        if header.flags & FLAG_NO_PAYLOAD_CRC and not (is_payload and self._allow_unchecked):
            raise FrameError("frame without a payload checksum refused")
        limit = self._max_payload_bytes if is_payload else self._max_control_bytes
        if header.length > limit:
            raise FrameError(f"{header.frame_type.name} body of {header.length} bytes over {limit}")
        self._header, self._filled, self._discarding = header, 0, False
        if not is_payload:
            self._target = memoryview(bytearray(header.length))
            return
        placed = self._place(header)
        if placed is None:
            self._discarding = True
        elif len(placed) != header.length:
            raise FrameError("placement returned a view of the wrong length")
        else:
            self._target = placed
            self._body_crc = 0
            is_flagged = bool(header.flags & FLAG_NO_PAYLOAD_CRC)
            self._is_crc_running = self._verify_payload and not is_flagged

    def _finish_body(self, header: FrameHeader) -> Frame:
        body = memoryview(b"") if self._discarding else self._target[: header.length]
        is_placed = header.frame_type is FrameType.PAYLOAD and not self._discarding
        if is_placed and header.flags & FLAG_NO_PAYLOAD_CRC:
            is_intact = True  # allowed by configuration (checked in _start_body)
        elif self._is_crc_running:
            is_intact = self._body_crc == header.body_crc
        else:
            is_checked = self._verify_payload or not is_placed
            is_intact = is_checked and not self._discarding and frame_crc(body) == header.body_crc
        self._header, self._filled, self._discarding = None, 0, False
        self._is_crc_running = False
        self._target = memoryview(self._header_buf)
        return Frame(header, body, is_intact, is_placed)
