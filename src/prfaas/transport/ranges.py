"""Byte-range bookkeeping and frame planning for KV transfers, sans-IO: no sockets, no clocks.

Receiver side: `RangeSet` tracks which payload bytes arrived intact, `layer_span` gives the
payload range a layer's buffer must hold. Sender side: `plan_slices` cuts a layer's tensor views
into payload frames, `slices_for_ranges` picks the frames that cover the ranges a NACK asks for.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.messages import LayerEntry


class RangeSet:
    """Disjoint, sorted half-open byte ranges [start, end)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j], self._ends[i:j] = [start], [end]

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """Sub-ranges of [start, end) not covered, as (offset, length)."""
        out: list[tuple[int, int]] = []
        cursor = start
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= cursor:
                continue
            if s >= end:
                break
            if s > cursor:
                out.append((cursor, s - cursor))
            cursor = max(cursor, e)
        if cursor < end:
            out.append((cursor, end - cursor))
        return out

    @property
    def covered_bytes(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))


def layer_span(layer: LayerEntry) -> tuple[int, int]:
    """[start, end) payload offsets of a layer's tensors; (0, 0) for a layer without tensors."""
    if not layer.tensors:
        return 0, 0
    return (
        min(t.offset_bytes for t in layer.tensors),
        max(t.offset_bytes + t.num_bytes for t in layer.tensors),
    )


@dataclass(frozen=True, slots=True)
class PayloadSlice:
    """One payload frame to send: bytes [offset, offset+len(view)) of one tensor."""

    layer_index: int
    tensor_index: int
    offset_bytes: int  # global payload offset of view[0]
    view: memoryview


def plan_slices(
    layer: LayerEntry, views: Sequence[memoryview], frame_bytes: int
) -> list[PayloadSlice]:
    """Cut a layer's tensors (views[i] holds layer.tensors[i]) into frames of <= frame_bytes."""
    if len(views) != len(layer.tensors):
        raise ValueError(f"layer {layer.layer_index}: {len(views)} views for {len(layer.tensors)}")
    out: list[PayloadSlice] = []
    for ti, (entry, view) in enumerate(zip(layer.tensors, views, strict=True)):
        flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(flat) != entry.num_bytes:
            raise ValueError(f"{entry.name}: view has {len(flat)} bytes, entry {entry.num_bytes}")
        for pos in range(0, entry.num_bytes, frame_bytes):
            chunk = flat[pos : pos + frame_bytes]
            out.append(PayloadSlice(layer.layer_index, ti, entry.offset_bytes + pos, chunk))
    return out


def slices_for_ranges(
    slices: Sequence[PayloadSlice], ranges: Sequence[tuple[int, int]]
) -> list[PayloadSlice]:
    """The planned slices that overlap any (offset, length) range, each once, in order."""
    picked: list[PayloadSlice] = []
    for s in slices:
        s_end = s.offset_bytes + len(s.view)
        if any(off < s_end and s.offset_bytes < off + n for off, n in ranges):
            picked.append(s)
    return picked
