"""The load generator of `prfaas bench system`: a seeded open-loop schedule of synthetic requests,
replayed against any running router over its OpenAI API, with every request accounted for.

Owns three things:

- the *schedule* (pure, seeded): arrival times (Poisson at a rate, or a trace's timestamps
  stretched to a rate), prompt lengths drawn from a length distribution (or the trace's), output
  lengths, and synthetic token-id prompts (ids in the tiny byte tokenizer's printable range;
  trace prompts reuse one block of ids per trace hash id, so shared prefixes stay shared);
- the *runner* (asyncio + aiohttp): each request is a streamed `/v1/completions` call sent at its
  time whatever the others do (open loop); TTFT is the first streamed chunk, TPOT
  (last chunk - first chunk) / (completion tokens - 1), and the route and KV bytes come from the
  response's `prfaas` field. A request ends `ok` or as an error with its reason: none is lost;
- the *egress sampler*: the PrfaaS prefill instances' transport byte counters
  (`prfaas:kv_transfer_bytes_total`), scraped from their `/metrics` once per period, or any
  other byte counter (a testbed reads its WAN qdisc's);
- *timed actions*: blocking calls made at set times of the run (a testbed's link drop and its
  end), each logged with its outcome.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prfaas.errors import UserError
from prfaas.workload import LengthDistribution, TraceRequest, poisson_arrivals

PROMPT_TOKEN_IDS = (10, 250)  # [lo, hi): ids every tiny byte-tokenizer vocabulary accepts
TRACE_BLOCK_TOKENS = 512  # tokens per hash id of a Mooncake trace
MAX_REQUESTS = 100_000  # requests of one run
MAX_DURATION_S = 24 * 3600.0  # arrival window of one run
MAX_OUTPUT_TOKENS = 1 << 20
EGRESS_COUNTER = "prfaas:kv_transfer_bytes_total"
_ERROR_CHARS = 160  # an error reason is cut to this many characters


# ---- the schedule (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of a run: when to send it (s after the start), its prompt and output length."""

    at_s: float
    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Burst:
    """Extra Poisson arrivals of one prompt length during a window of the run."""

    at_s: float  # window start, s after the run's start
    duration_s: float
    rate_per_s: float
    num_tokens: int  # prompt length of every burst request

    def __post_init__(self) -> None:
        values = (self.at_s, self.duration_s, self.rate_per_s)
        if not all(math.isfinite(v) for v in values) or self.at_s < 0:
            raise UserError(f"a burst needs a finite start >= 0, got {self.at_s}")
        if not (0 < self.duration_s <= MAX_DURATION_S and 0 < self.rate_per_s <= 1e4):
            raise UserError(
                f"a burst needs a duration in (0, {MAX_DURATION_S:g}] s and a rate in (0, 1e4] "
                f"requests/s, got {self.duration_s} s at {self.rate_per_s}/s"
            )
        if self.rate_per_s * self.duration_s > MAX_REQUESTS:
            raise UserError(f"a burst of more than {MAX_REQUESTS} requests")
        if self.num_tokens < 1:
            raise UserError(f"a burst's prompt needs at least one token, got {self.num_tokens}")


@dataclass(frozen=True, slots=True)
class Workload:
    """What to send: lengths from a distribution (with a fixed output length), or a trace,
    and optionally a burst of one prompt length on top."""

    lengths: LengthDistribution | None = None
    output_tokens: int = 1024
    trace: tuple[TraceRequest, ...] | None = None
    max_model_len: int | None = None  # prompt + output fit this: prompts are cut to fit
    burst: Burst | None = None

    def __post_init__(self) -> None:
        if (self.lengths is None) == (self.trace is None):
            raise ValueError("a workload has either a length distribution or a trace")
        if not 1 <= self.output_tokens <= MAX_OUTPUT_TOKENS:
            raise UserError(
                f"output tokens must be in [1, {MAX_OUTPUT_TOKENS}], got {self.output_tokens}"
            )
        if self.trace is not None and not self.trace:
            raise UserError("the trace holds no requests")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UserError(f"a context of {self.max_model_len} tokens leaves no room to run")

    def prompt_tokens(self, num_tokens: int, max_tokens: int) -> int:
        """`num_tokens` cut so that prompt + `max_tokens` fit the model's context (>= 1)."""
        if self.max_model_len is not None:
            num_tokens = min(num_tokens, self.max_model_len - max_tokens)
        return max(1, num_tokens)

    def output_tokens_of(self, num_tokens: int) -> int:
        """An output length within bounds, leaving a prompt token of the model's context."""
        limit = MAX_OUTPUT_TOKENS if self.max_model_len is None else self.max_model_len - 1
        return max(1, min(limit, MAX_OUTPUT_TOKENS, num_tokens))


