"""One run's outcome in `prfaas bench system`: each planned request's result, and the reader
that fills a result from its response's server-sent events (sans I/O).

TTFT is the first streamed chunk, the time to the second token the second one (a router streams
the first token alone, as soon as the decode instance has it), TPOT (last chunk - first chunk) /
(completion tokens - 1); the
route and KV bytes come from the response's `prfaas` field. A request ends `ok` or as an error
with its reason: none is lost. The runner that makes the requests is `prfaas.bench.loadgen`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

_ERROR_CHARS = 160  # an error reason is cut to this many characters


@dataclass(slots=True)
class RequestResult:
    """What happened to one planned request. `error` is None exactly when it completed."""

    index: int
    at_s: float  # planned send time, s after the start
    num_prompt_tokens: int
    max_tokens: int
    sent_at_s: float = math.nan  # actual send time, s after the start
    first_chunk_at_s: float = math.nan
    last_chunk_at_s: float = math.nan
    finished_at_s: float = math.nan
    num_output_tokens: int = 0
    route: str | None = None
    provider: str | None = None  # the prefill provider it went to (several providers), else None
    kv_bytes: int = 0
    prefill_s: float = math.nan  # the prefill instance's own time, when a PrfaaS router says it
    error: str | None = None
    second_chunk_at_s: float = math.nan  # the second token's chunk

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float:
        return self.first_chunk_at_s - self.sent_at_s

    @property
    def second_token_s(self) -> float:
        return self.second_chunk_at_s - self.sent_at_s

    @property
    def tpot_s(self) -> float:
        if self.num_output_tokens < 2:
            return math.nan
        return (self.last_chunk_at_s - self.first_chunk_at_s) / (self.num_output_tokens - 1)

    def record(self) -> dict[str, Any]:
        """JSON-ready: the facts plus TTFT / TPOT (None when not defined)."""
        out: dict[str, Any] = {
            "index": self.index,
            "at_s": round(self.at_s, 6),
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "route": self.route,
            "provider": self.provider,
            "kv_bytes": self.kv_bytes,
            "error": self.error,
        }
        timings = (
            ("ttft_s", self.ttft_s),
            ("second_token_s", self.second_token_s),
            ("tpot_s", self.tpot_s),
        )
        for key, value in timings:
            out[key] = None if math.isnan(value) or not self.ok else round(value, 6)
        return out


def error_reason(text: str) -> str:
    """One line, at most `_ERROR_CHARS` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 3] + "..."


class StreamReader:
    """Feeds one response's server-sent events into its `RequestResult` (sans I/O)."""

    def __init__(self, result: RequestResult) -> None:
        self.result = result
        self.finish_reason: str | None = None
        self.done = False

    def feed(self, line: str, now_s: float) -> None:
        """One line of the event stream, read at `now_s` (s after the run's start)."""
        line = line.strip()
        if not line.startswith("data:") or self.done:
            return
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            self.result.error = error_reason(f"bad event: {data}")
            self.done = True
            return
        self._event(event, now_s)

    def _event(self, event: Any, now_s: float) -> None:
        r = self.result
        if not isinstance(event, dict):
            r.error, self.done = "bad event: not an object", True
        elif "error" in event:
            r.error = error_reason(f"stream error: {event['error'].get('message', event)}")
            self.done = True
        elif event.get("choices"):
            if math.isnan(r.first_chunk_at_s):
                r.first_chunk_at_s = now_s
            elif math.isnan(r.second_chunk_at_s):
                r.second_chunk_at_s = now_s
            r.last_chunk_at_s = now_s
            choice = event["choices"][0]
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
            info = event.get("prfaas")
            if isinstance(info, dict):
                r.route = info.get("route")
                provider = info.get("provider")
                r.provider = provider if isinstance(provider, str) else None
                r.kv_bytes = int(info.get("kv_bytes") or 0)
                if isinstance(info.get("prefill_s"), int | float):
                    r.prefill_s = float(info["prefill_s"])
        elif isinstance(event.get("usage"), dict):
            r.num_output_tokens = int(event["usage"].get("completion_tokens", 0))

    def close(self, now_s: float) -> None:
        """The stream ended: an error unless it finished with a reason and counted its tokens."""
        r = self.result
        r.finished_at_s = now_s
        if r.error is None and self.finish_reason is None:
            r.error = "stream ended without a finish reason"
        elif r.error is None and self.finish_reason == "error":
            r.error = "generation failed"


@dataclass
class RunOutcome:
    """Every planned request's result, the egress samples, what the timed actions did and
    the run's wall-clock span."""

    results: list[RequestResult]
    egress_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, bytes so far)
    actions: list[dict[str, Any]] = field(default_factory=list)  # name, at_s, done_s, outcome
    wall_s: float = 0.0
