"""The router's data path: ask the policy where a request prefills, then drive the two instances.

`Dispatcher.decide` builds the policy's views from the monitor, calls `RoutePolicy.choose` and
`pick_instance` (the same `prfaas.policy` code the simulator runs), and turns the decision into a
frozen `Dispatch` (`decision.py`): which prefill instance, which decode instance, which transfer
id, which KV codec (`choose_kv_codec`: `[transport] compression`, "auto" from the same link
view and the chosen prefill instance's measured encode rate), and why. `Dispatcher.run` sends
the `DecodeJob` (the decode instance starts waiting for the state) and the `PrefillJob` at the
same time, relays the decode instance's `TokenDelta`s, records what happens in the request's
`DispatchTrace`, and when the prefill side fails (instance gone, engine error, transfer refused)
tells the decode instance at once, so its failure policy applies without waiting for the
deadline. What it sends is counted with the monitor
(`ClusterMonitor.dispatched`), which alone writes the instances' state. No decision is made here
that the policy did not make, except one: a target with no ready instance is not a target.

*Several prefill providers.* With two or more PrfaaS clusters the route rule runs once per
provider, with that provider's `ClusterView` and `LinkView`. No rule offloading: the request
prefills locally with the rule's reason. Otherwise the providers whose rule offloads and that
have a ready instance are offered to `choose_provider` (`providers.py` prices and times them):
its target, a provider or local PD prefill, is the route, and its reason leads the decision's.
One provider (or none) routes exactly as the rule alone says.

*Prefix moves.* When the policy's decision moves a cached prefix (`num_prefix_transfer_tokens`
> 0: global best prefix, the longer cache in the other cluster), `run` first asks the other
cluster's instance holding it (`PrefixExportJob` to `/internal/prefix_export`) to send it to the
chosen prefill instance's KV receiver, waits for the answer (bounded by the transfer deadline),
then sends the two jobs; the target stores the prefix and reuses it. Both directions work the
same way: PrfaaS -> PD-P, and PD-P -> PrfaaS (a PrfaaS prefill instance with `kv`). A target
without a receiver (`kv` unset), a holder that is gone or no longer caches it, a refused or late
transfer: the request goes on without it (the target computes the prefix) and the outcome is
counted (`prfaas:prefix_transfers_total{outcome}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import aiohttp

from prfaas.messages import (
    DecodeJob,
    GenerateRequest,
    JSONDict,
    PrefillJob,
    PrefillResult,
    PrefixExportJob,
    PrefixExportResult,
    TokenDelta,
)
from prfaas.models.kv_codec import KV_CODEC_NONE
from prfaas.policy import (
    CodecChoice,
    LinkView,
    RoutePolicy,
    RouteTarget,
    choose_kv_codec,
    make_route_policy,
    pick_cached_instance,
)
from prfaas.policy.compression import AUTO_KV_CODEC
from prfaas.policy.providers import LOCAL
from prfaas.policy.route import RouteDecision, RouteState
from prfaas.router.decision import Dispatch, DispatchTrace, PrefixMove
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor, InstanceState
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.router.providers import ProviderQuoter
from prfaas.router.vllm_driver import VLLM_ENGINE, VllmDriver, answer_excerpt
from prfaas.service.http import FIRST_TOKEN_HEADER
from prfaas.topology import ClusterConfig, Topology
from prfaas.topology.derived import route_config_of
from prfaas.types import DeploymentKind

log = logging.getLogger("prfaas.router")
_RESULT_GRACE_S = 2.0  # after the last token, how long a prefill answer may still take
_PREFILL_SLACK_S = 300.0  # a prefill job may queue this long past its transfer deadline
_DECODE_SLACK_S = 120.0  # a decode stream may be silent this long past its transfer deadline
_ABORT_TIMEOUT = aiohttp.ClientTimeout(total=10.0)

Answer = TypeVar("Answer")  # what an instance answers a job with, parsed


@dataclass(frozen=True)
class _Candidates:
    cluster: str  # the cluster's name ("": the topology has no such cluster)
    best: InstanceState | None  # the prefill instance to use in this cluster (None: none ready)
    best_tokens: int  # prompt tokens it can reuse from its prefix cache


@dataclass(frozen=True)
class _Offload:
    """The route rule's decision for one provider (prfaas cluster), with what it saw."""

    provider: ClusterConfig | None  # None: the topology has no prfaas cluster
    candidates: _Candidates  # its prefill instance for the request
    link: LinkView | None  # its link to the PD cluster
    decision: RouteDecision

    @property
    def is_offered(self) -> bool:
        """The rule offloads to it and it can take the request (a ready instance, a link)."""
        return (
            self.decision.target is RouteTarget.PRFAAS
            and self.candidates.best is not None
            and self.link is not None
        )


