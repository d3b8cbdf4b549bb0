"""Transfer state machines, sans-IO: what each side does with each frame. No sockets, no clocks.

Receiver rules. Rule 1: a connection must open with a valid HELLO before anything else is read.
Rule 2: BEGIN, then a layer's LAYER frame, must precede that layer's payload on the same connection
(the sender repeats them on every connection it stripes to). Rule 3: an END for epoch e on every
connection it lists means all frames sent before it have arrived; then the receiver either ACKs
(every tensor byte covered by frames whose CRC matched) or NACKs the exact missing ranges.
Rule 4: a tag is used once per session; frames for a tag that already finished (delivered or
dropped: replayed or late) are ignored, so a transfer is never delivered twice by its session,
even after the session was forgotten (`FinishedTags`, shared by a receiver's sessions).
Malformed bodies (wrong types, non-finite numbers) raise FrameError, never another exception.
Range bookkeeping (`RangeSet`, `layer_span`) and the sender's frame planning (`plan_slices`,
`slices_for_ranges`) live in `prfaas.transport.ranges`.
"""

from __future__ import annotations

import logging
import math
import mmap
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from prfaas.errors import UserError
from prfaas.messages import KVManifest, LayerEntry, TensorEntry, TransferAck
from prfaas.transport.frames import (
    Frame,
    FrameError,
    FrameHeader,
    FrameType,
    decode_control,
    encode_control,
)
from prfaas.transport.pool import BufferPool, PooledBuffer, PoolExhaustedError
from prfaas.transport.ranges import (
    RangeSet,
    layer_span,
)

log = logging.getLogger(__name__)
_MAX_FINISHED_TAGS_KEPT = 4096  # finished tags remembered per session, to ignore their replays
_MAX_ID_CHARS = 256  # transfer_id and req_id in BEGIN


@dataclass
class ReceivedTransfer:
    """A complete, verified transfer: the manifest and one buffer per layer that has tensors.

    The consumer reads tensors with `tensor_view` and must call `release()` when done, on the
    receiver's event loop thread, which returns the buffers to the receiver's pool.
    """

    manifest: KVManifest
    layer_buffers: dict[int, memoryview]  # layer_index -> bytes [layer_start, layer_end)
    layer_starts: dict[int, int]  # layer_index -> payload offset of its buffer's first byte
    _pool: BufferPool | None = None
    _owned: list[PooledBuffer] = field(default_factory=list)

    def tensor_view(self, entry: TensorEntry) -> memoryview:
        start = entry.offset_bytes - self.layer_starts[entry.layer_index]
        return self.layer_buffers[entry.layer_index][start : start + entry.num_bytes]

    def release(self) -> None:
        if self._pool is not None:
            for buf in self._owned:
                self._pool.release(buf)
        self._owned, self._pool = [], None


@dataclass
class _LayerSlot:
    entry: LayerEntry
    start: int
    buffer: PooledBuffer | None  # None for a layer without tensors


@dataclass
class InboundTransfer:
    """Receiver-side state of one transfer in one sender session."""

    tag: int
    transfer_id: str
    req_id: str
    deadline_at: float  # receiver monotonic seconds
    layers: dict[int, _LayerSlot] = field(default_factory=dict)
    verified: RangeSet = field(default_factory=RangeSet)
    ends_seen: dict[int, set[int]] = field(default_factory=dict)  # epoch -> conn indexes
    num_corrupt_frames: int = 0
    num_payload_bytes: int = 0  # intact payload bytes received, duplicates included


class FinishedTags:
    """The most recent finished (session, tag) pairs, bounded; shared by a receiver's sessions so
    a session that reconnects after being forgotten still ignores its finished tags."""

    def __init__(self, max_kept: int = _MAX_FINISHED_TAGS_KEPT) -> None:
        self._max_kept = max_kept
        self._kept: OrderedDict[tuple[str, int], None] = OrderedDict()

    def add(self, session_id: str, tag: int) -> None:
        self._kept[(session_id, tag)] = None
        while len(self._kept) > self._max_kept:
            self._kept.popitem(last=False)

    def contains(self, session_id: str, tag: int) -> bool:
        return (session_id, tag) in self._kept


