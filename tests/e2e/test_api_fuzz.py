"""Fuzzing the HTTP surfaces of a live deployment: the router's OpenAI API and the instances'
internal APIs, on real processes (`prfaas up`'s topology with emulated engines and an API key).

* schemathesis, from the OpenAPI document the router publishes (plus the request schemas of
  `prfaas.router.openai_api.with_request_schemas` where it lacks them), generates valid and
  invalid requests for `/v1/completions`, `/v1/chat/completions` and `/v1/models`; every answer
  must be a non-5xx, and every 4xx must carry an OpenAI-shaped error body.
* Hand-written hostile clients: invalid UTF-8, 10^400 numbers, JSON nested 100k deep, bodies and
  heads trickled past the server's timeouts, oversized heads and bodies, wrong and missing API
  keys, a client that disconnects mid-stream (its request must stop running at the decode
  instance). Each gets a 4xx with an OpenAI error body, never a 500 or a hang, is logged with its
  reason, and a normal request succeeds afterwards.
* The instances' `/internal/*` routes: 401 without the deployment token, 4xx for garbage.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import select
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from services_harness import API_KEY, System, get_json, launch, wait_for

from prfaas.launch.local import EmbeddedOptions, embedded_topology, free_port
from prfaas.router.openai_api import with_request_schemas
from prfaas.service import limits

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 180.0
EMULATE = "gpt-oss-120b"  # 2.3 MiB of KV for 32 tokens (paper-1t: 174 MiB of fixed state)
REPLY_TIMEOUT_S = 30.0  # no answer may take longer: a hang fails the test
MAX_FUZZ_TOKENS = 32  # generated requests ask for at most this many tokens (time bound)
FUZZ_EXAMPLES = {"/v1/completions": 150, "/v1/chat/completions": 150, "/v1/models": 10}
FUZZ_COUNTS: dict[str, Counter[int]] = {}  # path -> status -> count (printed, see reliability.md)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    options = EmbeddedOptions(
        model="qwen3_next",
        router_port=free_port(),
        engine="emulated",
        time_scale=0.2,
        threshold_tokens=64,
        api_keys=(API_KEY,),
        emulate=EMULATE,
    )
    running = launch(embedded_topology(tmp, options), tmp / "logs", READY_TIMEOUT_S)
    yield running
    running.launcher.stop()


# ---- raw HTTP ---------------------------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_exchange(url: str, data: bytes, *, chunks: Sequence[tuple[float, bytes]] = ()) -> bytes:
    """Send `data`, then each (delay_s, bytes) chunk unless the server has answered by then;
    return everything until the server closes or one whole response has arrived. Fails after
    REPLY_TIMEOUT_S (a hang)."""
    with socket.create_connection(address(url), timeout=REPLY_TIMEOUT_S) as sock:
        with contextlib.suppress(OSError):  # the server refused early: its answer is below
            sock.sendall(data)
            for delay_s, chunk in chunks:
                if select.select([sock], [], [], delay_s)[0]:
                    break  # answered (or closed) before the client finished: stop sending
                sock.sendall(chunk)
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    out = b""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        length = content_length(head)
        if sep and length is not None and len(body) >= length:
            return out
    raise AssertionError("no answer within the reply timeout: the server hangs")


def content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return None


def request_bytes(
    path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> bytes:
    fields = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body))}
    fields |= {"Authorization": f"Bearer {API_KEY}"} | (headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def status_and_json(reply: bytes) -> tuple[int, Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def assert_openai_error(
    reply: bytes, status: int | tuple[int, ...], code: str | None = None
) -> None:
    got, body = status_and_json(reply)
    statuses = status if isinstance(status, tuple) else (status,)
    assert got in statuses, (got, body)
    assert is_openai_error(body), body
    if code is not None:
        assert body["error"]["code"] == code, body


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and bool(error.get("message")) and "type" in error


def serves_a_normal_request(system: System) -> None:
    body = {"model": system.model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    reply = raw_exchange(system.url, request_bytes("/v1/completions", json.dumps(body).encode()))
    status, answer = status_and_json(reply)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 4


# ---- schemathesis from the published schema ---------------------------------------------------


def published_schema(system: System) -> Any:
    import schemathesis

    doc = get_json(f"{system.url}/openapi.json")
    doc = with_request_schemas(doc, system.model)  # a no-op once the router publishes them
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = doc["components"]["schemas"][name]["properties"]
        for key in ("max_tokens", "max_completion_tokens"):
            if key in props:  # bound the work a generated request asks for
                bounded = {"type": "integer", "maximum": MAX_FUZZ_TOKENS}
                props[key] = {"anyOf": [bounded, {"type": "null"}]}
    return schemathesis.openapi.from_dict(doc)


def openai_error_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every refusal carries OpenAI's error body (FastAPI's own 422/405 aside, none expected)."""
    if 400 <= response.status_code < 500:
        assert is_openai_error(json.loads(response.content)), response.content[:300]
    return None


