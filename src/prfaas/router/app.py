"""The router (`prfaas router`): the OpenAI-compatible front door of a PrfaaS deployment.

Per request: the `RequestIntake` (`intake.py`) checks the API key, validates and tokenizes; then
ask the `Dispatcher` (policy + instance picking), log the decision as one JSON line with `req_id`
and `transfer_id`, count it, put it in the `x-prfaas-route` / `x-prfaas-route-reason` headers
(and the KV codec in `x-prfaas-kv-codec` / `x-prfaas-kv-codec-reason`), and relay the decode
instance's tokens as text: whole, or as server-sent events ending with `data: [DONE]`. Errors
are OpenAI-shaped (`{"error": {"message", "type", "code", "param"}}`, `param` naming the request
field at fault when the message names one) with a 4xx status for the client's mistakes and 503
when no instance can serve.
Also: `/v1/models`, `/health` (the process is alive), `/ready` (every cluster has a ready
instance; with the id of the deployment `prfaas up` started it in), `/metrics` (Prometheus) and
the operator dashboard (`/dashboard`, `dashboard.py`; its history in `dashboard_history.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prfaas.errors import UserError
from prfaas.messages import TokenDelta
from prfaas.router.control_loop import RouterControl
from prfaas.router.control_routes import add_control_routes
from prfaas.router.dashboard import add_dashboard_routes
from prfaas.router.dashboard_history import DashboardHistory, RouteRecord
from prfaas.router.decision import Dispatch, DispatchTrace
from prfaas.router.dispatch import Dispatcher, NoInstanceError
from prfaas.router.intake import ApiError, Prepared, RequestIntake, parse_json_body
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.openai_api import error_param, usage, with_request_schemas
from prfaas.router.poller import InstancePoller
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.service.auth import InternalAuth, bearer, deployment_token
from prfaas.service.http import DEPLOYMENT_ID_ENV, error_response, metrics_response
from prfaas.service.limits import BodySizeLimit, ConcurrencyLimit
from prfaas.service.text import TextCodec, TextStream, served_codec
from prfaas.topology import Topology

log = logging.getLogger("prfaas.router")


class RouterService:
    """Everything the handlers share: intake, monitor, dispatcher, metrics, HTTP client."""

    def __init__(self, topology: Topology, codec: TextCodec) -> None:
        self.topology, self.codec = topology, codec
        self.intake = RequestIntake(topology, codec)
        self.metrics = RouterMetrics()
        self.dashboard = DashboardHistory()
        self.model_id = self.intake.model_id

    async def start(self) -> None:
        """Open the connection pool to the instances (on the serving loop) and start polling."""
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30)
        token = deployment_token(self.topology)
        headers = bearer(token) if token else None
        self.client = aiohttp.ClientSession(connector=connector, headers=headers)
        self.monitor = ClusterMonitor(self.topology, self.client)
        self.prefixes = RouterPrefixIndex(
            self.topology.prefix_cache, self.topology.instances, self.client
        )
        self.poller = InstancePoller(self.monitor, self.prefixes, after_round=self.sample)
        self.dispatcher = Dispatcher(
            self.topology, self.monitor, self.client, self.metrics, self.prefixes
        )
        self.metrics.threshold_tokens.set(self.topology.policy.threshold_tokens)
        self.control: RouterControl | None = None
        if self.topology.controller.enabled:
            self.control = RouterControl(
                self.topology,
                self.monitor,
                self.client,
                self.metrics,
                self.dispatcher.set_threshold,
                on_event=self.dashboard.record_control,
            )
            await self.control.start()
        await self.poller.start()

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()
        await self.poller.close()
        await self.client.close()

    def threshold_tokens(self) -> float | None:
        """The threshold t the dispatcher routes with now (None: a deployment without one)."""
        config = self.dispatcher.policy.config
        return None if config is None else config.threshold_tokens

    def sample(self) -> None:
        """The dashboard's sample of t and the link's utilization (once per its period)."""
        link = self.monitor.link_view(self.dispatcher.prfaas, self.dispatcher.pd)
        utilization = None if link is None else link.utilization
        self.dashboard.maybe_sample(self.threshold_tokens(), utilization)

    # ---- dispatch and relay ----------------------------------------------------------------
    def route(self, prepared: Prepared) -> Dispatch:
        req = prepared.request
        try:
            d = self.dispatcher.decide(req.req_id, req.prompt_token_ids)
        except NoInstanceError as exc:
            raise ApiError(503, str(exc), "service_unavailable", "no_instance") from exc
        log.info(json.dumps({"event": "route", **d.log_fields()}))
        if self.control is not None:
            self.control.observe_routed(d.num_prompt_tokens - d.num_best_prefix_tokens)
        self.metrics.decisions.labels(d.route, d.rule, d.provider or "").inc()
        self.metrics.prompt_tokens.labels(d.route).inc(d.num_prompt_tokens)
        self.dashboard.record_route(route_record(d, self.dashboard.clock()))
        return d

    async def texts(self, trace: DispatchTrace, prepared: Prepared) -> AsyncIterator[Piece]:
        """The request's text as it grows, timing the stream; the last piece has a finish."""
        text = TextStream(self.codec, prepared.stop)
        route, last_at, finish = trace.decision.route, prepared.arrived_at, None
        deltas = self.dispatcher.run(trace, prepared.request, prepared.is_stream)
        try:
            async for delta in deltas:
                now = time.monotonic()
                if delta.token_ids and trace.first_token_at is None:
                    trace.first_token_at = _first_token_at(trace, now)
                    self.metrics.ttft.labels(route).observe(trace.first_token_at - last_at)
                    self.dashboard.record_ttft(trace.first_token_at - last_at)
                    last_at = now
                elif delta.token_ids and prepared.is_stream:  # whole answers have no gaps
                    self.metrics.itl.labels(route).observe(now - last_at)
                    self.dashboard.record_itl(now - last_at)
                    last_at = now
                finish = _finish_reason(delta, text)
                new = text.add(delta.token_ids, is_final=finish is not None)
                self.metrics.generation_tokens.labels(route).inc(len(delta.token_ids))
                if finish is not None:
                    # the dispatch ends first: it waits (briefly) for the prefill's answer, which
                    # may come after the last token over a long WAN, so the summary has its result
                    await deltas.aclose()
                yield Piece(new, finish, delta.error, text.num_tokens)
                if finish is not None:
                    return
        finally:
            self._record_done(trace, prepared, finish, text.num_tokens)

    def _record_done(
        self, trace: DispatchTrace, prepared: Prepared, finish: str | None, num_tokens: int
    ) -> None:
        d = trace.decision
        e2e_s = time.monotonic() - prepared.arrived_at
        self.metrics.requests.labels(d.route, finish or "cancelled").inc()
        self.metrics.e2e.labels(d.route).observe(e2e_s)
        if self.control is not None and finish not in (None, "error"):
            self.control.observe_finished(num_tokens)
        if not log.isEnabledFor(logging.DEBUG):
            return
        done = {
            "event": "done",
            "req_id": d.req_id,
            "transfer_id": d.transfer_id,
            "route": d.route,
            "finish_reason": finish,
            "num_output_tokens": num_tokens,
            "kv_bytes": trace.result.num_kv_bytes if trace.result else 0,
            "e2e_s": round(e2e_s, 4),
        }
        log.debug(json.dumps(done))

    async def whole(self, trace: DispatchTrace, prepared: Prepared) -> Response:
        parts, last = [], Piece("", None, None, 0)
        async for piece in self.texts(trace, prepared):
            parts.append(piece.text)
            last = piece
        if last.finish_reason == "error" or last.finish_reason is None:
            message = last.error or "generation ended without a finish reason"
            raise ApiError(503, message, "service_unavailable", "generation_failed")
        n_prompt = len(prepared.request.prompt_token_ids)
        body = prepared.shape.whole(
            "".join(parts), last.finish_reason, usage(n_prompt, last.num_tokens)
        )
        body["prfaas"] = trace.summary(prepared.arrived_at)
        return JSONResponse(body, headers=route_headers(trace.decision))

    async def sse(self, trace: DispatchTrace, prepared: Prepared) -> AsyncIterator[bytes]:
        is_first, last = True, Piece("", None, None, 0)
        async for piece in self.texts(trace, prepared):
            last = piece
            if piece.finish_reason == "error":
                error = {"message": piece.error, "type": "service_unavailable"}
                yield _event({"error": {**error, "code": "generation_failed"}})
                break
            if piece.text or piece.finish_reason is not None or is_first:
                chunk = prepared.shape.chunk(piece.text, piece.finish_reason, is_first)
                if piece.finish_reason is not None:
                    chunk["prfaas"] = trace.summary(prepared.arrived_at)
                yield _event(chunk)
                is_first = False
        if prepared.include_usage:
            n_prompt = len(prepared.request.prompt_token_ids)
            yield _event(prepared.shape.usage_chunk(usage(n_prompt, last.num_tokens)))
        yield b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Piece:
    """Text that may be sent now, and where the request stands."""

    text: str
    finish_reason: str | None
    error: str | None
    num_tokens: int  # completion tokens so far