@dataclass
class Outcome:
    """What the adapter must do after a frame: replies to send, transfers to hand over."""

    replies: list[tuple[int, bytes]] = field(default_factory=list)  # (conn_index, frame bytes)
    delivered: list[ReceivedTransfer] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (transfer_id, reason)


class ReceiverSession:
    """All transfers of one sender session (one sender process -> this receiver)."""

    def __init__(
        self,
        session_id: str,
        pool: BufferPool,
        max_transfer_bytes: int,
        finished: FinishedTags | None = None,
    ) -> None:
        self.session_id = session_id
        self._pool = pool
        self._max_transfer_bytes = max_transfer_bytes
        self.transfers: dict[int, InboundTransfer] = {}
        self._finished = FinishedTags() if finished is None else finished
        # Placement may run on reader threads: these three are guarded by _lock.
        self._lock = threading.Lock()
        self._num_writes: dict[int, int] = {}  # id(buffer mmap) -> bodies being written into it
        self._orphans: dict[int, PooledBuffer] = {}  # dropped while being written into
        self._releasable: list[PooledBuffer] = []  # orphans whose last write ended

    # --- payload placement (called by the decoder before a body is read) ---

    def place(self, header: FrameHeader) -> memoryview | None:
        """Where a payload body goes; None (discard) if it names no known tensor range."""
        t = self.transfers.get(header.tag)
        slot = t.layers.get(header.layer) if t is not None else None
        if slot is None or slot.buffer is None or header.tensor >= len(slot.entry.tensors):
            log.warning("discarding payload for unknown tag/layer/tensor: %s", header)
            return None
        entry = slot.entry.tensors[header.tensor]
        end = header.offset + header.length
        if header.offset < entry.offset_bytes or end > entry.offset_bytes + entry.num_bytes:
            log.warning("discarding payload outside tensor %s: %s", entry.name, header)
            return None
        with self._lock:
            key = id(slot.buffer.mm)
            self._num_writes[key] = self._num_writes.get(key, 0) + 1
        return slot.buffer.view[header.offset - slot.start : end - slot.start]

    def end_write(self, target: memoryview) -> None:
        """The body placed in `target` is complete (or abandoned); may run on a reader thread.

        A buffer whose transfer was dropped while a body was being written into it goes back to
        the pool only now, so a late write can never land in a buffer another transfer owns.
        """
        key = id(target.obj)
        with self._lock:
            left = self._num_writes.get(key, 0) - 1
            if left > 0:
                self._num_writes[key] = left
                return
            self._num_writes.pop(key, None)
            orphan = self._orphans.pop(key, None)
            if orphan is not None:
                self._releasable.append(orphan)

    # --- frame handling ---

    def handle(self, conn_index: int, frame: Frame, now: float) -> Outcome:
        """Apply one frame; raise FrameError for protocol violations (the connection closes)."""
        h = frame.header
        out = Outcome()
        self._release_orphans()
        match h.frame_type:
            case FrameType.PAYLOAD:
                self._on_payload(frame)
            case FrameType.BEGIN:
                self._on_begin(h.tag, frame, now, out)
            case FrameType.LAYER:
                self._on_layer(h.tag, frame, out)
            case FrameType.END:
                self._on_end(conn_index, h, frame, out)
            case FrameType.CANCEL:
                self._drop(h.tag, "cancelled by sender", out)
            case _:
                raise FrameError(f"unexpected {h.frame_type.name} frame from a sender")
        return out

    def expire(self, now: float) -> Outcome:
        """Abandon every transfer past its deadline and free its buffers."""
        out = Outcome()
        self._release_orphans()
        for tag in [tag for tag, t in self.transfers.items() if now > t.deadline_at]:
            self._drop(tag, "deadline exceeded", out)
        return out

    def close(self) -> None:
        """Drop every transfer; buffers whose last write has ended go back to the pool."""
        for tag in list(self.transfers):
            self._drop(tag, "receiver closed", Outcome())
        self._release_orphans()

    @property
    def buffered_bytes(self) -> int:
        return sum(
            s.buffer.capacity_bytes
            for t in self.transfers.values()
            for s in t.layers.values()
            if s.buffer is not None
        )

    def _on_payload(self, frame: Frame) -> None:
        h = frame.header
        t = self.transfers.get(h.tag)
        if t is None or not frame.body:
            return
        if not frame.is_intact:
            t.num_corrupt_frames += 1
            log.warning(
                "transfer_id=%s: payload CRC mismatch at offset %d (%d bytes); will NACK",
                t.transfer_id,
                h.offset,
                h.length,
            )
            return
        t.verified.add(h.offset, h.offset + h.length)
        t.num_payload_bytes += h.length

    def _on_begin(self, tag: int, frame: Frame, now: float, out: Outcome) -> None:
        body = _control(frame)
        transfer_id, req_id = body.get("transfer_id"), body.get("req_id", "")
        deadline_s = body.get("deadline_s")
        if not _is_id(transfer_id) or not _is_id(req_id, allow_empty=True):
            raise FrameError(f"BEGIN needs string ids of at most {_MAX_ID_CHARS} characters")
        if not _is_positive_seconds(deadline_s):
            raise FrameError(f"BEGIN needs a finite deadline_s > 0, got {str(deadline_s)[:40]}")
        assert isinstance(transfer_id, str) and isinstance(req_id, str)
        assert isinstance(deadline_s, int | float)
        if self._finished.contains(self.session_id, tag):
            log.warning(
                "session=%s: BEGIN of finished tag %d (transfer_id=%s) ignored: replayed or late",
                self.session_id,
                tag,
                transfer_id,
            )
            return
        known = self.transfers.get(tag)
        if known is not None:
            if known.transfer_id != transfer_id:
                raise FrameError(f"tag {tag} reused for {transfer_id} while {known.transfer_id}")
            return
        self.transfers[tag] = InboundTransfer(tag, transfer_id, req_id, now + deadline_s)

    def _on_layer(self, tag: int, frame: Frame, out: Outcome) -> None:
        t = self.transfers.get(tag)
        if t is None and self._finished.contains(self.session_id, tag):
            return  # a late or replayed description of a finished transfer
        if t is None:
            raise FrameError(f"LAYER for tag {tag} before its BEGIN")
        try:
            entry = LayerEntry.from_dict(_control(frame))
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError(f"bad LAYER body: {exc}") from None
        self._register_layer(t, entry, out)

    def _register_layer(self, t: InboundTransfer, entry: LayerEntry, out: Outcome) -> bool:
        known = t.layers.get(entry.layer_index)
        if known is not None:
            if known.entry != entry:
                raise FrameError(f"layer {entry.layer_index} described twice, differently")
            return True
        _check_layer(entry)
        start, end = layer_span(entry)
        total = sum(s.buffer.capacity_bytes for s in t.layers.values() if s.buffer) + end - start
        if total > self._max_transfer_bytes:
            self._drop(t.tag, f"transfer over the {self._max_transfer_bytes}-byte limit", out)
            return False
        buffer = None
        if end > start:
            try:
                buffer = self._pool.acquire(end - start)
            except PoolExhaustedError as exc:
                self._drop(t.tag, f"receiver out of buffer memory: {exc}", out)
                return False
        t.layers[entry.layer_index] = _LayerSlot(entry, start, buffer)
        return True

    def _on_end(self, conn_index: int, h: FrameHeader, frame: Frame, out: Outcome) -> None:
        t = self.transfers.get(h.tag)
        if t is None:
            return  # already completed or dropped; a late END from another connection
        body = _control(frame)
        conns = _conn_indexes(body.get("conns"))
        seen = t.ends_seen.setdefault(h.offset, set())
        seen.add(conn_index)
        if not conns or not conns <= seen:
            return
        try:
            manifest = KVManifest.from_dict(body["manifest"])
        except (KeyError, TypeError, ValueError, UserError) as exc:
            raise FrameError(f"bad END manifest: {str(exc)[:200]}") from None
        self._settle(t, manifest, conn_index, h.offset, out)

    def _settle(
        self, t: InboundTransfer, manifest: KVManifest, conn: int, epoch: int, out: Outcome
    ) -> None:
        if manifest.transfer_id != t.transfer_id:
            self._drop(t.tag, "END manifest names another transfer", out)
            return
        for entry in manifest.layers:
            if not self._register_layer(t, entry, out):
                return
        missing = [
            gap
            for entry in manifest.layers
            for tensor in entry.tensors
            for gap in t.verified.gaps(tensor.offset_bytes, tensor.offset_bytes + tensor.num_bytes)
        ]
        if missing:
            log.info(
                "transfer_id=%s: NACK %d missing ranges, first %s",
                t.transfer_id,
                len(missing),
                missing[:3],
            )
            body = {"ranges": [list(r) for r in missing]}
            nack = encode_control(FrameType.NACK, t.tag, body, offset=epoch)
            out.replies.append((conn, nack))
            return
        del self.transfers[t.tag]
        self._finished.add(self.session_id, t.tag)
        out.delivered.append(self._received(t, manifest))
        ack = TransferAck(t.transfer_id, ok=True).to_dict()
        out.replies.append((conn, encode_control(FrameType.ACK, t.tag, ack)))

    def _received(self, t: InboundTransfer, manifest: KVManifest) -> ReceivedTransfer:
        slots = {i: s for i, s in t.layers.items() if s.buffer is not None}
        return ReceivedTransfer(
            manifest,
            {i: s.buffer.view for i, s in slots.items() if s.buffer is not None},
            {i: s.start for i, s in slots.items()},
            self._pool,
            [s.buffer for s in slots.values() if s.buffer is not None],
        )

    def _drop(self, tag: int, reason: str, out: Outcome) -> None:
        t = self.transfers.pop(tag, None)
        if t is None:
            return
        self._finished.add(self.session_id, tag)
        log.warning("transfer_id=%s req_id=%s dropped: %s", t.transfer_id, t.req_id, reason)
        for slot in t.layers.values():
            if slot.buffer is not None:
                self._release(slot.buffer)
        out.failed.append((t.transfer_id, reason))
        nack = TransferAck(t.transfer_id, ok=False, error=reason).to_dict()
        out.replies.append((-1, encode_control(FrameType.ACK, tag, nack)))

    def _release(self, buf: PooledBuffer) -> None:
        with self._lock:
            if self._num_writes.get(id(buf.mm), 0) > 0:
                buf.mm.madvise(mmap.MADV_DONTNEED)
                self._orphans[id(buf.mm)] = buf
                return
        self._pool.release(buf, drop_pages=True)

    def _release_orphans(self) -> None:
        with self._lock:
            ready, self._releasable = self._releasable, []
        for buf in ready:
            self._pool.release(buf, drop_pages=True)


def _control(frame: Frame) -> dict[str, Any]:
    if not frame.is_intact:
        raise FrameError(f"{frame.header.frame_type.name} body checksum mismatch")
    return decode_control(frame.body)


def _is_id(value: object, allow_empty: bool = False) -> bool:
    return isinstance(value, str) and (allow_empty or bool(value)) and len(value) <= _MAX_ID_CHARS


def _is_positive_seconds(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an integer beyond float range
        return False


def _conn_indexes(value: object) -> set[int]:
    """END's `conns`: a list of connection indexes (non-negative integers)."""
    if not isinstance(value, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value
    ):
        raise FrameError(f"END needs conns as a list of indexes, got {str(value)[:80]}")
    return set(value)


def _check_layer(entry: LayerEntry) -> None:
    for t in entry.tensors:
        if t.offset_bytes < 0 or t.num_bytes < 0 or t.layer_index != entry.layer_index:
            raise FrameError(f"bad tensor entry {t.name} in layer {entry.layer_index}")