@pytest.mark.parametrize(
    ("path", "method"), [(p, "GET" if "models" in p else "POST") for p in FUZZ_EXAMPLES]
)
def test_schemathesis_finds_no_server_error(system: System, path: str, method: str) -> None:
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    operation = published_schema(system)[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | (
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    )
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=FUZZ_EXAMPLES[path],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}  # keys: test_missing_or_wrong_api_keys
        response = case.call(base_url=system.url, headers=headers, timeout=REPLY_TIMEOUT_S)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error, openai_error_on_4xx])

    check()
    FUZZ_COUNTS[path] = statuses
    print(f"schemathesis {method} {path}: {sum(statuses.values())} cases, {dict(statuses)}")
    minimum = 1 if method == "GET" else FUZZ_EXAMPLES[path] // 2  # no parameters: one case
    assert sum(statuses.values()) >= minimum
    assert not [s for s in statuses if s >= 500]
    serves_a_normal_request(system)


# ---- hand-written hostile requests ------------------------------------------------------------

BIG = "1" + "0" * 400  # 10^400 as a JSON integer
OVER_CONTEXT_CHARS = 140_000  # byte tokens: past gpt-oss-120b's 131,072, the emulated context
HOSTILE_BODIES = {
    "invalid UTF-8": (b'{"model": "qwen3_next", "prompt": "\xff\xfe"}', 400, "invalid_json"),
    "not JSON": (b"{model: qwen3_next}", 400, "invalid_json"),
    "JSON array": (b"[1, 2]", 400, "invalid_request"),
    "10^400 max_tokens": (
        b'{"model": "qwen3_next", "prompt": "x", "max_tokens": %s}' % BIG.encode(),
        400,
        "context_length_exceeded",
    ),
    "1e400 temperature": (
        b'{"model": "qwen3_next", "prompt": "x", "temperature": 1e400}',
        400,
        "invalid_request",
    ),
    "10^400 seed": (
        b'{"model": "qwen3_next", "prompt": "x", "seed": %s}' % BIG.encode(),
        400,
        "invalid_request",
    ),
    "10^400 token id": (
        b'{"model": "qwen3_next", "prompt": [%s]}' % BIG.encode(),
        400,
        "invalid_request",
    ),
    "5000-digit number": (
        b'{"model": "qwen3_next", "prompt": "x", "n": 1' + b"0" * 5000 + b"}",
        400,
        "invalid_json",
    ),
    "NaN": (b'{"model": "qwen3_next", "prompt": "x", "top_p": NaN}', 400, "invalid_request"),
    "wrong model": (b'{"model": "gpt-4", "prompt": "x"}', 404, "model_not_found"),
    "empty prompt": (b'{"model": "qwen3_next", "prompt": ""}', 400, "invalid_request"),
    "prompt over the context": (
        b'{"model": "qwen3_next", "prompt": "%s"}' % (b"a" * OVER_CONTEXT_CHARS),
        400,
        "context_length_exceeded",
    ),
}
NESTED_BODY = b'{"model": "qwen3_next", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
# Cases about the prompt itself (token ids, empty, too long) have no chat form: chat gets its own.
PROMPT_ONLY = {"10^400 token id", "empty prompt", "prompt over the context"}
CHAT_BODIES = {
    "no messages": (b'{"model": "qwen3_next", "messages": []}', 400, "invalid_request"),
    "message over the context": (
        b'{"model": "qwen3_next", "messages": [{"role": "user", "content": "%s"}]}'
        % (b"a" * OVER_CONTEXT_CHARS),
        400,
        "context_length_exceeded",
    ),
}
HOSTILE_CASES = [("/v1/completions", case) for case in sorted(HOSTILE_BODIES)] + [
    ("/v1/chat/completions", case)
    for case in sorted((set(HOSTILE_BODIES) - PROMPT_ONLY) | set(CHAT_BODIES))
]