def check_run_bounds(rate_per_s: float | None, num_requests: int, max_duration_s: float) -> None:
    """UserError unless the run's rate, request count and window are finite and within bounds."""
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise UserError(f"rate must be > 0 requests/s, got {rate_per_s}")
    if not 1 <= num_requests <= MAX_REQUESTS:
        raise UserError(f"number of requests must be in [1, {MAX_REQUESTS}], got {num_requests}")
    if not (math.isfinite(max_duration_s) and 0 < max_duration_s <= MAX_DURATION_S):
        raise UserError(f"max duration must be in (0, {MAX_DURATION_S:g}] s, got {max_duration_s}")


def arrival_times_s(
    rate_per_s: float, num_requests: int, max_duration_s: float, rng: random.Random
) -> list[float]:
    """Poisson arrivals from 0: at most `num_requests`, none later than `max_duration_s`."""
    check_run_bounds(rate_per_s, num_requests, max_duration_s)
    times: list[float] = []
    for at_s in poisson_arrivals(rate_per_s, rng):
        if len(times) >= num_requests or at_s > max_duration_s:
            break
        times.append(at_s)
    return times


def trace_times_s(
    trace: Sequence[TraceRequest],
    rate_per_s: float | None,
    num_requests: int,
    max_duration_s: float,
) -> list[float]:
    """The first `num_requests` trace arrivals from 0, stretched so their mean rate is
    `rate_per_s` (None: the trace's own timing), none later than `max_duration_s`."""
    check_run_bounds(rate_per_s, num_requests, max_duration_s)
    head = trace[:num_requests]
    start = head[0].arrival_s
    offsets = [r.arrival_s - start for r in head]
    factor = 1.0
    if rate_per_s is not None and len(head) > 1 and offsets[-1] > 0:
        factor = (len(head) - 1) / offsets[-1] / rate_per_s
    elif rate_per_s is not None:  # one request, or all at once: evenly spaced at the rate
        offsets = [i / rate_per_s for i in range(len(head))]
    return [t * factor for t in offsets if t * factor <= max_duration_s]


def synthetic_prompt(
    num_tokens: int, rng: random.Random, hash_ids: Sequence[int] = ()
) -> tuple[int, ...]:
    """`num_tokens` token ids: one seeded block of `TRACE_BLOCK_TOKENS` per hash id (equal ids
    give equal blocks), then ids from `rng`."""
    if num_tokens < 1:
        raise ValueError(f"a prompt needs at least one token, got {num_tokens}")
    lo, hi = PROMPT_TOKEN_IDS
    ids: list[int] = []
    for hash_id in hash_ids:
        if len(ids) >= num_tokens:
            break
        block = random.Random(hash_id)
        ids.extend(block.randrange(lo, hi) for _ in range(TRACE_BLOCK_TOKENS))
    ids = ids[:num_tokens]
    ids.extend(rng.randrange(lo, hi) for _ in range(num_tokens - len(ids)))
    return tuple(ids)


def build_schedule(
    workload: Workload,
    rate_per_s: float | None,
    num_requests: int,
    max_duration_s: float,
    seed: int,
) -> list[PlannedRequest]:
    """The run's requests in arrival order; the same arguments give the same schedule."""
    planned = _base_schedule(workload, rate_per_s, num_requests, max_duration_s, seed)
    if workload.burst is None:
        return planned
    extra = burst_schedule(workload, workload.burst, random.Random(seed + 1))
    return sorted(planned + extra, key=lambda p: p.at_s)


def burst_schedule(workload: Workload, burst: Burst, rng: random.Random) -> list[PlannedRequest]:
    """The burst's requests: Poisson arrivals at its rate within its window."""
    max_tokens = workload.output_tokens_of(workload.output_tokens)
    num_prompt = workload.prompt_tokens(burst.num_tokens, max_tokens)
    planned = []
    for offset_s in poisson_arrivals(burst.rate_per_s, rng):
        if offset_s > burst.duration_s:
            break
        planned.append(
            PlannedRequest(burst.at_s + offset_s, synthetic_prompt(num_prompt, rng), max_tokens)
        )
    return planned


