"""Measured prefill profiles: (length, latency[, KV size]) tables and their interpolation.

A profile is a latency source for `prfaas kv`, the planner and the calibration of the cost
model. Files are CSV (header row) or JSON (a list of rows, or an object with "rows" and metadata).
Columns: `tokens`, `t_prefill_s`, and optionally `kv_bytes` or `s_kv_mib` (MiB = 2^20 bytes).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.types import MIB

TOKENS_COLUMNS = ("tokens", "num_tokens", "length", "prompt_tokens")
LATENCY_COLUMNS = ("t_prefill_s", "latency_s", "prefill_s", "ttft_s")
KV_BYTES_COLUMNS = ("kv_bytes", "s_kv_bytes")
KV_MIB_COLUMNS = ("s_kv_mib", "kv_mib")
PROFILE_PRESETS: dict[str, str] = {"paper-1t-h200": "paper-1t-h200.json"}


@dataclass(frozen=True, slots=True)
class PrefillProfile:
    """Prefill latency of one instance measured at a few prompt lengths (strictly increasing)."""

    lengths: tuple[int, ...]  # prompt tokens, strictly increasing, > 0
    latencies_s: tuple[float, ...]  # prefill latency at each length, seconds, > 0
    kv_bytes: tuple[int, ...] | None = None  # measured S_kv at each length, bytes
    name: str = ""
    hardware: str | None = None  # hardware preset the profile was measured on ("H200")
    num_gpus: int | None = None  # GPUs of the measured instance
    model: str | None = None  # model preset or config the profile belongs to
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if len(self.lengths) < 2:
            raise ValueError("a profile needs at least two rows")
        if len(self.latencies_s) != len(self.lengths):
            raise ValueError("lengths and latencies have different sizes")
        if self.kv_bytes is not None and len(self.kv_bytes) != len(self.lengths):
            raise ValueError("lengths and kv sizes have different sizes")
        if any(n <= 0 for n in self.lengths):
            raise ValueError("profile lengths must be positive")
        if any(b <= a for a, b in zip(self.lengths, self.lengths[1:], strict=False)):
            raise ValueError(f"profile lengths must be strictly increasing, got {self.lengths}")
        if any(not t > 0 for t in self.latencies_s):
            raise ValueError("profile latencies must be positive")
        if self.kv_bytes is not None and any(b <= 0 for b in self.kv_bytes):
            raise ValueError("profile KV sizes must be positive")

    def t_prefill_s(self, num_tokens: int) -> float:
        """Latency at `num_tokens`: linear interpolation, linear extrapolation outside the table."""
        value = _interpolate(self.lengths, self.latencies_s, num_tokens)
        if value <= 0:
            raise ValueError(
                f"extrapolating the profile to {num_tokens} tokens gives {value:.3g} s"
            )
        return value

    def kv_bytes_at(self, num_tokens: int) -> int | None:
        """Measured S_kv interpolated inside the measured range; None outside it or if absent."""
        if self.kv_bytes is None or not self.lengths[0] <= num_tokens <= self.lengths[-1]:
            return None
        return round(_interpolate(self.lengths, [float(b) for b in self.kv_bytes], num_tokens))


def _interpolate(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# ---------------------------------------------------------------------------- loading


def list_profiles() -> list[str]:
    return sorted(PROFILE_PRESETS)


def load_profile(name_or_path: str | Path) -> PrefillProfile:
    """A profile preset ("paper-1t-h200") or a CSV / JSON file."""
    text = str(name_or_path)
    key = text.strip().lower()
    if key in PROFILE_PRESETS:
        data = resources.files("prfaas.perf").joinpath("profiles", PROFILE_PRESETS[key])
        return _from_text(data.read_text(encoding="utf-8"), "json", key, f"preset:{key}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(
            f"unknown profile {text!r}: not a preset ({', '.join(list_profiles())}) "
            "and no such file"
        )
    content = read_text_file(path)
    kind = "json" if path.suffix.lower() == ".json" else "csv"
    return _from_text(content, kind, path.stem, str(path))


def _from_text(content: str, kind: str, name: str, where: str) -> PrefillProfile:
    meta: Mapping[str, Any] = {}
    if kind == "json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        if isinstance(data, Mapping):
            meta, data = data, data.get("rows")
        if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
            raise UserError(f"{where}: expected a list of row objects (or an object with 'rows')")
        rows: list[Mapping[str, Any]] = data
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(content)))
        except csv.Error as exc:
            raise UserError(f"{where} is not a readable CSV profile: {exc}") from None
    try:
        return profile_from_rows(rows, name=str(meta.get("name", name)), source=where, meta=meta)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from exc


def _column(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _number(value: Any, column: str, row_number: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"row {row_number}: {column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"row {row_number}: {column} {value!r} is not a finite number")
    return number


def profile_from_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    name: str = "",
    source: str = "",
    meta: Mapping[str, Any] | None = None,
) -> PrefillProfile:
    """Build a profile from row mappings; raises ValueError naming the first bad row or column."""
    if not rows:
        raise ValueError("profile has no rows")
    lengths, latencies, kv = [], [], []
    for number, row in enumerate(rows, start=1):
        tokens, latency = _column(row, TOKENS_COLUMNS), _column(row, LATENCY_COLUMNS)
        if tokens is None or latency is None:
            raise ValueError(
                f"row {number} lacks a required column: need one of {'/'.join(TOKENS_COLUMNS)} "
                f"and one of {'/'.join(LATENCY_COLUMNS)}"
            )
        tokens_value = _number(tokens, "tokens", number)
        if tokens_value != int(tokens_value):
            raise ValueError(f"row {number}: tokens {tokens!r} is not an integer")
        lengths.append(int(tokens_value))
        latencies.append(_number(latency, "t_prefill_s", number))
        kv.append(_kv_bytes(row, number))
    measured = None if all(b is None for b in kv) else kv
    if measured is not None and any(b is None for b in measured):
        raise ValueError("kv size given for some rows but not all")
    meta = meta or {}
    return PrefillProfile(
        lengths=tuple(lengths),
        latencies_s=tuple(latencies),
        kv_bytes=None if measured is None else tuple(int(b or 0) for b in measured),
        name=name,
        hardware=_opt_str(meta.get("hardware")),
        num_gpus=_opt_positive_int(meta.get("num_gpus"), "num_gpus"),
        model=_opt_str(meta.get("model")),
        source=str(meta.get("source", source)),
    )


def _kv_bytes(row: Mapping[str, Any], number: int) -> int | None:
    raw_bytes = _column(row, KV_BYTES_COLUMNS)
    if raw_bytes is not None:
        return round(_number(raw_bytes, "kv_bytes", number))
    raw_mib = _column(row, KV_MIB_COLUMNS)
    if raw_mib is not None:
        return round(_number(raw_mib, "s_kv_mib", number) * MIB)
    return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_positive_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value
