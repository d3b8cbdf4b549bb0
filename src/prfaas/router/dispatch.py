"""The router's data path: ask the policy where a request prefills, then drive the two instances.

`Dispatcher.decide` builds the policy's views from the monitor, calls `RoutePolicy.choose` and
`pick_instance` (the same `prfaas.policy` code the simulator runs), and turns the decision into a
`Dispatch`: which prefill instance, which decode instance, which transfer id, and why.
`Dispatcher.run` sends the `DecodeJob` (the decode instance starts waiting for the state) and the
`PrefillJob` at the same time, relays the decode instance's `TokenDelta`s, and when the prefill
side fails (instance gone, engine error, transfer refused) tells the decode instance at once, so
its failure policy applies without waiting for the deadline. No decision is made here that the
policy did not make, except one: a target with no ready instance is not a target.

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
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import aiohttp

from prfaas.messages import (
    DecodeJob,
    GenerateRequest,
    PrefillJob,
    PrefillResult,
    PrefixExportJob,
    PrefixExportResult,
    TokenDelta,
)
from prfaas.policy import (
    RoutePolicy,
    RouteTarget,
    make_route_policy,
    pick_cached_instance,
)
from prfaas.policy.route import RouteState
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor, InstanceState
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.service.http import FIRST_TOKEN_HEADER
from prfaas.topology import ClusterConfig, Topology
from prfaas.topology.derived import route_config_of
from prfaas.types import DeploymentKind

log = logging.getLogger("prfaas.router")
_RESULT_GRACE_S = 2.0  # after the last token, how long a prefill answer may still take
_PREFILL_SLACK_S = 300.0  # a prefill job may queue this long past its transfer deadline
_ABORT_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


@dataclass(frozen=True)
class _Candidates:
    best: InstanceState | None  # the prefill instance to use in this cluster (None: none ready)
    best_tokens: int  # prompt tokens it can reuse from its prefix cache


@dataclass(frozen=True)
class PrefixMove:
    """A cached prefix to move to the prefilling instance before its job is sent."""

    holder: InstanceState  # the other cluster's instance caching the longest prefix
    num_tokens: int  # prompt tokens it sends: its whole usable prefix (block-aligned)


class NoInstanceError(Exception):
    """No ready instance can take the request (HTTP 503)."""


@dataclass
class Dispatch:
    """Where one request goes and why: the routing decision made concrete."""

    req_id: str
    transfer_id: str
    route: str  # RouteTarget value: "prfaas" | "pd_prefill"
    reason: str  # the policy's reason ("<rule>: <details>")
    num_prompt_tokens: int
    decode: InstanceState
    prefill: InstanceState | None  # None: the decode instance prefills itself (colocated)
    num_cached_tokens: int = 0  # prefix the router expects the prefilling instance to reuse
    num_receiver_prefix_tokens: int = 0  # prefix KV the decode instance holds: not sent
    num_best_prefix_tokens: int = 0  # longest usable prefix in either cluster
    num_incremental_tokens: int = 0  # the policy's l: prompt tokens it expects to be computed
    cluster: str = ""  # name of the cluster that prefills
    result: PrefillResult | None = None  # filled in once the prefill instance answers
    decode_sent_at: float | None = None  # monotonic s when the decode job went out
    first_token_s: float | None = None  # non-streamed: the decode side's first-token offset
    prefix_move: PrefixMove | None = None  # a cached prefix to move to `prefill` first
    num_prefix_transfer_tokens: int = 0  # the policy's cross-cluster moved tokens
    prefix_transfer: str | None = None  # outcome of the move (prefix_transfers_total label)
    num_prefix_transfer_bytes: int = 0  # KV bytes moved (a done move)

    @property
    def rule(self) -> str:
        return self.reason.split(":", 1)[0]

    def summary(self, ttft_s: float | None) -> dict[str, object]:
        """The `prfaas` extension field of a response: route, reason, KV moved, timings."""
        r = self.result
        return {
            "route": self.route,
            "reason": self.reason,
            "transfer_id": self.transfer_id if self.prefill is not None else None,
            "prefill_instance": self.prefill.config.name if self.prefill else None,
            "decode_instance": self.decode.config.name,
            "ttft_s": None if ttft_s is None else round(ttft_s, 6),
            "kv_bytes": r.num_kv_bytes if r and r.ok else 0,
            "num_cached_tokens": r.num_cached_tokens if r and r.ok else self.num_cached_tokens,
            "num_receiver_prefix_tokens": self.num_receiver_prefix_tokens,
            "num_incremental_tokens": self.num_incremental_tokens,
            "prefill_queue_s": round(r.queue_s, 6) if r else None,
            "prefill_s": round(r.prefill_s, 6) if r else None,
            "kv_transfer_tail_s": round(r.transfer_tail_s, 6) if r else None,
            "prefix_transfer": self.prefix_transfer,
            "num_prefix_transfer_tokens": self.moved_tokens,
            "num_prefix_transfer_bytes": self.num_prefix_transfer_bytes,
        }

    @property
    def moved_tokens(self) -> int:
        """Prompt tokens actually moved to the prefilling instance (0 unless the move was done)."""
        if self.prefix_transfer != "done" or self.prefix_move is None:
            return 0
        return self.prefix_move.num_tokens

    def log_fields(self) -> dict[str, object]:
        return {
            "req_id": self.req_id,
            "transfer_id": self.transfer_id,
            "route": self.route,
            "reason": self.reason,
            "prefill_instance": self.prefill.config.name if self.prefill else None,
            "decode_instance": self.decode.config.name,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "num_receiver_prefix_tokens": self.num_receiver_prefix_tokens,
            "num_prefix_transfer_tokens": self.num_prefix_transfer_tokens,
            "prefix_holder": self.prefix_move.holder.config.name if self.prefix_move else None,
        }


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
        self.prfaas = next(iter(topology.clusters_of_kind("prfaas")), None)
        self.pd: ClusterConfig = topology.clusters_of_kind("pd")[0]
        self._tasks: set[asyncio.Task[None]] = set()

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
        pd_prefill = self._prefill_candidates(RouteTarget.PD_PREFILL, hashes, num_prompt)
        prfaas = self._prefill_candidates(RouteTarget.PRFAAS, hashes, num_prompt)
        decision = self.policy.choose(
            num_prompt,
            pd_prefill.best_tokens,
            prfaas.best_tokens,
            self.monitor.link_view(self.prfaas, self.pd),
            self.monitor.cluster_view(self.prfaas),
            self.monitor.cluster_view(self.pd),
            state=self.route_state,
        )
        route, reason = decision.target, decision.reason
        chosen = prfaas if route is RouteTarget.PRFAAS else pd_prefill
        if chosen.best is None and route is RouteTarget.PRFAAS:
            route, reason, chosen = (
                RouteTarget.PD_PREFILL,
                f"prfaas-unavailable: {reason}",
                pd_prefill,
            )
        receiver_tokens = [
            self.prefixes.receiver_tokens(s.config.name, hashes, num_prompt) for s in decoders
        ]
        k = pick_cached_instance([s.load() for s in decoders], receiver_tokens)
        decode = decoders[k]
        prefill = chosen.best
        if prefill is None:  # colocated: the decode instance prefills, reusing its own cache
            expected = self.prefixes.compute_tokens(decode.config.name, hashes, num_prompt)
        else:
            expected = chosen.best_tokens
        move = None
        if decision.num_prefix_transfer_tokens > 0 and route is decision.target and prefill:
            holder = pd_prefill if route is RouteTarget.PRFAAS else prfaas
            if holder.best is not None and holder.best_tokens > chosen.best_tokens:
                move = PrefixMove(holder.best, holder.best_tokens)
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
            cluster=(self.prfaas if route is RouteTarget.PRFAAS else self.pd).name,  # type: ignore[union-attr]
            prefix_move=move,
            num_prefix_transfer_tokens=decision.num_prefix_transfer_tokens,
        )

    def set_threshold(self, threshold_tokens: float) -> None:
        """The long-timescale controller moved t (the same replacement the simulator makes)."""
        assert self.policy.config is not None  # the controller runs on PrfaaS-PD only
        config = replace(self.policy.config, threshold_tokens=threshold_tokens)
        self.policy = replace(self.policy, config=config)

    def _prefill_candidates(
        self, route: RouteTarget, hashes: Sequence[int], num_prompt: int
    ) -> _Candidates:
        """The cluster's ready prefill instances and the one to use (cache-affine, then load)."""
        cluster = self.prfaas if route is RouteTarget.PRFAAS else self.pd
        ready = [] if cluster is None else self.monitor.ready(cluster, "prefill")
        if not ready:
            return _Candidates(None, 0)
        cached = [self.prefixes.compute_tokens(s.config.name, hashes, num_prompt) for s in ready]
        k = pick_cached_instance([s.load() for s in ready], cached)
        return _Candidates(ready[k], cached[k])

    # ---- driving ---------------------------------------------------------------------------
    async def run(
        self, d: Dispatch, request: GenerateRequest, stream: bool = True
    ) -> AsyncIterator[TokenDelta]:
        """The request's token deltas from its decode instance; ends with a finish_reason.
        With `stream` False the decode instance answers once, at the end."""
        policy = self.topology.policy
        transfer_id = d.transfer_id if d.prefill is not None else None
        job = DecodeJob(
            request,
            transfer_id,
            policy.transfer_deadline_s,
            policy.failure,
            stream,
            d.num_receiver_prefix_tokens,
        )
        if d.prefix_move is not None:
            await self._move_prefix(d, request)
        prefill_task = None
        if d.prefill is not None:
            prefill_task = asyncio.create_task(self._prefill(d, request))
        _add_pending(d.decode, d.num_prompt_tokens, +1)
        try:
            async for delta in self._decode_stream(d, job):
                yield delta
        finally:
            _add_pending(d.decode, d.num_prompt_tokens, -1)
            if prefill_task is not None:
                await self._settle(prefill_task)

    async def _decode_stream(self, d: Dispatch, job: DecodeJob) -> AsyncIterator[TokenDelta]:
        url = f"http://{d.decode.config.http}/internal/decode"
        read_s = self.topology.policy.transfer_deadline_s + 120.0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_s)
        d.decode_sent_at = time.monotonic()
        try:
            async with self.client.post(url, json=job.to_dict(), timeout=timeout) as r:
                if FIRST_TOKEN_HEADER in r.headers:
                    d.first_token_s = float(r.headers[FIRST_TOKEN_HEADER])
                if r.status != 200:
                    body = (await r.read())[:300].decode(errors="replace")
                    yield _error(d, f"decode instance answered {r.status}: {body}")
                    return
                async for line in r.content:
                    if line.strip():
                        yield TokenDelta.from_dict(json.loads(line))
        except aiohttp.ClientConnectorError as exc:
            self.monitor.mark_down(d.decode.config.name, str(exc))
            yield _error(d, f"decode instance {d.decode.config.name} unreachable: {exc}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            yield _error(d, f"decode instance {d.decode.config.name} failed: {exc!r}")

    async def _prefill(self, d: Dispatch, request: GenerateRequest) -> None:
        assert d.prefill is not None
        deadline_s = self.topology.policy.transfer_deadline_s
        kv = d.decode.config.kv
        assert kv is not None
        job = PrefillJob(request, d.transfer_id, kv, deadline_s, d.num_receiver_prefix_tokens)
        url = f"http://{d.prefill.config.http}/internal/prefill"
        started_at = time.monotonic()
        read_s = deadline_s + _PREFILL_SLACK_S
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_s)
        _add_pending(d.prefill, d.num_prompt_tokens, +1)
        try:
            async with self.client.post(url, json=job.to_dict(), timeout=timeout) as reply:
                reply.raise_for_status()
                result = PrefillResult.from_dict(await reply.json())
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                self.monitor.mark_down(d.prefill.config.name, str(exc))
            error = f"prefill instance {d.prefill.config.name} failed: {exc!r}"
            result = PrefillResult(request.req_id, d.transfer_id, ok=False, error=error)
        finally:
            _add_pending(d.prefill, d.num_prompt_tokens, -1)
        d.result = result
        if result.ok:
            self.metrics.kv_seconds.labels(d.route).observe(time.monotonic() - started_at)
            self.metrics.kv_bytes.labels(d.route).inc(result.num_kv_bytes)
            self._record_prefix_hit(d, result.num_cached_tokens)
            return
        log.warning(
            json.dumps({"event": "prefill_failed", **d.log_fields(), "error": result.error})
        )
        await self._abort(d, result.error or "prefill failed")

    async def _move_prefix(self, d: Dispatch, request: GenerateRequest) -> None:
        """Have the holder send its cached prefix to the prefilling instance and wait for it;
        on any failure the request goes on without it. The outcome is counted and logged."""
        move, target = d.prefix_move, d.prefill
        assert move is not None and target is not None
        if target.config.kv is None:
            self._prefix_outcome(d, "skipped_no_receiver", None)
            return
        deadline_s = self.topology.policy.transfer_deadline_s
        job = PrefixExportJob(
            uuid.uuid4().hex,
            tuple(request.prompt_token_ids[: move.num_tokens]),
            target.config.kv,
            deadline_s,
        )
        url = f"http://{move.holder.config.http}/internal/prefix_export"
        timeout = aiohttp.ClientTimeout(total=deadline_s + _RESULT_GRACE_S, sock_connect=10.0)
        try:
            async with self.client.post(url, json=job.to_dict(), timeout=timeout) as reply:
                reply.raise_for_status()
                result = PrefixExportResult.from_dict(await reply.json())
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                self.monitor.mark_down(move.holder.config.name, str(exc))
            result = PrefixExportResult(job.transfer_id, ok=False, error=repr(exc)[:300])
        if not result.ok:
            self._prefix_outcome(d, "failed", result)
            return
        d.num_prefix_transfer_bytes = result.num_kv_bytes
        d.num_cached_tokens = max(d.num_cached_tokens, move.num_tokens)  # a shortfall: a miss
        self.metrics.prefix_transfer_bytes.inc(result.num_kv_bytes)
        self._prefix_outcome(d, "done", result)

    def _prefix_outcome(self, d: Dispatch, outcome: str, result: PrefixExportResult | None) -> None:
        d.prefix_transfer = outcome
        self.metrics.prefix_transfers.labels(outcome).inc()
        fields = {
            "event": "prefix_transfer",
            "outcome": outcome,
            **d.log_fields(),
            "num_tokens": d.prefix_move.num_tokens if d.prefix_move else 0,
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

    def _record_prefix_hit(self, d: Dispatch, num_cached_tokens: int) -> None:
        """Count the prefix the prefilling instance reused, and an index miss when it reused
        less than the index promised (an evicted or never-stored block: computed instead)."""
        if num_cached_tokens > 0:
            self.metrics.prefix_hit_tokens.labels(d.cluster).inc(num_cached_tokens)
        if num_cached_tokens < d.num_cached_tokens:
            self.metrics.prefix_index_misses.labels(d.cluster).inc()

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


def _add_pending(state: InstanceState, num_tokens: int, sign: int) -> None:
    state.pending_requests += sign
    state.pending_tokens += sign * num_tokens


def _error(d: Dispatch, message: str) -> TokenDelta:
    log.warning(json.dumps({"event": "request_failed", **d.log_fields(), "error": message}))
    return TokenDelta(d.req_id, (), "error", message)