def _base_schedule(
    workload: Workload,
    rate_per_s: float | None,
    num_requests: int,
    max_duration_s: float,
    seed: int,
) -> list[PlannedRequest]:
    rng = random.Random(seed)
    if workload.trace is not None:
        times = trace_times_s(workload.trace, rate_per_s, num_requests, max_duration_s)
        planned = []
        for at_s, r in zip(times, workload.trace, strict=False):
            max_tokens = workload.output_tokens_of(r.num_output_tokens)
            num_prompt = workload.prompt_tokens(r.num_input_tokens, max_tokens)
            prompt = synthetic_prompt(num_prompt, rng, r.hash_ids)
            planned.append(PlannedRequest(at_s, prompt, max_tokens))
        return planned
    if rate_per_s is None:
        raise UserError("a length-distribution workload needs a rate")
    assert workload.lengths is not None
    times = arrival_times_s(rate_per_s, num_requests, max_duration_s, rng)
    max_tokens = workload.output_tokens_of(workload.output_tokens)
    lengths = [workload.prompt_tokens(workload.lengths.sample(rng), max_tokens) for _ in times]
    return [
        PlannedRequest(at_s, synthetic_prompt(n, rng), max_tokens)
        for at_s, n in zip(times, lengths, strict=True)
    ]


def warmup_schedule(
    threshold_tokens: float, max_model_len: int | None, num_rounds: int = 2
) -> list[PlannedRequest]:
    """Unmeasured requests that take each path once per round before a run: a short prompt
    (local prefill) and, when t is finite, one of t + 64 tokens (offloaded); 2 output tokens."""
    cap = (max_model_len or 1 << 30) - 2
    lengths = [16]
    if math.isfinite(threshold_tokens):
        lengths.append(int(threshold_tokens) + 64)
    rng = random.Random(0)
    return [
        PlannedRequest(0.0, synthetic_prompt(max(1, min(cap, n)), rng), 2)
        for _ in range(num_rounds)
        for n in lengths
    ]


# ---- one request's outcome -----------------------------------------------------------------


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
    kv_bytes: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float:
        return self.first_chunk_at_s - self.sent_at_s

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
            "kv_bytes": self.kv_bytes,
            "error": self.error,
        }
        for key, value in (("ttft_s", self.ttft_s), ("tpot_s", self.tpot_s)):
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
            r.last_chunk_at_s = now_s
            choice = event["choices"][0]
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
            info = event.get("prfaas")
            if isinstance(info, dict):
                r.route = info.get("route")
                r.kv_bytes = int(info.get("kv_bytes") or 0)
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


# ---- the runner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where and how to send: the router's base URL, its model id and an optional API key."""

    url: str
    model: str
    api_key: str | None = None
    request_timeout_s: float = 600.0

    def headers(self) -> dict[str, str]:
        return {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}


@dataclass(frozen=True)
class TimedAction:
    """A blocking call made `at_s` after the run's start (on a worker thread)."""

    at_s: float
    name: str
    call: Callable[[], Any]


@dataclass
class RunOutcome:
    """Every planned request's result, the egress samples, what the timed actions did and
    the run's wall-clock span."""

    results: list[RequestResult]
    egress_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, bytes so far)
    actions: list[dict[str, Any]] = field(default_factory=list)  # name, at_s, done_s, outcome
    wall_s: float = 0.0


