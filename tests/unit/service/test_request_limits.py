"""Request limits and checks of the HTTP services, in process: the bounded httptools protocol on a
real uvicorn socket, the body limit and timeouts, per-key concurrency, the internal-API token,
JSON body parsing, strict `from_dict` of the internal jobs and the published request schemas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

import prfaas.service.limits as limits
from polling import WAIT_TIMEOUT_S, until, wait_until
from prfaas.errors import UserError
from prfaas.messages import DecodeJob, GenerateRequest, KVManifest, PrefillJob, SamplingParams
from prfaas.router.intake import ApiError, parse_json_body
from prfaas.router.openai_api import with_request_schemas
from prfaas.service.auth import InternalAuth, is_loopback
from prfaas.service.limits import BodySizeLimit, BoundedHttpToolsProtocol, ConcurrencyLimit

# ---- a tiny ASGI app and a harness to call middleware directly ------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers its length."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    payload = json.dumps({"num_bytes": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def scope(
    path: str = "/v1/completions",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 5555),
) -> dict[str, Any]:
    return {"type": "http", "path": path, "headers": headers or [], "client": client}


async def call(
    app: Any, scope_: dict[str, Any], chunks: list[tuple[float, bytes]]
) -> tuple[int, Any]:
    """Run `app` once; the body arrives as (delay_s, bytes) chunks. Returns (status, JSON)."""
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not pending:
            await asyncio.sleep(3600)  # a client that sends nothing more
        delay_s, data = pending.pop(0)
        await asyncio.sleep(delay_s)
        return {"type": "http.request", "body": data, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope_, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def is_openai_error(body: Any, code: str) -> bool:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return error.get("code") == code and bool(error.get("message")) and "type" in error


# ---- body size and timeouts --------------------------------------------------------------------


def test_body_over_the_limit_is_refused_before_it_is_read(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "prfaas.limits")
    app = BodySizeLimit(echo_app, max_body_bytes=100)
    declared = scope(headers=[(b"content-length", b"101")])
    status, body = run(call(app, declared, [(0, b"x" * 101)]))
    assert status == 413 and is_openai_error(body, "request_too_large")
    status, body = run(call(app, scope(), [(0, b"x" * 60), (0, b"x" * 60)]))  # chunked
    assert status == 413
    assert run(call(app, scope(), [(0, b"x" * 100)])) == (200, {"num_bytes": 100})
    assert caplog.text.count('"status": 413') == 2


def test_a_trickled_body_is_cut_off_with_408(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "prfaas.limits")
    idle = BodySizeLimit(echo_app, 1000, body_idle_timeout_s=0.1, body_timeout_s=10)
    t0 = time.monotonic()
    status, body = run(call(idle, scope(), [(0, b"{"), (0.5, b"}")]))
    assert status == 408 and is_openai_error(body, "request_timeout")
    assert time.monotonic() - t0 < 0.4
    total = BodySizeLimit(echo_app, 1000, body_idle_timeout_s=0.1, body_timeout_s=0.25)
    drip = [(0, b"x")] + [(0.05, b"x")] * 20  # each chunk in time, the whole body not
    status, _ = run(call(total, scope(), drip))
    assert status == 408
    assert run(call(total, scope(), [(0, b"x"), (0.05, b"y")])) == (200, {"num_bytes": 2})
    assert caplog.text.count("request body too slow") == 2


def test_body_limit_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        BodySizeLimit(echo_app, 0)
    with pytest.raises(ValueError):
        BodySizeLimit(echo_app, 10, body_idle_timeout_s=0)


# ---- concurrency per key ---------------------------------------------------------------------


def test_concurrent_requests_are_limited_per_key() -> None:
    release = asyncio.Event()

    async def slow_app(scope_: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await echo_app(scope_, receive, send)

    limit = ConcurrencyLimit(slow_app, max_concurrent=2)

    def keyed(key: bytes) -> dict[str, Any]:
        return scope(headers=[(b"authorization", b"Bearer " + key)])

    async def main() -> None:
        held = [asyncio.create_task(call(limit, keyed(b"a"), [(0, b"")])) for _ in range(2)]
        other = asyncio.create_task(call(limit, keyed(b"b"), [(0, b"")]))
        held_now = lambda: sorted(limit.in_flight.values()) == [1, 2]  # noqa: E731
        await until(held_now, WAIT_TIMEOUT_S, "two requests of key a and one of b in flight")
        status, body = await call(limit, keyed(b"a"), [(0, b"")])
        assert status == 429 and is_openai_error(body, "rate_limit_exceeded")
        assert sorted(limit.in_flight.values()) == [1, 2]
        assert b"Bearer a" not in json.dumps(list(limit.in_flight)).encode()  # digests only
        release.set()
        assert [s for s, _ in await asyncio.gather(*held, other)] == [200, 200, 200]
        assert limit.in_flight == {}
        unlimited = ConcurrencyLimit(slow_app, max_concurrent=1, prefixes=("/v1/",))
        health = [call(unlimited, scope(path="/health"), [(0, b"")]) for _ in range(3)]
        assert [s for s, _ in await asyncio.gather(*health)] == [200] * 3  # not limited

    run(main())


# ---- internal API token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "client", "header", "status"),
    [
        ("s3cret", ("10.0.0.9", 1), b"Bearer s3cret", 200),
        ("s3cret", ("10.0.0.9", 1), b"Bearer nope-x1", 401),
        ("s3cret", ("127.0.0.1", 1), b"", 401),
        ("s3cret", ("10.0.0.9", 1), b"bearer s3cret", 401),
        (None, ("127.0.0.1", 1), b"", 200),
        (None, ("::1", 1), b"", 200),
        (None, ("::ffff:127.0.0.1", 1), b"", 200),
        (None, ("10.0.0.9", 1), b"", 403),
        (None, ("192.168.1.2", 1), b"Bearer anything", 403),
    ],
)
def test_internal_routes_need_the_token_or_a_loopback_client(
    token: str | None,
    client: tuple[str, int],
    header: bytes,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "prfaas.auth")
    auth = InternalAuth(echo_app, token)
    headers = [(b"authorization", header)] if header else []
    got, body = run(call(auth, scope("/internal/prefill", headers, client), [(0, b"{}")]))
    assert got == status
    if status != 200:
        assert body["error"]["code"] in ("invalid_token", "loopback_only")
        assert f'"status": {status}' in caplog.text and client[0] in caplog.text
        assert "s3cret" not in caplog.text and "nope-x1" not in caplog.text
    open_route = run(call(auth, scope("/health", [], client), [(0, b"")]))
    assert open_route[0] == 200


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not any(map(is_loopback, ["10.0.0.1", "::ffff:10.0.0.1", "localhost", "", None]))


# ---- JSON bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"a": 1' + b"0" * 5000 + b"}", b'{"a": "\xff"}', b"", b"{", b"\x00"],
)
def test_bad_json_bodies_are_400_invalid_json(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_json_body(raw)
    assert info.value.status == 400 and info.value.code == "invalid_json"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256) | st.integers(1, 3000).map(lambda n: b"{" * n))
def test_any_body_parses_or_is_a_400(raw: bytes) -> None:
    try:
        parse_json_body(raw)
    except ApiError as exc:
        assert exc.status == 400


# ---- strict from_dict of internal jobs -------------------------------------------------------


def _prefill_job() -> dict[str, Any]:
    request = GenerateRequest("r1", (1, 2, 3), SamplingParams(max_tokens=4))
    return PrefillJob(request, "t1", "127.0.0.1:9", 30.0).to_dict()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("deadline_s",), float("nan")),
        (("deadline_s",), float("inf")),
        (("deadline_s",), -1),
        (("deadline_s",), "30"),
        (("deadline_s",), 10**400),
        (("transfer_id",), ""),
        (("transfer_id",), 7),
        (("request", "prompt_token_ids"), ["1"]),
        (("request", "prompt_token_ids"), [True]),
        (("request", "prompt_token_ids"), [-1]),
        (("request", "prompt_token_ids"), [1.5]),
        (("request", "prompt_token_ids"), "123"),
        (("request", "sampling", "max_tokens"), 2.0),
        (("request", "sampling", "temperature"), 10**400),
        (("request", "sampling", "stop"), [1]),
        (("request", "sampling", "ignore_eos"), "false"),
        (("request", "sampling", "unknown"), 1),
        (("request",), [1, 2]),
    ],
)
def test_internal_jobs_refuse_mistyped_fields(path: tuple[str, ...], value: object) -> None:
    job = _prefill_job()
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises((ValueError, UserError)):
        PrefillJob.from_dict(job)


def test_decode_job_refuses_unknown_failure_policy_and_non_boolean_stream() -> None:
    job = DecodeJob(GenerateRequest("r", (1,)), "t", 5.0).to_dict()
    assert DecodeJob.from_dict(json.loads(json.dumps(job))) == DecodeJob.from_dict(job)
    for key, value in [("failure_policy", "retry"), ("stream", "no"), ("deadline_s", 0)]:
        with pytest.raises(ValueError, match=key):
            DecodeJob.from_dict({**job, key: value})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_prefill_job())), json_values), json_values)
def test_from_dict_of_arbitrary_json_raises_only_expected_errors(
    fields: dict[str, Any], manifest: Any
) -> None:
    for parse, data in [
        (PrefillJob.from_dict, {**_prefill_job(), **fields}),
        (DecodeJob.from_dict, fields),
        (KVManifest.from_dict, manifest),
    ]:
        with contextlib.suppress(KeyError, ValueError, UserError):  # anything else fails
            parse(data)


# ---- the request head, on a real socket --------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(limits, "HEAD_TIMEOUT_S", 0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        echo_app,
        host="127.0.0.1",
        port=port,
        http=BoundedHttpToolsProtocol,
        log_level="error",
        lifespan="off",
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_until(lambda: instance.started, WAIT_TIMEOUT_S, "uvicorn to listen")
    yield "127.0.0.1", port
    instance.should_exit = True
    thread.join(timeout=10)


def exchange(address: tuple[str, int], data: bytes, wait_s: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes (or `wait_s` passes)."""
    with socket.create_connection(address, timeout=wait_s) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


