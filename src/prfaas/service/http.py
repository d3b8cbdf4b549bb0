"""HTTP plumbing every service shares: running an app under uvicorn (with the request limits of
`prfaas.service.limits`: bounded request heads, head and body timeouts; the app is marked as
draining the moment a SIGTERM/SIGINT arrives), OpenAI-style JSON errors, the routes and body
limit every instance has (`/health`, `/ready`, `/metrics`, `/internal/stats`), the `/metrics`
response, and the transport settings taken from the topology.

A service that cannot start says why in one line: its address is taken (or otherwise cannot be
bound), or its app failed to start (the exception's message). uvicorn's own traceback of a failed
start goes to stderr only when stderr is a file (a log, e.g. `prfaas up --log-dir`)."""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import stat
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import Receive, Scope, Send

from prfaas.errors import UserError
from prfaas.service.limits import INSTANCE_MAX_BODY_BYTES, BodySizeLimit, BoundedHttpToolsProtocol
from prfaas.topology import InstanceConfig, Topology
from prfaas.transport.channel import check_congestion_control
from prfaas.transport.config import TransportConfig
from prfaas.transport.sender import parse_address

TOKEN_ENV = "PRFAAS_TRANSPORT_TOKEN"  # overrides / supplies the transport token (kept out of argv)
FIRST_TOKEN_HEADER = "x-prfaas-first-token-s"  # non-streamed decode answer: first token ready at
DEPLOYMENT_ID_ENV = "PRFAAS_DEPLOYMENT_ID"  # set by `prfaas up`; the router's /ready returns it


