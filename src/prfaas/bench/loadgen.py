"""The runner of `prfaas bench system`: a planned schedule (`prfaas.bench.schedule`) replayed
against any running router over its OpenAI API, with every request accounted for.

Owns the I/O of a run (asyncio + aiohttp):

- *requests*: each one a streamed `/v1/completions` call sent at its time whatever the others
  do (open loop), read into its `RequestResult` (`prfaas.bench.outcome`);
- the *egress sampler*: the PrfaaS prefill instances' transport byte counters
  (`prfaas:kv_transfer_bytes_total`), scraped from their `/metrics` once per period, or any
  other byte counter (a testbed reads its WAN qdisc's);
- *timed actions*: blocking calls made at set times of the run (a testbed's link drop and its
  end), each logged with its outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prfaas.bench.outcome import RequestResult, RunOutcome, StreamReader, error_reason
from prfaas.bench.schedule import PlannedRequest
from prfaas.errors import UserError

if TYPE_CHECKING:
    import aiohttp

EGRESS_COUNTER = "prfaas:kv_transfer_bytes_total"


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
    client: aiohttp.ClientSession,
    target: Target,
    planned: PlannedRequest,
    result: RequestResult,
    start: float,
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


async def _scrape_egress(client: aiohttp.ClientSession, urls: Sequence[str]) -> int:
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
