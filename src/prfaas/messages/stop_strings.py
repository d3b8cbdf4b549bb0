"""The stop-string rule of `SamplingParams.stop`, written once for the engine and the router.

A request's text ends before the first occurrence of any of its (non-empty) stop strings, and
the stop string is not part of it. The engine decides with `StopStrings.first_index` when decoding
ends (on a decoded tail of the output at least `StopStrings.tail_chars` long); the router's text
stream cuts the text at the same index and holds back `StopStrings.num_hold_chars` characters,
which could still become the start of one. Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

STOP_MARGIN_CHARS = 8  # characters the engine decodes beyond the longest stop string


@dataclass(frozen=True, slots=True)
class StopStrings:
    """A request's stop strings, empty ones dropped (they never match)."""

    strings: tuple[str, ...]

    @classmethod
    def of(cls, stop: Iterable[str]) -> StopStrings:
        return cls(tuple(s for s in stop if s))

    def __bool__(self) -> bool:
        return bool(self.strings)

    @property
    def longest_chars(self) -> int:
        """Characters of the longest stop string (0 without any)."""
        return max((len(s) for s in self.strings), default=0)

    @property
    def tail_chars(self) -> int:
        """Characters of decoded output tail the engine checks after each token: the longest
        stop string plus a margin, so a stop string completed by the newest token lies in it."""
        return self.longest_chars + STOP_MARGIN_CHARS

    @property
    def num_hold_chars(self) -> int:
        """Characters at the end of streamed text that could still begin a stop string."""
        return max(self.longest_chars - 1, 0)

    def first_index(self, text: str) -> int | None:
        """Where the text ends under this rule: the index of the earliest stop string in
        `text`, or None when none occurs."""
        hits = [i for s in self.strings if (i := text.find(s)) >= 0]
        return min(hits) if hits else None