def error_response(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    """The OpenAI error body: {"error": {"message", "type", "code", "param"}}; `param` is the
    request field at fault, when there is one."""
    body = {"error": {"message": message, "type": kind, "code": code or kind, "param": param}}
    return JSONResponse(body, status_code=status)


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def add_instance_routes(app: FastAPI, instance: InstanceConfig) -> None:
    """`/internal/stats`, `/health`, `/ready` and `/metrics` of an instance whose service (on
    `app.state.service`) has `stats()` and a Prometheus `registry`; and the instance's body
    limit (`INSTANCE_MAX_BODY_BYTES`, with the body timeouts), outermost: it bounds every
    request, with or without the token."""
    app.add_middleware(BodySizeLimit, max_body_bytes=INSTANCE_MAX_BODY_BYTES)

    @app.get("/internal/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(app.state.service.stats().to_dict())

    @app.get("/health")
    async def health() -> JSONResponse:
        role = getattr(getattr(app.state, "service", None), "role", instance.role)
        body = {"status": "ok", "instance": instance.name, "role": role}
        return JSONResponse(body)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        reason = not_ready_reason(app)
        body = {"ready": reason is None, "instance": instance.name, "reason": reason}
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return metrics_response(app.state.service.registry)


def not_ready_reason(app: FastAPI) -> str | None:
    """Why the instance takes no new work now (None: it does): it is draining after a signal,
    its service (engine, KV receiver) is not up yet, or the service says it is not ready."""
    state = app.state
    if getattr(state, "draining", False):
        return "draining"
    service = getattr(state, "service", None)
    if service is None:
        return "starting: the engine is loading"
    if not getattr(service, "is_ready", True):
        return "starting: the KV receiver is not listening yet"
    return None


def mark_draining(app: FastAPI) -> None:
    """From now on `/ready` answers 503 "draining" (the process got SIGTERM or SIGINT)."""
    state = getattr(app, "state", None)
    if state is not None:
        state.draining = True


def transport_config(
    topology: Topology, deadline_s: float | None = None, *, cluster: str | None = None
) -> TransportConfig:
    """The KV transport's settings: the topology's security section, or the token from the
    environment (how `prfaas up` hands a generated token to its children), and the link's rate,
    to which senders size their connections and buffers (`transport.link_sizing`): that of
    `cluster`'s link (`Topology.link_of`: a provider's own), else the topology's `[link]`."""
    sec = topology.transport
    link = topology.link if cluster is None else topology.link_of(cluster)
    token = os.environ.get(TOKEN_ENV) or sec.token
    if token is None and sec.tls_cert is None:
        raise UserError(f"transport: set token, token_file or TLS files (or ${TOKEN_ENV})")
    if sec.tls_cert is not None:
        _check_tls_files(sec.tls_cert, sec.tls_key, sec.tls_ca)
    return TransportConfig(
        num_connections=sec.num_connections,
        token=token,
        tls_cert=sec.tls_cert,
        tls_key=sec.tls_key,
        tls_ca=sec.tls_ca,
        deadline_s=deadline_s or topology.policy.transfer_deadline_s,
        max_buffer_bytes=sec.receive_pool_bytes,
        congestion_control=_usable_congestion_control(sec.congestion_control),
        link_gbps=link.gbps,  # senders size their connections to it
        link_rtt_s=link.rtt_ms / 1e3,  # where a first connection measures no RTT
    )


def _usable_congestion_control(name: str | None) -> str | None:
    """`name`, once a socket here accepted it (UserError with the available ones if not)."""
    if name is not None:
        try:
            check_congestion_control(name)
        except ValueError as exc:
            raise UserError(f"transport.congestion_control: {exc}") from None
    return name


def _check_tls_files(cert: str, key: str | None, ca: str | None) -> None:
    """UserError unless the certificate, key and CA load as both sides' TLS contexts."""
    from prfaas.transport.channel import client_tls_context, server_tls_context

    if key is None or ca is None:
        raise UserError("transport: TLS needs tls_cert, tls_key and tls_ca")
    try:
        client_tls_context(cert, key, ca)
        server_tls_context(cert, key, ca)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise UserError(f"transport: cannot load TLS files {cert}, {key}, {ca}: {reason}") from None


def serve_app(app: FastAPI, address: str, name: str, drain_s: float = 30.0) -> None:
    """Serve `app` on "host:port" until SIGINT/SIGTERM (uvicorn handles both). On the signal it
    stops accepting connections, lets the requests in flight finish for up to `drain_s`, then
    cancels what is left and exits. UserError in one line when the service cannot start."""
    host, port = parse_address(address)
    configure_logging(name)
    probe = StartupErrorProbe(app)
    config = uvicorn.Config(
        probe,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, math.ceil(drain_s)),
        http=BoundedHttpToolsProtocol,  # request head <= 64 KiB and within 10 s (limits.py)
    )
    server = DrainingServer(config, app, quiet_startup=not _stderr_is_file())
    try:
        server.run()
    except SystemExit:  # uvicorn exits when the app fails to start or the address cannot bind
        raise UserError(_startup_failure(name, address, probe.error)) from None


def _startup_failure(name: str, address: str, error: BaseException | None) -> str:
    """One line: the app's startup exception, or why the address does not bind."""
    if isinstance(error, UserError):  # already says what to do
        return f"{name}: cannot start: {_one_line(str(error))}"
    if error is not None:
        return f"{name}: cannot start: {type(error).__name__}: {_one_line(str(error))}"
    host, port = parse_address(address)
    return f"{name}: cannot serve on {address}: {bind_refusal(host, port) or 'cannot bind'}"


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def bind_refusal(host: str, port: int) -> str | None:
    """Why a listening socket cannot bind host:port now, as the OS says it in lower case (None:
    it can), with the SO_REUSEADDR uvicorn sets, so a port in TIME_WAIT counts as free and one
    another process serves does not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return None


def _stderr_is_file() -> bool:
    """Whether stderr is a regular file (a log) rather than a terminal or a pipe."""
    try:
        return stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


class StartupErrorProbe:
    """The app, keeping the exception its lifespan raised (uvicorn only logs it and exits)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.error = exc
            raise


class DrainingServer(uvicorn.Server):
    """uvicorn's server that marks the app as draining the moment SIGTERM/SIGINT arrives, so
    that `/ready` answers 503 on connections still open while the requests in flight finish."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, quiet_startup: bool = False) -> None:
        super().__init__(config)
        self._app = app
        self._quiet_startup = quiet_startup  # no uvicorn log (tracebacks) while starting

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not self._quiet_startup:
            await super().startup(sockets)
            return
        uvicorn_log = logging.getLogger("uvicorn.error")
        level = uvicorn_log.level
        uvicorn_log.setLevel(logging.CRITICAL)
        try:
            await super().startup(sockets)
        finally:
            uvicorn_log.setLevel(level)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        mark_draining(self._app)
        super().handle_exit(sig, frame)


def configure_logging(name: str) -> None:
    """One line per event on stderr, prefixed with the process's role."""
    level = os.environ.get("PRFAAS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
