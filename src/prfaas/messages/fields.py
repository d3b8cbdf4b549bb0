"""Strict field readers for `from_dict` of what a peer sends: integers are JSON integers (no
strings, booleans or floats), numbers finite, deadlines positive; anything else is a ValueError
naming the field."""

from __future__ import annotations

import math
from typing import Any

JSONDict = dict[str, Any]


def parse_non_negative_int(value: object, name: str) -> int:
    return parse_int(value, name, minimum=0)


def parse_int(value: object, name: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {shorten(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {shorten(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"{name} must be finite, got {shorten(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def parse_seconds(value: object, name: str) -> float:
    seconds = parse_number(value, name)
    if seconds <= 0:
        raise ValueError(f"{name} must be > 0, got {seconds}")
    return seconds


def parse_str(value: object, name: str, min_chars: int = 0) -> str:
    if not isinstance(value, str) or len(value) < min_chars:
        raise ValueError(f"{name} must be a string of at least {min_chars} characters")
    return value


def parse_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {shorten(value)}")
    return value


def parse_list(value: object, name: str) -> list[Any]:
    return list(_sequence(value, name))


def parse_mapping(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {shorten(value)}")
    return value


def parse_token_ids(value: object, name: str) -> tuple[int, ...]:
    """Token ids as the one immutable form they keep from here on (no intermediate list)."""
    return tuple(parse_int(t, name, minimum=0) for t in _sequence(value, name))


def _sequence(value: object, name: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list, got {shorten(value)}")
    return value


def shorten(value: object) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"
