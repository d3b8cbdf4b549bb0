"""The operator dashboard's memory: bounded ring buffers of what the router already measures.

The router's Prometheus histograms keep totals since start, and the controller's decision log
keeps controller time; the dashboard needs recent values on the wall clock, so the router also
hands each observation here:

- every route decision (`record_route`): the last `NUM_ROUTES` with their reasons, and for the
  offload ratio the route of each decision made in the last `RATIO_WINDOW_S`;
- every time to first token and inter-token gap (`record_ttft`, `record_itl`): the last
  `NUM_LATENCIES` of each, for percentiles over the last `LATENCY_WINDOW_S`;
- every controller decision and finished role change (`record_control`): the last `NUM_EVENTS`;
- one sample per `SAMPLE_PERIOD_S` (`maybe_sample`, called by the poller after each round): t,
  the offload ratio, the link's utilization, TTFT and ITL percentiles, the last `NUM_SAMPLES`
  (10 minutes).

Every buffer has a fixed maximum length, so the memory it takes does not grow with traffic.
Times are wall-clock seconds (`time.time()`), what the page plots against.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

SAMPLE_PERIOD_S = 2.0
NUM_SAMPLES = 300  # 10 minutes of samples
NUM_ROUTES = 50
NUM_EVENTS = 50
NUM_LATENCIES = 4096  # per kind; the percentiles cover at most this many observations
NUM_RATIO_DECISIONS = 4096
LATENCY_WINDOW_S = 60.0
RATIO_WINDOW_S = 60.0
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RouteRecord:
    """One route decision as the dashboard lists it."""

    at_s: float
    req_id: str
    route: str
    reason: str
    prefill_instance: str | None
    decode_instance: str
    num_prompt_tokens: int
    num_incremental_tokens: int
    provider: str | None = None  # the prfaas cluster that prefills (None: the PD cluster)


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99 by nearest rank (None: no values)."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    return {f"p{q}": ordered[max(0, math.ceil(q / 100 * n) - 1)] for q in PERCENTILES}


def control_event(entry: dict[str, Any]) -> tuple[str, str]:
    """A controller log entry as (kind, one-line detail)."""
    kind = str(entry.get("kind", "event"))
    if kind == "threshold":
        old, new = entry["old_threshold_tokens"], entry["new_threshold_tokens"]
        return kind, f"t {old:.0f} -> {new:.0f} tokens"
    if kind == "role_change":
        num = entry["num_instances"]
        return kind, f"{num} x {entry['from_role']} -> {entry['to_role']}"
    instance = entry.get("instance", "?")
    return kind, f"{instance}: {entry.get('from_role')} -> {entry.get('to_role')}"


class DashboardHistory:
    """The ring buffers; `snapshot` returns them as JSON-ready data."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.routes: deque[RouteRecord] = deque(maxlen=NUM_ROUTES)
        self.events: deque[dict[str, Any]] = deque(maxlen=NUM_EVENTS)
        self.samples: deque[dict[str, Any]] = deque(maxlen=NUM_SAMPLES)
        self.ttft_s: deque[tuple[float, float]] = deque(maxlen=NUM_LATENCIES)
        self.itl_s: deque[tuple[float, float]] = deque(maxlen=NUM_LATENCIES)
        self.offloaded: deque[tuple[float, bool]] = deque(maxlen=NUM_RATIO_DECISIONS)
        self._last_sample_at_s = -math.inf

    def record_route(self, record: RouteRecord) -> None:
        self.routes.append(record)
        self.offloaded.append((record.at_s, record.route == "prfaas"))

    def record_ttft(self, seconds: float) -> None:
        self.ttft_s.append((self.clock(), seconds))

    def record_itl(self, seconds: float) -> None:
        self.itl_s.append((self.clock(), seconds))

    def record_control(self, entry: dict[str, Any]) -> None:
        kind, detail = control_event(entry)
        reason = str(entry.get("reason", entry.get("error", "")))
        self.events.append({"at_s": self.clock(), "kind": kind, "detail": detail, "reason": reason})

    def offload_ratio(self, now_s: float) -> float | None:
        """Share of the decisions of the last `RATIO_WINDOW_S` routed to PrfaaS (None: none)."""
        recent = [is_prfaas for at_s, is_prfaas in self.offloaded if at_s > now_s - RATIO_WINDOW_S]
        return sum(recent) / len(recent) if recent else None

    def maybe_sample(
        self, threshold_tokens: float | None, link_utilization: float | None
    ) -> dict[str, Any] | None:
        """Take a sample if `SAMPLE_PERIOD_S` passed since the last one; the sample or None."""
        now_s = self.clock()
        if now_s - self._last_sample_at_s < SAMPLE_PERIOD_S:
            return None
        self._last_sample_at_s = now_s
        sample = {
            "at_s": now_s,
            "threshold_tokens": threshold_tokens,
            "offload_ratio": self.offload_ratio(now_s),
            "link_utilization": link_utilization,
            "ttft_s": _recent_percentiles(self.ttft_s, now_s),
            "itl_s": _recent_percentiles(self.itl_s, now_s),
        }
        self.samples.append(sample)
        return sample

    def snapshot(self) -> dict[str, Any]:
        """Samples oldest first; routes and events newest first."""
        return {
            "sample_period_s": SAMPLE_PERIOD_S,
            "latency_window_s": LATENCY_WINDOW_S,
            "ratio_window_s": RATIO_WINDOW_S,
            "samples": list(self.samples),
            "routes": [asdict(r) for r in reversed(self.routes)],
            "events": list(reversed(self.events)),
        }


def _recent_percentiles(
    observations: deque[tuple[float, float]], now_s: float
) -> dict[str, float] | None:
    return percentiles([v for at_s, v in observations if at_s > now_s - LATENCY_WINDOW_S])
