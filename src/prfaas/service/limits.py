"""Request limits of every HTTP service: what one client may make a server hold, and for how long.

Owns three layers, each refusing with an OpenAI-style JSON error and a logged reason:

* `BoundedHttpToolsProtocol` (uvicorn's httptools protocol, bounded): a request head (request
  line + headers) of at most `MAX_HEAD_BYTES` and `MAX_HEADERS` headers, else 431; a connection
  must deliver a complete head within `HEAD_TIMEOUT_S` of opening or of its previous response,
  else 408 and close. uvicorn's httptools protocol bounds neither on its own.
* `BodySizeLimit` (ASGI): a body over `max_body_bytes` gets 413 before it is read when
  Content-Length says so, or as soon as a chunked body grows past it; a body whose next chunk
  takes longer than `body_idle_timeout_s`, or that is not complete `body_timeout_s` after the
  request started, gets 408 (slow clients that trickle a body).
* `ConcurrencyLimit` (ASGI): at most `max_concurrent` requests in flight per API key (per
  `Authorization` value; requests without one share a bucket), else 429.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

import httptools
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("prfaas.limits")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers of one request
MAX_HEADERS = 128  # header lines of one request
HEAD_TIMEOUT_S = 10.0  # from connection (or previous response) to a complete request head
BODY_IDLE_TIMEOUT_S = 10.0  # longest wait for the next chunk of a request body
BODY_TIMEOUT_S = 60.0  # longest time to receive a whole request body
INSTANCE_MAX_BODY_BYTES = 64 << 20  # internal APIs: a job carries at most the prompt's token ids
DEFAULT_MAX_CONCURRENT_PER_KEY = 256  # ConcurrencyLimit's default; the router's is in its topology


def error_body(message: str, kind: str, code: str) -> bytes:
    """The OpenAI error body, as bytes."""
    error = {"message": message, "type": kind, "code": code, "param": None}
    return json.dumps({"error": error}).encode()


async def send_error(send: Send, status: int, message: str, kind: str, code: str) -> None:
    """Answer an ASGI request with `status` and an OpenAI error body."""
    body = error_body(message, kind, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def log_refusal(status: int, reason: str, client: str, path: str = "") -> None:
    """One JSON line per refused request; never a header value or body."""
    fields = {"event": "rejected", "status": status, "reason": reason, "client": client}
    if path:
        fields["path"] = path[:200]
    log.info(json.dumps(fields))


# ---- the request head (HTTP protocol level) --------------------------------------------------


class HeadTooLarge(Exception):
    """The request head exceeds MAX_HEAD_BYTES or MAX_HEADERS."""


_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and a head timeout.

    uvicorn 0.54 keeps every header and URL byte a client sends (httptools imposes no limit)
    and waits forever for a head that never completes; this class refuses both. Pass it as
    `uvicorn.Config(http=BoundedHttpToolsProtocol)`."""

    _head_bytes = 0
    _num_headers = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._num_headers = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head must come in time, too

    def data_received(self, data: bytes) -> None:
        """uvicorn's `data_received`, with a head over the limits answered 431 instead of 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(431, str(exc.__context__), "request_header_fields_too_large")
            else:
                self._refuse_invalid()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._refuse_invalid()

    def _count_head(self, num_bytes: int, num_headers: int) -> None:
        self._head_bytes += num_bytes
        self._num_headers += num_headers
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request head exceeds {MAX_HEAD_BYTES} bytes")
        if self._num_headers > MAX_HEADERS:
            raise HeadTooLarge(f"request has more than {MAX_HEADERS} headers")

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a request is still being served: not idle
            return
        message = f"no complete request head within {HEAD_TIMEOUT_S:g} s"
        self._refuse(408, message, "request_timeout")

    def _refuse_invalid(self) -> None:
        log_refusal(400, "invalid HTTP request", self._client_text())
        self.send_400_response("Invalid HTTP request received.")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._disarm_head_timer()
        log_refusal(status, message, self._client_text())
        body = error_body(message, "invalid_request_error", code)
        head = (
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(_STATUS_LINES[status] + head + body)
        self.transport.close()

    def _client_text(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"


# ---- the request body (ASGI) -----------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodySizeLimit:
    """Refuse HTTP bodies over `max_body_bytes` (413) or too slow to arrive (408); never buffers
    more than `max_body_bytes`."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        if max_body_bytes < 1 or body_idle_timeout_s <= 0 or body_timeout_s <= 0:
            raise ValueError("max_body_bytes and the body timeouts must be > 0")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_idle_timeout_s = body_idle_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse_too_large(scope, send)
            return
        num_bytes = 0
        is_body_complete = False
        started = False
        body_deadline = time.monotonic() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal num_bytes, is_body_complete
            if is_body_complete:  # afterwards the app only listens for a disconnect
                return await receive()
            wait_s = min(self.body_idle_timeout_s, body_deadline - time.monotonic())
            try:
                message: Message = await asyncio.wait_for(receive(), max(wait_s, 0.0))
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                num_bytes += len(message.get("body", b""))
                is_body_complete = not message.get("more_body", False)
                if num_bytes > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse_too_large(scope, send)
        except BodyTooSlow:
            log_refusal(408, "request body too slow", client_address(scope), scope.get("path", ""))
            if not started:
                message = (
                    f"request body not received in time (each chunk within "
                    f"{self.body_idle_timeout_s:g} s, all of it within {self.body_timeout_s:g} s)"
                )
                await send_error(send, 408, message, "invalid_request_error", "request_timeout")

    async def _refuse_too_large(self, scope: Scope, send: Send) -> None:
        message = f"request body exceeds {self.max_body_bytes} bytes"
        log_refusal(413, message, client_address(scope), scope.get("path", ""))
        await send_error(send, 413, message, "invalid_request_error", "request_too_large")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# ---- concurrent requests per API key (ASGI) --------------------------------------------------


class ConcurrencyLimit:
    """At most `max_concurrent` requests in flight per `Authorization` value (streams count
    until their last byte); over it, 429 `rate_limit_exceeded`. Paths outside `prefixes` pass.

    Keys are kept as SHA-256 digests (never the secret itself) and forgotten when idle. A wrong
    key gets its own bucket, but is refused at once by the API-key check behind this one."""

    def __init__(
        self,
        app: ASGIApp,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_PER_KEY,
        prefixes: tuple[str, ...] = ("/v1/",),
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.app = app
        self.max_concurrent = max_concurrent
        self.prefixes = prefixes
        self.in_flight: dict[str, int] = {}  # key digest -> requests in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        key = _key_digest(scope)
        if self.in_flight.get(key, 0) >= self.max_concurrent:
            message = f"more than {self.max_concurrent} concurrent requests for this API key"
            log_refusal(429, message, client_address(scope), path)
            await send_error(send, 429, message, "rate_limit_error", "rate_limit_exceeded")
            return
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[key] - 1
            if left:
                self.in_flight[key] = left
            else:
                del self.in_flight[key]


def _key_digest(scope: Scope) -> str:
    value = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
    return hashlib.sha256(value).hexdigest()