def hostile_body(path: str, case: str) -> tuple[bytes, int, str]:
    """Body, status and error code of a case. On chat, a completion case has its prompt replaced
    by messages (the prompt's value stays, under an unknown key)."""
    if not path.endswith("chat/completions"):
        return HOSTILE_BODIES[case]
    if case in CHAT_BODIES:
        return CHAT_BODIES[case]
    body, status, code = HOSTILE_BODIES[case]
    chat = b'"messages": [{"role": "user", "content": "x"}], "p": '
    return body.replace(b'"prompt": ', chat), status, code


@pytest.mark.parametrize(("path", "case"), HOSTILE_CASES)
def test_hostile_bodies_get_a_4xx_openai_error(system: System, case: str, path: str) -> None:
    body, status, code = hostile_body(path, case)
    assert_openai_error(raw_exchange(system.url, request_bytes(path, body)), status, code)


def test_json_nested_100k_deep_gets_a_400(system: System) -> None:
    reply = raw_exchange(system.url, request_bytes("/v1/completions", NESTED_BODY))
    assert_openai_error(reply, 400, "invalid_json")


def test_the_system_serves_after_the_hostile_bodies(system: System) -> None:
    raw_exchange(system.url, request_bytes("/v1/completions", NESTED_BODY))  # whatever it says
    serves_a_normal_request(system)
    # refusals from the intake are logged; router.py's own invalid-JSON answer is not (yet)
    assert_logged(system, "router", '"status": 400', "must be a finite number", "context_length")


@pytest.mark.parametrize(
    ("headers", "path", "method"),
    [
        ({"Authorization": None}, "/v1/completions", "POST"),
        ({"Authorization": "Bearer sk-wrong"}, "/v1/completions", "POST"),
        ({"Authorization": f"Basic {API_KEY}"}, "/v1/chat/completions", "POST"),
        ({"Authorization": f"Bearer {API_KEY}x"}, "/v1/models", "GET"),
        ({"Authorization": None}, "/v1/models", "GET"),
    ],
)
def test_missing_or_wrong_api_keys_get_401(
    system: System, headers: dict[str, str | None], path: str, method: str
) -> None:
    body = b'{"model": "qwen3_next", "prompt": "x"}' if method == "POST" else b""
    reply = raw_exchange(system.url, request_bytes(path, body, headers, method))  # type: ignore[arg-type]
    assert_openai_error(reply, 401, "invalid_api_key")
    assert_logged(system, "router", "invalid_api_key")
    assert "sk-wrong" not in system.log("router") and API_KEY not in system.log("router")


