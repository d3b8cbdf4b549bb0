"""A request's payload as bytes, without torch: the layers laid back to back (`collect_layers`)
and the received buffers seen as one address space (`PayloadBytes`). The torch engine's
`kv_import` wraps these bytes as tensors; the emulated engine compares them as bytes, so an
emulated deployment serves with the base install (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prfaas.engine.protocol import LayerState
from prfaas.engine.validation import ManifestMismatch
from prfaas.messages import LayerEntry


def collect_layers(
    num_layers: int, layer_at: Callable[[int, int], LayerState]
) -> tuple[list[LayerEntry], list[memoryview]]:
    """The entries and buffers of a payload's layers 0..num_layers-1, layer i built by
    `layer_at(i, offset)` at the offset where layer i-1 ended."""
    layers: list[LayerEntry] = []
    buffers: list[memoryview] = []
    offset = 0
    for i in range(num_layers):
        state = layer_at(i, offset)
        layers.append(state.entry)
        buffers.extend(state.buffers)
        offset += state.entry.num_bytes
    return layers, buffers


class PayloadBytes:
    """Several bytes-like buffers seen as one address space [0, num_bytes)."""

    def __init__(self, buffers: Sequence[Any]):
        self._views = [memoryview(b).cast("B") for b in buffers]
        self._starts: list[int] = []
        start = 0
        for view in self._views:
            self._starts.append(start)
            start += view.nbytes
        self.num_bytes = start

    def view(self, offset: int, num_bytes: int) -> memoryview:
        """Bytes [offset, offset + num_bytes): a view into one buffer, or a joined copy when
        the range spans buffers. ManifestMismatch when the payload is shorter."""
        end = offset + num_bytes
        if end > self.num_bytes:
            raise ManifestMismatch(f"payload has {self.num_bytes} bytes, manifest needs {end}")
        for start, view in zip(self._starts, self._views, strict=True):
            if start <= offset and end <= start + view.nbytes:
                return view[offset - start : end - start]
        joined = bytearray()
        for start, view in zip(self._starts, self._views, strict=True):
            lo, hi = max(offset, start), min(end, start + view.nbytes)
            if lo < hi:
                joined += view[lo - start : hi - start]
        return memoryview(joined)
