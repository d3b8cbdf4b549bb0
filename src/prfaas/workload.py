"""Workloads: request-length distributions, arrival processes and trace loading.

Owns everything that describes *what traffic arrives*: the uncached-length distributions the
planner and simulator share (a truncated log-normal in closed form, or the empirical lengths of a
trace), the arrival processes (Poisson, bursty Gamma), and the Mooncake JSONL / Azure CSV
trace readers.

Standard library only. Randomness always comes from a `random.Random` instance the caller seeds; no
clock is read. Bad user input (parameters, files) raises `UserError` with the file and line.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Protocol

from prfaas.errors import UserError
from prfaas.files import check_regular_file

MOONCAKE_BLOCK_TOKENS = 512  # tokens per hash_id in the Mooncake traces
MAX_TRACE_BYTES = 2**30  # a trace file larger than this is refused before reading
MAX_TRACE_REQUESTS = 10_000_000  # rows of one trace (a simulation replays at most as many)
EXPECTATION_POINTS = 4096  # quadrature nodes for E[f(L)] of a continuous distribution
_STD_NORMAL = NormalDist()


class LengthDistribution(Protocol):
    """The interface every length distribution offers (lengths in tokens)."""

    def sample(self, rng: random.Random) -> int: ...

    def prob_greater(self, num_tokens: float) -> float: ...

    def mean_between(self, lo_tokens: float, hi_tokens: float) -> float: ...

    def quantile(self, q: float) -> float: ...

    def mean(self) -> float: ...

    def expect_between(
        self, fn: Callable[[float], float], lo_tokens: float, hi_tokens: float
    ) -> float: ...


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")


@dataclass(frozen=True, slots=True)
class TruncatedLogNormal:
    """ln L ~ N(mu, sigma^2), truncated to [min_tokens, max_tokens]; all moments in closed form."""

    mu: float  # mean of ln(length in tokens)
    sigma: float  # standard deviation of ln(length in tokens)
    min_tokens: float  # lower truncation bound, tokens
    max_tokens: float  # upper truncation bound, tokens

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and math.isfinite(self.sigma)):
            raise UserError(f"log-normal mu and sigma must be finite, got {self.mu}, {self.sigma}")
        if self.sigma <= 0:
            raise UserError(f"log-normal sigma must be > 0, got {self.sigma}")
        if not 0 < self.min_tokens < self.max_tokens or not math.isfinite(self.max_tokens):
            raise UserError(
                "log-normal bounds need 0 < min_tokens < max_tokens < inf, got "
                f"[{self.min_tokens}, {self.max_tokens}]"
            )
        if self._mass() <= 0.0:
            raise UserError(
                f"log-normal(mu={self.mu}, sigma={self.sigma}) has no probability mass in "
                f"[{self.min_tokens}, {self.max_tokens}]"
            )

    def _z(self, num_tokens: float) -> float:
        return (math.log(num_tokens) - self.mu) / self.sigma

    def _cdf_untruncated(self, num_tokens: float) -> float:
        return _STD_NORMAL.cdf(self._z(num_tokens))

    def _mass(self) -> float:
        return self._cdf_untruncated(self.max_tokens) - self._cdf_untruncated(self.min_tokens)

    def _clamp(self, num_tokens: float) -> float:
        return min(max(num_tokens, self.min_tokens), self.max_tokens)

    def cdf(self, num_tokens: float) -> float:
        """P(L <= num_tokens)."""
        x = self._clamp(num_tokens)
        return (self._cdf_untruncated(x) - self._cdf_untruncated(self.min_tokens)) / self._mass()

    def prob_greater(self, num_tokens: float) -> float:
        """P(L > num_tokens)."""
        return 1.0 - self.cdf(num_tokens)

    def _partial_expectation(self, num_tokens: float) -> float:
        """E[L; L <= x] of the untruncated log-normal, x clamped into the support."""
        x = self._clamp(num_tokens)
        scale = math.exp(self.mu + self.sigma**2 / 2)
        return scale * _STD_NORMAL.cdf(self._z(x) - self.sigma)

    def mean_between(self, lo_tokens: float, hi_tokens: float) -> float:
        """E[L | lo < L <= hi]; ValueError when the interval holds no probability mass."""
        lo, hi = self._clamp(lo_tokens), self._clamp(hi_tokens)
        mass = self._cdf_untruncated(hi) - self._cdf_untruncated(lo)
        if hi <= lo or mass <= 0.0:
            raise ValueError(f"no probability mass in ({lo_tokens}, {hi_tokens}]")
        return (self._partial_expectation(hi) - self._partial_expectation(lo)) / mass

    def second_moment_between(self, lo_tokens: float, hi_tokens: float) -> float:
        """E[L^2 | lo < L <= hi] (closed form; used for the expected latency of a quadratic)."""
        lo, hi = self._clamp(lo_tokens), self._clamp(hi_tokens)
        mass = self._cdf_untruncated(hi) - self._cdf_untruncated(lo)
        if hi <= lo or mass <= 0.0:
            raise ValueError(f"no probability mass in ({lo_tokens}, {hi_tokens}]")
        scale = math.exp(2 * self.mu + 2 * self.sigma**2)
        shift = 2 * self.sigma
        part = _STD_NORMAL.cdf(self._z(hi) - shift) - _STD_NORMAL.cdf(self._z(lo) - shift)
        return scale * part / mass

    def mean(self) -> float:
        return self.mean_between(self.min_tokens, self.max_tokens)

    def expect_between(
        self,
        fn: Callable[[float], float],
        lo_tokens: float,
        hi_tokens: float,
        num_points: int = EXPECTATION_POINTS,
    ) -> float:
        """E[fn(L) | lo < L <= hi] by the midpoint rule in probability space (num_points nodes)."""
        q_lo, q_hi = self.cdf(lo_tokens), self.cdf(hi_tokens)
        if q_hi <= q_lo:
            raise ValueError(f"no probability mass in ({lo_tokens}, {hi_tokens}]")
        step = (q_hi - q_lo) / num_points
        total = math.fsum(fn(self.quantile(q_lo + (i + 0.5) * step)) for i in range(num_points))
        return total / num_points

    def quantile(self, q: float) -> float:
        """The length x with P(L <= x) = q."""
        _check_quantile(q)
        lo_cdf = self._cdf_untruncated(self.min_tokens)
        target = lo_cdf + q * self._mass()
        target = min(max(target, 1e-300), 1.0 - 1e-16)
        x = math.exp(self.mu + self.sigma * _STD_NORMAL.inv_cdf(target))
        return self._clamp(x)

    def sample(self, rng: random.Random) -> int:
        """One length by inverse-CDF sampling, rounded to whole tokens within the bounds."""
        x = round(self.quantile(rng.random()))
        return int(min(max(x, math.ceil(self.min_tokens)), math.floor(self.max_tokens)))


class EmpiricalLengths:
    """The lengths of a trace (or any list), each equally likely."""

    __slots__ = ("_prefix_sums", "_values")

    def __init__(self, values: Sequence[float]) -> None:
        if not values:
            raise UserError("an empirical length distribution needs at least one value")
        for v in values:
            if not math.isfinite(v) or v < 0:
                raise UserError(f"lengths must be finite and >= 0, got {v}")
        self._values: list[float] = sorted(float(v) for v in values)
        self._prefix_sums: list[float] = [0.0, *itertools.accumulate(self._values)]

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def prob_greater(self, num_tokens: float) -> float:
        """Fraction of values strictly greater than num_tokens."""
        n = len(self._values)
        return (n - bisect.bisect_right(self._values, num_tokens)) / n

    def _index_range(self, lo_tokens: float, hi_tokens: float) -> tuple[int, int]:
        return bisect.bisect_right(self._values, lo_tokens), bisect.bisect_right(
            self._values, hi_tokens
        )

    def mean_between(self, lo_tokens: float, hi_tokens: float) -> float:
        """Mean of the values v with lo < v <= hi; ValueError when there are none."""
        i, j = self._index_range(lo_tokens, hi_tokens)
        if j <= i:
            raise ValueError(f"no values in ({lo_tokens}, {hi_tokens}]")
        return (self._prefix_sums[j] - self._prefix_sums[i]) / (j - i)

    def second_moment_between(self, lo_tokens: float, hi_tokens: float) -> float:
        """Mean of v^2 over the values v with lo < v <= hi."""
        i, j = self._index_range(lo_tokens, hi_tokens)
        if j <= i:
            raise ValueError(f"no values in ({lo_tokens}, {hi_tokens}]")
        return math.fsum(v * v for v in self._values[i:j]) / (j - i)

    def mean(self) -> float:
        return self._prefix_sums[-1] / len(self._values)

    def expect_between(
        self, fn: Callable[[float], float], lo_tokens: float, hi_tokens: float
    ) -> float:
        """Mean of fn(v) over the values v with lo < v <= hi (exact)."""
        i, j = self._index_range(lo_tokens, hi_tokens)
        if j <= i:
            raise ValueError(f"no values in ({lo_tokens}, {hi_tokens}]")
        return math.fsum(fn(v) for v in self._values[i:j]) / (j - i)

    def quantile(self, q: float) -> float:
        """Linear interpolation between order statistics (numpy's default 'linear' method)."""
        _check_quantile(q)
        pos = q * (len(self._values) - 1)
        i = math.floor(pos)
        j = min(i + 1, len(self._values) - 1)
        return self._values[i] + (pos - i) * (self._values[j] - self._values[i])

    def sample(self, rng: random.Random) -> int:
        return round(self._values[rng.randrange(len(self._values))])


# --- arrival processes -------------------------------------------------------------------------


def _check_rate(rate_per_s: float) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise UserError(f"arrival rate must be a positive number of requests/s, got {rate_per_s}")


def poisson_arrivals(rate_per_s: float, rng: random.Random) -> Iterator[float]:
    """Arrival times in seconds (first one after an exponential gap from 0), endless."""
    _check_rate(rate_per_s)
    arrived_at = 0.0
    while True:
        arrived_at += rng.expovariate(rate_per_s)
        yield arrived_at


def gamma_arrivals(rate_per_s: float, cv: float, rng: random.Random) -> Iterator[float]:
    """Arrival times with Gamma inter-arrival gaps of mean 1/rate and coefficient of variation cv.

    cv = 1 is Poisson; cv > 1 is bursty (shape 1/cv^2 < 1 clusters arrivals).
    """
    _check_rate(rate_per_s)
    if not (math.isfinite(cv) and cv > 0):
        raise UserError(f"inter-arrival cv must be > 0, got {cv}")
    shape = 1.0 / cv**2
    scale_s = 1.0 / (rate_per_s * shape)
    arrived_at = 0.0
    while True:
        arrived_at += rng.gammavariate(shape, scale_s)
        yield arrived_at


# --- traces ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a replayed trace."""

    arrival_s: float  # arrival time, seconds after the trace's first request
    num_input_tokens: int  # prompt length, tokens
    num_output_tokens: int  # generated length, tokens
    hash_ids: tuple[int, ...]  # prefix-block hashes (512-token blocks); empty when unknown


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Read a Mooncake JSONL (`.jsonl`) or Azure CSV (`.csv`) trace, sorted by arrival time."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"trace file not found: {p}")
    check_regular_file(p, MAX_TRACE_BYTES)  # not a directory, FIFO or device; at most 1 GiB
    if p.suffix not in (".jsonl", ".csv"):
        raise UserError(f"{p}: unknown trace format (expected .jsonl Mooncake or .csv Azure)")
    try:
        requests = _load_mooncake(p) if p.suffix == ".jsonl" else _load_azure(p)
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{p}: not a readable CSV trace ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not requests:
        raise UserError(f"{p}: trace holds no requests")
    return sorted(requests, key=lambda r: r.arrival_s)


def _nonneg_int(value: object, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: {what} must be a non-negative integer, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise UserError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return int(number)


def _mooncake_row(row: object, where: str) -> TraceRequest:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    hash_ids = row.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
    ):
        raise UserError(f"{where}: hash_ids must be a list of integers")
    return TraceRequest(
        arrival_s=_nonneg_int(row["timestamp"], "timestamp (ms)", where) / 1000.0,
        num_input_tokens=_nonneg_int(row["input_length"], "input_length", where),
        num_output_tokens=_nonneg_int(row["output_length"], "output_length", where),
        hash_ids=tuple(hash_ids),
    )


def _load_mooncake(path: Path) -> list[TraceRequest]:
    requests = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: malformed JSON ({exc.msg})") from None
            requests.append(_mooncake_row(row, where))
            _check_trace_rows(len(requests), where)
    return requests


def _check_trace_rows(num_rows: int, where: str) -> None:
    if num_rows > MAX_TRACE_REQUESTS:
        raise UserError(f"{where}: a trace may hold at most {MAX_TRACE_REQUESTS:,} requests")


_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _parse_azure_timestamp(text: str, where: str) -> float:
    """Seconds since the epoch (naive, UTC assumed) of '2023-11-16 18:17:03.9799600'."""
    base, _, fraction = text.strip().partition(".")
    try:
        seconds = datetime.fromisoformat(base).timestamp()
    except ValueError:
        raise UserError(f"{where}: bad TIMESTAMP {text!r}") from None
    if fraction and not fraction.isdigit():
        raise UserError(f"{where}: bad TIMESTAMP {text!r}")
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _load_azure(path: Path) -> list[TraceRequest]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _AZURE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}")
        rows: list[tuple[float, int, int]] = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            _check_trace_rows(len(rows) + 1, where)
            if any(row.get(c) in (None, "") for c in _AZURE_COLUMNS):
                raise UserError(f"{where}: row has an empty or missing value")
            rows.append(
                (
                    _parse_azure_timestamp(row["TIMESTAMP"], where),
                    _nonneg_int(row["ContextTokens"], "ContextTokens", where),
                    _nonneg_int(row["GeneratedTokens"], "GeneratedTokens", where),
                )
            )
    if not rows:
        return []
    first_s = rows[0][0]
    return [TraceRequest(t - first_s, n_in, n_out, ()) for t, n_in, n_out in rows]


def uncached_lengths(
    requests: Sequence[TraceRequest], block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> list[int]:
    """Incremental prefill length of each request, replayed in order with an infinite prefix cache.

    A request's hit is the longest run of leading hash_ids already seen; the hit covers
    min(hit_blocks * block_tokens, num_input_tokens) tokens. Without hash_ids nothing hits.
    """
    if block_tokens <= 0:
        raise UserError(f"block size must be > 0 tokens, got {block_tokens}")
    seen: set[int] = set()
    lengths = []
    for req in requests:
        hit_blocks = 0
        for h in req.hash_ids:
            if h not in seen:
                break
            hit_blocks += 1
        seen.update(req.hash_ids)
        lengths.append(req.num_input_tokens - min(hit_blocks * block_tokens, req.num_input_tokens))
    return lengths