def _first_token_at(trace: DispatchTrace, now: float) -> float:
    """When the first token was ready: now for a stream; for a whole answer, the decode job's
    send time plus the decode instance's own first-token offset (same machine clock or not,
    only durations cross)."""
    if trace.first_token_s is None or trace.decode_sent_at is None:
        return now
    return min(now, trace.decode_sent_at + trace.first_token_s)


def _finish_reason(delta: TokenDelta, text: TextStream) -> str | None:
    if text.hit_stop:
        return "stop"
    return delta.finish_reason


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def route_record(d: Dispatch, at_s: float) -> RouteRecord:
    """A decision as the dashboard lists it."""
    return RouteRecord(
        at_s=at_s,
        req_id=d.req_id,
        route=d.route,
        reason=d.reason,
        prefill_instance=d.prefill.config.name if d.prefill else None,
        decode_instance=d.decode.config.name,
        num_prompt_tokens=d.num_prompt_tokens,
        num_incremental_tokens=d.num_incremental_tokens,
        provider=d.provider,
    )


def route_headers(d: Dispatch) -> dict[str, str]:
    return {
        "x-prfaas-route": d.route,
        "x-prfaas-route-reason": d.reason.encode("ascii", "replace").decode(),
        "x-prfaas-transfer-id": d.transfer_id,
        "x-prfaas-kv-codec": d.kv_codec,
        "x-prfaas-kv-codec-reason": d.kv_codec_reason.encode("ascii", "replace").decode(),
        "x-request-id": d.req_id,
    }