def request_body(target: Target, planned: PlannedRequest) -> dict[str, Any]:
    return {
        "model": target.model,
        "prompt": list(planned.prompt_token_ids),
        "max_tokens": planned.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def probe_router(url: str, api_key: str | None, timeout_s: float = 5.0) -> dict[str, Any]:
    """The first model of `GET /v1/models` (id, max_model_len); UserError when unreachable."""
    import aiohttp

    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as client,
            client.get(f"{url}/v1/models", headers=headers) as reply,
        ):
            if reply.status != 200:
                raise UserError(f"router at {url}: GET /v1/models answered HTTP {reply.status}")
            body = await reply.json(content_type=None)
            return dict(body["data"][0])
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = error_reason(str(exc) or type(exc).__name__)
        raise UserError(f"cannot reach the router at {url}: {reason}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"router at {url}: GET /v1/models is not an OpenAI model list") from None


async def _one(
    client: Any, target: Target, planned: PlannedRequest, result: RequestResult, start: float
) -> None:
    import aiohttp

    reader = StreamReader(result)
    result.sent_at_s = time.monotonic() - start
    try:
        async with client.post(
            f"{target.url}/v1/completions",
            json=request_body(target, planned),
            headers=target.headers(),
        ) as reply:
            if reply.status != 200:
                text = await reply.text()
                result.error = error_reason(f"HTTP {reply.status}: {_api_message(text)}")
            else:
                async for raw in reply.content:
                    reader.feed(raw.decode("utf-8", "replace"), time.monotonic() - start)
                    if reader.done:
                        break
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result.error = error_reason(f"{type(exc).__name__}: {exc}")
    reader.close(time.monotonic() - start)


def _api_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text


async def _scrape_egress(client: Any, urls: Sequence[str]) -> int:
    """The summed egress counter of `urls`; an instance that does not answer counts 0 now (its
    counter's total comes back with the next scrape)."""
    import aiohttp

    total = 0
    for url in urls:
        try:
            async with client.get(f"{url}/metrics") as reply:
                total += counter_total(await reply.text(), EGRESS_COUNTER)
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
    return total


async def _sample_egress(
    read_bytes: Callable[[], Awaitable[int]],
    period_s: float,
    start: float,
    samples: list[tuple[float, int]],
) -> None:
    while True:
        total = await read_bytes()
        samples.append((time.monotonic() - start, total))
        await asyncio.sleep(period_s)


async def _run_action(action: TimedAction, start: float, log: list[dict[str, Any]]) -> None:
    """Call `action` at its time on a worker thread; log when and how it ended."""
    await asyncio.sleep(max(0.0, start + action.at_s - time.monotonic()))
    record: dict[str, Any] = {"name": action.name, "at_s": action.at_s}
    try:
        record["outcome"] = await asyncio.to_thread(action.call)
    except Exception as exc:  # reported with the run, which goes on
        record["error"] = error_reason(f"{type(exc).__name__}: {exc}")
    record["done_s"] = round(time.monotonic() - start, 3)
    log.append(record)


def counter_total(metrics_text: str, name: str) -> int:
    """The sum over labels of a Prometheus counter in text exposition format."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                continue
    return int(total)


async def _reported(
    one: Awaitable[None],
    result: RequestResult,
    on_done: Callable[[RequestResult], None] | None,
) -> None:
    await one
    if on_done is not None:
        on_done(result)


async def run_schedule(
    target: Target,
    schedule: Sequence[PlannedRequest],
    egress_urls: Sequence[str] = (),
    sample_period_s: float = 1.0,
    on_done: Callable[[RequestResult], None] | None = None,
    read_egress_bytes: Callable[[], int] | None = None,
    actions: Sequence[TimedAction] = (),
) -> RunOutcome:
    """Send every planned request at its time (open loop) and wait for all of them, and for
    the timed actions. Egress is `read_egress_bytes` (blocking, on a worker thread) when
    given, else the summed counters of `egress_urls`."""
    import aiohttp

    results = [
        RequestResult(i, p.at_s, len(p.prompt_token_ids), p.max_tokens)
        for i, p in enumerate(schedule)
    ]
    outcome = RunOutcome(results)
    timeout = aiohttp.ClientTimeout(total=target.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as client,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as scraper,
    ):

        async def read_bytes() -> int:
            if read_egress_bytes is not None:
                return await asyncio.to_thread(read_egress_bytes)
            return await _scrape_egress(scraper, egress_urls)

        start = time.monotonic()
        samples = outcome.egress_samples
        sampler = asyncio.create_task(_sample_egress(read_bytes, sample_period_s, start, samples))
        timed = [asyncio.create_task(_run_action(a, start, outcome.actions)) for a in actions]
        try:
            tasks = []
            for planned, result in zip(schedule, results, strict=True):
                await asyncio.sleep(max(0.0, start + planned.at_s - time.monotonic()))
                one = _one(client, target, planned, result, start)
                tasks.append(asyncio.create_task(_reported(one, result, on_done)))
            await asyncio.gather(*tasks)
            outcome.wall_s = time.monotonic() - start
            await asyncio.gather(*timed)
        finally:
            sampler.cancel()
            for task in timed:
                task.cancel()
            await asyncio.gather(sampler, *timed, return_exceptions=True)
        samples.append((time.monotonic() - start, await read_bytes()))
    return outcome
