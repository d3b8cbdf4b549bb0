"""A run's requests as a Chrome trace-event timeline (open in Perfetto or chrome://tracing).

One track per instance and one per link ("link", or "link NAME" for each of several providers):
each request shows as a prefill span on its prefill
instance, a transfer span on the link for an offloaded request (from prefill end to KV landed: the
part of the layer-wise transfer that prefill did not hide) and a decode span (from its first
decode step to its last) on its decode instance. Built from the request log after the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prfaas.sim.metrics import RequestLog

US_PER_S = 1e6


def _span(name: str, track: str, start_s: float, end_s: float, req_index: int) -> dict[str, Any]:
    return {
        "name": name,
        "cat": name,
        "ph": "X",
        "pid": track,
        "tid": track,
        "ts": round(start_s * US_PER_S),
        "dur": round((end_s - start_s) * US_PER_S),
        "args": {"req": req_index},
    }


def timeline_events(
    log: RequestLog, label: str, provider_of: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Trace events of every request that got that far; `label` prefixes every track name.
    `provider_of` (several providers): each request's provider, whose link carries its KV."""
    events = []
    for i in range(log.num_requests):
        link = f"link {provider_of[i]}" if provider_of and provider_of[i] else "link"
        stages = [
            ("prefill", log.prefill_instance[i], log.prefill_started_at[i], log.prefill_done_at[i]),
            ("transfer", link, log.prefill_done_at[i], log.kv_ready_at[i]),
            ("decode", log.decode_instance[i], log.decode_started_at[i], log.finished_at[i]),
        ]
        for name, track, start_s, end_s in stages:
            if name == "transfer" and not log.is_offloaded[i]:
                continue
            if math.isnan(start_s) or math.isnan(end_s):
                continue
            events.append(_span(name, f"{label} {track}", start_s, end_s, i))
    return events