def build_router_app(topology: Topology) -> FastAPI:
    """The router's HTTP app; the tokenizer loads and the instance poller starts at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = RouterService(topology, served_codec(topology))
        await service.start()
        app.state.service = service
        yield
        await service.close()

    app = FastAPI(title="prfaas router", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_body_bytes=topology.router.max_body_bytes)
    app.add_middleware(ConcurrencyLimit, max_concurrent=topology.router.max_concurrent_per_key)
    app.add_middleware(InternalAuth, token=deployment_token(topology))
    inferred_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # the request bodies FastAPI cannot infer from raw handlers
        if app.openapi_schema is None:
            served = topology.model.served_name
            app.openapi_schema = with_request_schemas(inferred_openapi(), served)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _add_error_handlers(app)
    add_control_routes(app)
    add_dashboard_routes(app)

    async def generate(request: Request, is_chat: bool) -> Response:
        service: RouterService = app.state.service
        service.intake.check_auth(request)
        body = parse_json_body(await request.body())  # 400 for any bad JSON, deep nesting too
        prepared = service.intake.prepare(body, is_chat)
        trace = DispatchTrace.of(service.route(prepared))
        if prepared.is_stream:
            return StreamingResponse(
                service.sse(trace, prepared),
                media_type="text/event-stream",
                headers=route_headers(trace.decision),
            )
        return await service.whole(trace, prepared)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, is_chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, is_chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        service: RouterService = app.state.service
        service.intake.check_auth(request)
        card = {
            "id": service.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "prfaas",
            "max_model_len": service.codec.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        monitor = app.state.service.monitor
        states = {n: s.is_ready for n, s in monitor.states.items()}
        status = 200 if monitor.is_ready() else 503
        deployment = os.environ.get(DEPLOYMENT_ID_ENV)
        body = {"ready": status == 200, "instances": states, "deployment": deployment}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        service: RouterService = app.state.service
        service.metrics.refresh_instances(service.monitor)
        service.metrics.refresh_prefix_index(service.prefixes)
        return metrics_response(service.metrics.registry)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        param = error_param(str(exc)) if exc.status < 500 else None
        return error_response(exc.status, str(exc), exc.kind, exc.code, param)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        message = str(exc)
        return error_response(
            400, message, "invalid_request_error", "invalid_request", error_param(message)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)