def test_oversized_heads_and_bodies_are_refused(system: System) -> None:
    url = system.url
    big_header = {"X-Padding": "a" * (1 << 20)}
    assert_openai_error(raw_exchange(url, request_bytes("/v1/completions", b"{}", big_header)), 431)
    many = {f"X-H{i}": "a" for i in range(limits.MAX_HEADERS + 1)}
    assert_openai_error(raw_exchange(url, request_bytes("/v1/completions", b"{}", many)), 431)
    long_url = request_bytes("/v1/models?" + "a" * 70_000, b"", method="GET")
    assert_openai_error(raw_exchange(url, long_url), 431)
    declared = request_bytes("/v1/completions", b"", {"Content-Length": str(5 << 20)})
    assert_openai_error(raw_exchange(url, declared), 413, "request_too_large")
    chunked_head = request_bytes(
        "/v1/completions", b"", {"Content-Length": None, "Transfer-Encoding": "chunked"}
    )
    piece = b"%x\r\n" % (1 << 20) + b"a" * (1 << 20) + b"\r\n"
    chunked = raw_exchange(url, chunked_head, chunks=[(0.0, piece)] * 5 + [(0.0, b"0\r\n\r\n")])
    assert_openai_error(chunked, 413, "request_too_large")
    serves_a_normal_request(system)
    assert_logged(system, "router", '"status": 431', '"status": 413')


def test_slow_clients_are_cut_off_at_the_timeouts(system: System) -> None:
    """Three slow clients at once: a silent connection, a head trickled byte by byte, a body
    that stops arriving. Each is answered 408 within the server's timeouts plus slack."""
    url = system.url
    body = b'{"model": "qwen3_next", "prompt": "slow", "max_tokens": 2}'
    head_only = request_bytes("/v1/completions", body)[: -len(body)]
    limit_s = max(limits.HEAD_TIMEOUT_S, limits.BODY_IDLE_TIMEOUT_S) + 5.0
    trickled_head = [(0.5, bytes([b])) for b in head_only[10:40]]  # 15 s for 30 bytes

    def silent() -> bytes:
        return raw_exchange(url, b"")

    def slow_head() -> bytes:
        return raw_exchange(url, head_only[:10], chunks=trickled_head)

    def stalled_body() -> bytes:  # half the body, then nothing
        return raw_exchange(url, head_only + body[:10], chunks=[(limit_s, body[10:])])

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(fn) for fn in (silent, slow_head, stalled_body)]
        serves_a_normal_request(system)  # the server is not blocked meanwhile
        replies = [f.result(timeout=limit_s + REPLY_TIMEOUT_S) for f in futures]
    elapsed_s = time.monotonic() - t0
    for reply in replies:
        assert_openai_error(reply, 408, "request_timeout")
    assert elapsed_s < limit_s + 5.0
    assert_logged(system, "router", "no complete request head", "request body too slow")


def test_a_client_that_disconnects_mid_stream_frees_its_request(system: System) -> None:
    decode = system.instance_url("pd-decode-0")
    headers = system.internal_headers()

    def running() -> int:
        stats = get_json(f"{decode}/internal/stats", headers=headers)
        return int(stats["num_requests_running"]) + int(stats["num_requests_waiting"])

    assert running() == 0
    body = {
        "model": system.model,
        "prompt": "stream for a long time",
        "max_tokens": 60_000,  # far longer than the test: only a cancel ends it in time
        "ignore_eos": True,
        "stream": True,
    }
    with socket.create_connection(address(system.url), timeout=REPLY_TIMEOUT_S) as sock:
        sock.sendall(request_bytes("/v1/completions", json.dumps(body).encode()))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        wait_for(lambda: running() == 1, 10, "the request to be running at the decode instance")
    t0 = time.monotonic()
    wait_for(lambda: running() == 0, 15, "the cancelled request to leave the decode instance")
    freed_after_s = time.monotonic() - t0
    metrics = urllib.request.urlopen(f"{system.url}/metrics", timeout=10).read().decode()
    assert 'finish_reason="cancelled"' in metrics
    print(f"disconnect mid-stream: the decode instance freed the request in {freed_after_s:.2f} s")
    serves_a_normal_request(system)


# ---- the instances' internal APIs -------------------------------------------------------------