def status_and_body(reply: bytes) -> tuple[int, Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else None


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * (1 << 20) + b"\r\n",
        b"".join(b"X-%d: a\r\n" % i for i in range(limits.MAX_HEADERS + 1)),
    ],
    ids=["one 1 MiB header", "too many headers"],
)
def test_oversized_request_heads_get_431(server: tuple[str, int], extra: bytes) -> None:
    reply = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    status, body = status_and_body(reply)
    assert status == 431 and is_openai_error(body, "request_header_fields_too_large")


def test_oversized_url_gets_431(server: tuple[str, int]) -> None:
    status, _ = status_and_body(exchange(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"))
    assert status == 431


def test_heads_that_never_complete_get_408(server: tuple[str, int]) -> None:
    t0 = time.monotonic()
    status, body = status_and_body(exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "))
    assert status == 408 and is_openai_error(body, "request_timeout")
    assert 0.4 < time.monotonic() - t0 < 3.0
    t0 = time.monotonic()
    assert exchange(server, b"").startswith(b"HTTP/1.1 408")  # a silent connection too
    assert time.monotonic() - t0 < 3.0


def test_normal_and_keep_alive_requests_still_work(server: tuple[str, int]) -> None:
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    with socket.create_connection(server, timeout=5) as sock:
        for _ in range(2):
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"0\r\n\r\n"):  # the chunked body's end
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200") and b'{"num_bytes": 2}' in reply
            time.sleep(0.3)  # idle between requests, under the head timeout


# ---- the published request schemas -----------------------------------------------------------


def test_request_schemas_are_added_once_and_resolve() -> None:
    base = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/v1/completions": {"post": {"responses": {}}}, "/v1/models": {"get": {}}},
    }
    doc = with_request_schemas(base, "m")
    assert with_request_schemas(doc, "m") == doc and "requestBody" not in str(base)
    body = doc["paths"]["/v1/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schema = doc["components"]["schemas"][ref]
    assert schema["properties"]["model"]["enum"] == ["m"] and "prompt" in schema["required"]
    refs = {v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/schemas/")}
    assert all(r.rsplit("/", 1)[1] in doc["components"]["schemas"] for r in refs)
    assert set(doc["paths"]["/v1/completions"]["post"]["responses"]) >= {"400", "401", "413"}


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
    else:
        yield node