@dataclass(frozen=True)
class _Route:
    """Where the request prefills, why, and which provider's rule decision it rests on."""

    via: _Offload
    target: RouteTarget
    reason: str


def auto_encode_bytes_per_s(prefill: InstanceState) -> float:
    """The rate at which `prefill` encodes "auto"'s codec, as its stats report it (uncoded
    bytes/s); unlimited where it reports none (an engine that does not code)."""
    rates = {} if prefill.stats is None else prefill.stats.kv_encode_bytes_per_s
    return rates.get(AUTO_KV_CODEC, math.inf)


def _prefix_move(holder: _Candidates, target: _Candidates) -> PrefixMove | None:
    """The other cluster's cached prefix to move to the chosen one, when it is the longer."""
    if holder.best is None or holder.best_tokens <= target.best_tokens:
        return None
    return PrefixMove(holder.best, holder.best_tokens)


class NoInstanceError(Exception):
    """No ready instance can take the request (HTTP 503)."""


def make_policy(topology: Topology) -> RoutePolicy:
    kind = DeploymentKind(topology.policy.deployment)
    return make_route_policy(kind, route_config_of(topology, wall_units=True))


class Dispatcher:
    """Routes and drives requests over the instances the monitor sees."""

    def __init__(
        self,
        topology: Topology,
        monitor: ClusterMonitor,
        client: aiohttp.ClientSession,
        metrics: RouterMetrics,
        prefixes: RouterPrefixIndex,
    ) -> None:
        self.topology, self.monitor, self.client, self.metrics = topology, monitor, client, metrics
        self.prefixes = prefixes
        self.policy = make_policy(topology)
        # the short-timescale hysteresis runs with the long-timescale controller, as in the sim
        self.route_state = RouteState() if topology.controller.enabled else None
        self.providers = topology.providers
        self.prfaas = next(iter(self.providers), None)  # the first: the link the dashboard shows
        # several providers: each long request goes to the cheapest that meets the TTFT target
        self.quoter = ProviderQuoter(topology) if len(self.providers) > 1 else None
        self.pd: ClusterConfig = topology.clusters_of_kind("pd")[0]
        # a decode stream may wait out its transfer's deadline before its first token
        self.decode_read_s = topology.policy.transfer_deadline_s + _DECODE_SLACK_S
        self.vllm = VllmDriver(
            client,
            topology.model.name,
            self.decode_read_s,
            topology.policy.failure,
            monitor.mark_down,
        )

    # ---- decision --------------------------------------------------------------------------
    def decide(self, req_id: str, prompt_token_ids: Sequence[int]) -> Dispatch:
        """Route one request: the policy's target from prompt length, cached prefixes, link and
        queues; inside each cluster the instance caching the longest prefix (least loaded among
        equals)."""
        decoders = self.monitor.ready(self.pd, "decode")
        if not decoders:
            raise NoInstanceError("no decode instance of the PD cluster is ready")
        num_prompt = len(prompt_token_ids)
        hashes = self.prefixes.hashes(prompt_token_ids)
        pd_prefill = self._prefill_candidates(self.pd, hashes, num_prompt)
        offloads = [
            self._offload(p, pd_prefill, hashes, num_prompt) for p in self.providers or (None,)
        ]
        chosen_route = self._route(offloads, pd_prefill, decoders[0], num_prompt)
        decision, prfaas, link = (
            chosen_route.via.decision,
            chosen_route.via.candidates,
            chosen_route.via.link,
        )
        route, reason = chosen_route.target, chosen_route.reason
        chosen, other = (
            (prfaas, pd_prefill) if route is RouteTarget.PRFAAS else (pd_prefill, prfaas)
        )
        if chosen.best is None and route is RouteTarget.PRFAAS:
            route, reason = RouteTarget.PD_PREFILL, f"prfaas-unavailable: {reason}"
            chosen, other = pd_prefill, prfaas
        receiver_tokens = [
            self.prefixes.receiver_tokens(s.config.name, hashes, num_prompt) for s in decoders
        ]
        k = pick_cached_instance([s.load() for s in decoders], receiver_tokens)
        decode, prefill = decoders[k], chosen.best
        if prefill is None:  # colocated: the decode instance prefills, reusing its own cache
            expected = self.prefixes.compute_tokens(decode.config.name, hashes, num_prompt)
        else:
            expected = chosen.best_tokens
        move = None
        if decision.num_prefix_transfer_tokens > 0 and route is decision.target and prefill:
            move = _prefix_move(other, chosen)
        codec = self._kv_codec(route, prefill, link)
        if prefill is not None:  # the next decision sees this one's work before any poll does
            prefill.unpolled_tokens += num_prompt - expected
        if self.quoter is not None and prefill is not None:  # priced queues see it before a poll
            prefill.unpolled_prefill_s += self.quoter.prefill_wall_s(
                prefill.config, num_prompt - expected
            )
        return Dispatch(
            req_id,
            uuid.uuid4().hex,
            route.value,
            reason,
            num_prompt,
            decode,
            prefill,
            num_cached_tokens=expected,
            num_receiver_prefix_tokens=receiver_tokens[k] if prefill is not None else 0,
            num_best_prefix_tokens=max(pd_prefill.best_tokens, prfaas.best_tokens),
            num_incremental_tokens=decision.num_incremental_tokens,
            cluster=chosen.cluster,
            prefix_move=move,
            num_prefix_transfer_tokens=decision.num_prefix_transfer_tokens,
            kv_codec=codec.kv_codec,
            kv_codec_reason=codec.reason,
        )

    def _offload(
        self,
        provider: ClusterConfig | None,
        pd_prefill: _Candidates,
        hashes: Sequence[int],
        num_prompt: int,
    ) -> _Offload:
        """The route rule's decision between `provider` and PD prefill, with its views."""
        candidates = self._prefill_candidates(provider, hashes, num_prompt)
        link = self.monitor.link_view(provider, self.pd)
        decision = self.policy.choose(
            num_prompt,
            pd_prefill.best_tokens,
            candidates.best_tokens,
            link,
            self.monitor.cluster_view(provider),
            self.monitor.cluster_view(self.pd),
            state=self.route_state,
        )
        return _Offload(provider, candidates, link, decision)

    def _route(
        self,
        offloads: list[_Offload],
        pd_prefill: _Candidates,
        decoder: InstanceState,
        num_prompt: int,
    ) -> _Route:
        """One provider: its rule's decision. Several: local unless a rule offloads; among the
        providers whose rule offloads and that can take the request, the cheapest that meets the
        TTFT target (`choose_provider`), else local; the reason starts with that choice's."""
        first = offloads[0]
        offered = [o for o in offloads if o.is_offered]
        if self.quoter is None or not offered:
            offloading = [o for o in offloads if o.decision.target is RouteTarget.PRFAAS]
            via = next(iter(offloading), first)  # none ready: "prfaas-unavailable" follows
            return _Route(via, via.decision.target, via.decision.reason)
        local_instance = pd_prefill.best or decoder
        local = self.quoter.local(
            self.pd, local_instance.config, local_instance.load().queued_prefill_s
        )
        offers = []
        for o in offered:
            assert o.provider is not None and o.candidates.best is not None and o.link
            best = o.candidates.best
            queue_s = best.load().queued_prefill_s
            offers.append(self.quoter.offer(o.provider, best.config, queue_s, o.link))
        choice = self.quoter.choose(offers, local, num_prompt - pd_prefill.best_tokens)
        via = next((o for o in offered if o.candidates.cluster == choice.target), offered[0])
        target = RouteTarget.PD_PREFILL if choice.target == LOCAL else RouteTarget.PRFAAS
        return _Route(via, target, f"{choice.reason}; {via.decision.reason}")

    def _kv_codec(
        self, route: RouteTarget, prefill: InstanceState | None, link: LinkView | None
    ) -> CodecChoice:
        """The codec of the request's K/V (`choose_kv_codec`, with the prefill instance's
        measured encode rate); none where a vLLM server prefills, since its connector moves the
        KV uncoded."""
        offloaded = route is RouteTarget.PRFAAS and prefill is not None
        rate = math.inf if prefill is None else auto_encode_bytes_per_s(prefill)
        compression = self.topology.transport.compression
        choice = choose_kv_codec(compression, offloaded, link, auto_encode_bytes_per_s=rate)
        if choice.kv_codec == KV_CODEC_NONE or prefill is None:
            return choice
        if prefill.config.engine != VLLM_ENGINE:
            return choice
        reason = f"vllm: its KV connector moves the KV uncoded ({choice.reason})"
        return CodecChoice(KV_CODEC_NONE, reason)

    def set_threshold(self, threshold_tokens: float) -> None:
        """The long-timescale controller moved t (the same replacement the simulator makes)."""
        assert self.policy.config is not None  # the controller runs on PrfaaS-PD only
        config = replace(self.policy.config, threshold_tokens=threshold_tokens)
        self.policy = replace(self.policy, config=config)

    def _prefill_candidates(
        self, cluster: ClusterConfig | None, hashes: Sequence[int], num_prompt: int
    ) -> _Candidates:
        """The cluster's ready prefill instances and the one to use (cache-affine, then load)."""
        if cluster is None:
            return _Candidates("", None, 0)
        ready = self.monitor.ready(cluster, "prefill")
        if not ready:
            return _Candidates(cluster.name, None, 0)
        cached = [self.prefixes.compute_tokens(s.config.name, hashes, num_prompt) for s in ready]
        k = pick_cached_instance([s.load() for s in ready], cached)
        return _Candidates(cluster.name, ready[k], cached[k])

    # ---- driving ---------------------------------------------------------------------------
    async def run(
        self, trace: DispatchTrace, request: GenerateRequest, stream: bool = True
    ) -> AsyncGenerator[TokenDelta, None]:
        """The request's token deltas from its decode instance; ends with a finish_reason.
        With `stream` False the decode instance answers once, at the end."""
        d = trace.decision
        if d.decode.config.engine == VLLM_ENGINE:
            async for delta in self._run_on_vllm(trace, request):
                yield delta
            return
        policy = self.topology.policy
        job = DecodeJob(
            request,
            d.prefill_transfer_id,
            policy.transfer_deadline_s,
            policy.failure,
            stream,
            d.num_receiver_prefix_tokens,
        )
        if d.prefix_move is not None:
            await self._move_prefix(trace, request)
        prefill_task = None
        if d.prefill is not None:
            prefill_task = asyncio.create_task(self._prefill(trace, request))
        try:
            with self.monitor.dispatched(d.decode.config.name, d.num_prompt_tokens):
                async for delta in self._decode_stream(trace, job):
                    yield delta
        finally:
            if prefill_task is not None:
                await self._settle(prefill_task)

    async def _run_on_vllm(
        self, trace: DispatchTrace, request: GenerateRequest
    ) -> AsyncIterator[TokenDelta]:
        """Both halves on stock vLLM servers (`vllm_driver`), counted like any dispatch."""
        d = trace.decision
        with contextlib.ExitStack() as counted:
            counted.enter_context(
                self.monitor.dispatched(d.decode.config.name, d.num_prompt_tokens)
            )
            if d.prefill is not None:
                name = d.prefill.config.name
                counted.enter_context(self.monitor.dispatched(name, d.num_prompt_tokens))
            async for delta in self.vllm.run(trace, request):
                yield delta
        result = trace.result
        if result is not None and result.ok:
            self.metrics.kv_bytes.labels(d.route).inc(result.num_kv_bytes)
        elif result is not None:
            log.warning(
                json.dumps({"event": "prefill_failed", **trace.log_fields(), "error": result.error})
            )

    async def _decode_stream(
        self, trace: DispatchTrace, job: DecodeJob
    ) -> AsyncIterator[TokenDelta]:
        decode = trace.decision.decode.config
        url = f"http://{decode.http}/internal/decode"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.decode_read_s)
        trace.decode_sent_at = time.monotonic()
        try:
            async with self.client.post(url, json=job.to_dict(), timeout=timeout) as r:
                if FIRST_TOKEN_HEADER in r.headers:
                    trace.first_token_s = float(r.headers[FIRST_TOKEN_HEADER])
                if r.status != 200:
                    body = await answer_excerpt(r)
                    yield _error(trace, f"decode instance answered {r.status}: {body}")
                    return
                async for line in r.content:
                    if line.strip():
                        yield TokenDelta.from_dict(json.loads(line))
        except aiohttp.ClientConnectorError as exc:
            self.monitor.mark_down(decode.name, str(exc))
            yield _error(trace, f"decode instance {decode.name} unreachable: {exc}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            yield _error(trace, f"decode instance {decode.name} failed: {exc!r}")

    async def _post_job(
        self,
        instance: InstanceState,
        path: str,
        job: JSONDict,
        timeout: aiohttp.ClientTimeout,
        parse: Callable[[JSONDict], Answer],
    ) -> Answer | Exception:
        """POST a job to an instance and parse its answer; the exception when it failed (an
        instance that cannot be connected to is marked down)."""
        url = f"http://{instance.config.http}{path}"
        try:
            async with self.client.post(url, json=job, timeout=timeout) as reply:
                reply.raise_for_status()
                return parse(await reply.json())
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                self.monitor.mark_down(instance.config.name, str(exc))
            return exc

    async def _prefill(self, trace: DispatchTrace, request: GenerateRequest) -> None:
        d = trace.decision
        assert d.prefill is not None
        deadline_s = self.topology.policy.transfer_deadline_s
        kv = d.decode.config.kv
        assert kv is not None
        job = PrefillJob(
            request, d.transfer_id, kv, deadline_s, d.num_receiver_prefix_tokens, d.kv_codec
        )
        started_at = time.monotonic()
        read_s = deadline_s + _PREFILL_SLACK_S
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_s)
        with self.monitor.dispatched(d.prefill.config.name, d.num_prompt_tokens):
            answer = await self._post_job(
                d.prefill, "/internal/prefill", job.to_dict(), timeout, PrefillResult.from_dict
            )
        if isinstance(answer, Exception):
            error = f"prefill instance {d.prefill.config.name} failed: {answer!r}"
            answer = PrefillResult(request.req_id, d.transfer_id, ok=False, error=error)
        trace.result = result = answer
        if result.ok:
            self.metrics.kv_seconds.labels(d.route).observe(time.monotonic() - started_at)
            self.metrics.kv_bytes.labels(d.route).inc(result.num_kv_bytes)
            self._record_prefix_hit(trace, result.num_cached_tokens)
            return
        log.warning(
            json.dumps({"event": "prefill_failed", **trace.log_fields(), "error": result.error})
        )
        await self._abort(d, result.error or "prefill failed")

    async def _move_prefix(self, trace: DispatchTrace, request: GenerateRequest) -> None:
        """Have the holder send its cached prefix to the prefilling instance and wait for it;
        on any failure the request goes on without it. The outcome is counted and logged."""
        move, target = trace.decision.prefix_move, trace.decision.prefill
        assert move is not None and target is not None
        if target.config.kv is None:
            self._prefix_outcome(trace, "skipped_no_receiver", None)
            return
        deadline_s = self.topology.policy.transfer_deadline_s
        job = PrefixExportJob(
            uuid.uuid4().hex,
            request.prompt_token_ids[: move.num_tokens],
            target.config.kv,
            deadline_s,
        )
        timeout = aiohttp.ClientTimeout(total=deadline_s + _RESULT_GRACE_S, sock_connect=10.0)
        answer = await self._post_job(
            move.holder,
            "/internal/prefix_export",
            job.to_dict(),
            timeout,
            PrefixExportResult.from_dict,
        )
        if isinstance(answer, Exception):
            answer = PrefixExportResult(job.transfer_id, ok=False, error=repr(answer)[:300])
        if not answer.ok:
            self._prefix_outcome(trace, "failed", answer)
            return
        trace.num_prefix_transfer_bytes = answer.num_kv_bytes
        # the target now holds the moved prefix; what it reuses short of it counts as a miss
        trace.num_expected_cached_tokens = max(trace.num_expected_cached_tokens, move.num_tokens)
        self.metrics.prefix_transfer_bytes.inc(answer.num_kv_bytes)
        self._prefix_outcome(trace, "done", answer)

    def _prefix_outcome(
        self, trace: DispatchTrace, outcome: str, result: PrefixExportResult | None
    ) -> None:
        trace.prefix_transfer = outcome
        self.metrics.prefix_transfers.labels(outcome).inc()
        move = trace.decision.prefix_move
        fields = {
            "event": "prefix_transfer",
            "outcome": outcome,
            **trace.log_fields(),
            "num_tokens": move.num_tokens if move else 0,
        }
        if result is not None:
            fields.update(
                prefix_transfer_id=result.transfer_id,
                num_kv_bytes=result.num_kv_bytes,
                transfer_s=round(result.transfer_s, 6),
                error=result.error,
            )
        level = logging.INFO if outcome == "done" else logging.WARNING
        log.log(level, json.dumps(fields))

    def _record_prefix_hit(self, trace: DispatchTrace, num_cached_tokens: int) -> None:
        """Count the prefix the prefilling instance reused, and an index miss when it reused
        less than the index promised (an evicted or never-stored block: computed instead)."""
        cluster = trace.decision.cluster
        if num_cached_tokens > 0:
            self.metrics.prefix_hit_tokens.labels(cluster).inc(num_cached_tokens)
        if num_cached_tokens < trace.num_expected_cached_tokens:
            self.metrics.prefix_index_misses.labels(cluster).inc()

    async def _abort(self, d: Dispatch, reason: str) -> None:
        if self.client.closed:  # the router is shutting down; the decode instance times out
            return
        url = f"http://{d.decode.config.http}/internal/abort"
        body = {"transfer_id": d.transfer_id, "reason": reason}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.client.post(url, json=body, timeout=_ABORT_TIMEOUT) as reply:
                await reply.read()

    async def _settle(self, task: asyncio.Task[None]) -> None:
        """Give the prefill answer a moment after the last token, then stop waiting for it."""
        done, _ = await asyncio.wait({task}, timeout=_RESULT_GRACE_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _error(trace: DispatchTrace, message: str) -> TokenDelta:
    log.warning(json.dumps({"event": "request_failed", **trace.log_fields(), "error": message}))
    return TokenDelta(trace.decision.req_id, (), "error", message)