INTERNAL_ROUTES = [
    ("prfaas-prefill-0", "POST", "/internal/prefill"),
    ("pd-prefill-0", "POST", "/internal/prefill"),
    ("pd-decode-0", "POST", "/internal/decode"),
    ("pd-decode-0", "POST", "/internal/abort"),
    ("pd-decode-0", "GET", "/internal/stats"),
    ("prfaas-prefill-0", "GET", "/internal/stats"),
    ("pd-decode-0", "GET", "/internal/kv_events"),
]


@pytest.mark.parametrize(("instance", "method", "path"), INTERNAL_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic x"])
def test_internal_routes_refuse_requests_without_the_token(
    system: System, instance: str, method: str, path: str, authorization: str | None
) -> None:
    url = system.instance_url(instance)
    body = b'{"transfer_id": "t"}' if method == "POST" else b""
    reply = raw_exchange(url, request_bytes(path, body, {"Authorization": authorization}, method))
    assert_openai_error(reply, 401, "invalid_token")


INTERNAL_GARBAGE = {
    "not JSON": b"{garbage",
    "invalid UTF-8": b'{"request": "\xff"}',
    "JSON array": b"[1, 2, 3]",
    "empty object": b"{}",
    "nested 100k deep": b"[" * 100_000 + b"]" * 100_000,
    "mistyped job": json.dumps(
        {
            "request": {"req_id": "r", "prompt_token_ids": ["1"], "sampling": {}},
            "transfer_id": "t",
            "decode_kv_address": "127.0.0.1:1",
            "deadline_s": float("inf"),
        }
    ).encode(),
}


# An abort needs only a transfer_id: a mistyped job that has one is a valid abort, not garbage.
ABORT_BODIES = {"not JSON", "invalid UTF-8", "JSON array", "empty object", "nested 100k deep"}
INTERNAL_GARBAGE_CASES = [
    (instance, path, case)
    for instance, path in [
        ("prfaas-prefill-0", "/internal/prefill"),
        ("pd-decode-0", "/internal/decode"),
        ("pd-decode-0", "/internal/abort"),
    ]
    for case in sorted(INTERNAL_GARBAGE)
    if not path.endswith("abort") or case in ABORT_BODIES
]


@pytest.mark.parametrize(("instance", "path", "case"), INTERNAL_GARBAGE_CASES)
def test_internal_routes_answer_garbage_with_4xx(
    system: System, instance: str, path: str, case: str
) -> None:
    url = system.instance_url(instance)
    token = system.internal_headers()
    reply = raw_exchange(url, request_bytes(path, INTERNAL_GARBAGE[case], token))
    got, body = status_and_json(reply)
    assert 400 <= got < 500, (got, body)
    assert is_openai_error(body), body


def test_internal_routes_bound_bodies_and_query_values(system: System) -> None:
    url = system.instance_url("pd-decode-0")
    token = system.internal_headers()
    declared = request_bytes("/internal/decode", b"", {**token, "Content-Length": str(1 << 30)})
    assert_openai_error(raw_exchange(url, declared), 413, "request_too_large")
    for query in ("after=-1", f"after={BIG}", "epoch=" + "e" * 100, "after=x"):
        reply = raw_exchange(url, request_bytes(f"/internal/kv_events?{query}", b"", token, "GET"))
        assert 400 <= status_and_json(reply)[0] < 500
    serves_a_normal_request(system)


# ---- helpers ----------------------------------------------------------------------------------


def assert_logged(system: System, process: str, *needles: str) -> None:
    """Every needle is in the process's log (refusals are logged with their reason)."""
    deadline = time.monotonic() + 5.0
    while True:
        text = system.log(process)
        missing = [n for n in needles if n not in text]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{process} log lacks {missing}")
        time.sleep(0.1)


def test_fuzz_counts_for_the_record(system: System) -> None:
    """Runs last: the schemathesis counts per operation, as docs/reliability.md records them."""
    for path, statuses in sorted(FUZZ_COUNTS.items()):
        print(f"{path}: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert all(not [s for s in st if s >= 500] for st in FUZZ_COUNTS.values())
