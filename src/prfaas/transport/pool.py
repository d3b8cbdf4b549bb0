"""Receive-buffer pool: anonymous mmaps allocated once, reused across transfers, bounded in bytes.
Not thread-safe: the receiver uses it from its event loop only (release() included).

Pages of an mmap are only backed by memory once written, and `release` gives them back to the
kernel with MADV_DONTNEED, so an abandoned transfer frees its memory even if a view is still alive.
Knows nothing about sockets or frames.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable

_PAGE_BYTES = mmap.PAGESIZE
_MAX_SLACK_FRACTION = 0.25  # reuse a free buffer at most this much larger than asked


class PoolExhaustedError(Exception):
    """Granting the request would exceed the pool's byte budget."""


class PooledBuffer:
    """One reusable buffer; `view` has exactly the requested length."""

    __slots__ = ("capacity_bytes", "mm", "view")

    def __init__(self, mm: mmap.mmap, num_bytes: int) -> None:
        self.mm = mm
        self.capacity_bytes = len(mm)
        self.view = memoryview(mm)[:num_bytes]


class BufferPool:
    """Hands out page-aligned buffers under a total byte budget (in use + idle).

    Idle buffers are kept for reuse up to `max_idle_bytes` and never beyond the most bytes ever
    in use at once (the peak): payload sizes that vary from transfer to transfer would otherwise
    leave an idle buffer of every size seen, and resident memory would creep up to the budget.
    The oldest idle buffers go first."""

    def __init__(self, max_total_bytes: int, max_idle_bytes: int | None = None) -> None:
        self.max_total_bytes = max_total_bytes
        self.max_idle_bytes = max_total_bytes if max_idle_bytes is None else max_idle_bytes
        self._free: list[mmap.mmap] = []
        self.in_use_bytes = 0
        self.idle_bytes = 0
        self.num_allocations = 0  # fresh mmaps created (a reuse does not count)
        self.peak_in_use_bytes = 0  # the most bytes in use at once so far
        self.on_release: Callable[[], None] | None = None  # called after every release

    def can_grant(self, num_bytes: int) -> bool:
        """Whether `acquire(num_bytes)` would succeed now (idle buffers may be unmapped for it)."""
        capacity = _round_up(max(num_bytes, 1))
        if any(capacity <= len(m) <= capacity * (1 + _MAX_SLACK_FRACTION) for m in self._free):
            return True
        return self.in_use_bytes + capacity <= self.max_total_bytes

    def acquire(self, num_bytes: int) -> PooledBuffer:
        """A buffer of `num_bytes`, reused when a free one fits; PoolExhaustedError otherwise."""
        capacity = _round_up(max(num_bytes, 1))
        reused = self._take_free(capacity)
        if reused is not None:
            self.in_use_bytes += len(reused)
            self.peak_in_use_bytes = max(self.peak_in_use_bytes, self.in_use_bytes)
            return PooledBuffer(reused, num_bytes)
        self._shrink_idle(self.max_total_bytes - capacity - self.in_use_bytes)
        if self.in_use_bytes + self.idle_bytes + capacity > self.max_total_bytes:
            raise PoolExhaustedError(
                f"{num_bytes} bytes requested, {self.in_use_bytes} of "
                f"{self.max_total_bytes} already in use"
            )
        self.num_allocations += 1
        self.in_use_bytes += capacity
        self.peak_in_use_bytes = max(self.peak_in_use_bytes, self.in_use_bytes)
        return PooledBuffer(mmap.mmap(-1, capacity), num_bytes)

    def release(self, buf: PooledBuffer, *, drop_pages: bool = False) -> None:
        """Return a buffer; with `drop_pages` its memory goes back to the kernel now."""
        self.in_use_bytes -= buf.capacity_bytes
        if drop_pages:
            buf.mm.madvise(mmap.MADV_DONTNEED)
        self._free.append(buf.mm)
        self.idle_bytes += buf.capacity_bytes
        self._shrink_idle(min(self.max_idle_bytes, self.peak_in_use_bytes))
        if self.on_release is not None:
            self.on_release()

    def _take_free(self, capacity: int) -> mmap.mmap | None:
        fits = [m for m in self._free if capacity <= len(m) <= capacity * (1 + _MAX_SLACK_FRACTION)]
        if not fits:
            return None
        best = min(fits, key=len)
        self._free.remove(best)
        self.idle_bytes -= len(best)
        return best

    def _shrink_idle(self, max_idle_bytes: int) -> None:
        while self._free and self.idle_bytes > max(max_idle_bytes, 0):
            victim = self._free.pop(0)
            self.idle_bytes -= len(victim)
            victim.madvise(mmap.MADV_DONTNEED)
            with contextlib.suppress(BufferError):  # a view is alive; its pages are already freed
                victim.close()


def _round_up(num_bytes: int) -> int:
    return -(-num_bytes // _PAGE_BYTES) * _PAGE_BYTES
