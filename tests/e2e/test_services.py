"""The live system end to end: router + PrfaaS prefill + PD prefill + PD decode as real processes
on 127.0.0.1, driven with the `openai` client. Offloaded and local requests must give exactly the
single-process engine's greedy output; the route header, the router's log and its metrics must
agree; bad input gets OpenAI-style 4xx errors; a killed PrfaaS prefill instance costs no request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from services_harness import (
    API_KEY,
    LONG_PROMPT,
    SHORT_PROMPT,
    Reference,
    System,
    get_json,
    get_text,
    metric_value,
    start_system,
    wait_for,
)

from prfaas.launch.local import free_port, router_is_ready
from prfaas.launch.local_record import RUN_DIR_ENV
from prfaas.service.text import plain_chat_prompt

pytestmark = pytest.mark.slow
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = start_system(tmp_path_factory.mktemp("qwen3_next"), "qwen3_next")
    try:
        yield system
    finally:
        system.launcher.stop()


@pytest.fixture(scope="module")
def qwen_ref() -> Reference:
    return Reference("qwen3_next")


def _complete(system: System, prompt: str, max_tokens: int = MAX_TOKENS) -> tuple[str, str, dict]:
    raw = system.openai().completions.with_raw_response.create(
        model=system.model, prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    body = raw.parse()
    return body.choices[0].text, raw.headers["x-prfaas-route"], body.model_dump()


def test_long_prompt_is_offloaded_and_equals_one_process(qwen: System, qwen_ref: Reference) -> None:
    text, route, body = _complete(qwen, LONG_PROMPT)
    assert route == "prfaas"
    assert text == qwen_ref.text(LONG_PROMPT, MAX_TOKENS)
    assert body["usage"]["prompt_tokens"] == len(LONG_PROMPT.encode())
    assert body["usage"]["completion_tokens"] > 0


def test_short_prompt_stays_local_and_equals_one_process(qwen: System, qwen_ref: Reference) -> None:
    text, route, _ = _complete(qwen, SHORT_PROMPT)
    assert route == "pd_prefill"
    assert text == qwen_ref.text(SHORT_PROMPT, MAX_TOKENS)


def test_outputs_differ_between_prompts(qwen: System, qwen_ref: Reference) -> None:
    """Negative control: the comparison above is not vacuous (outputs depend on the prompt)."""
    assert qwen_ref.text(LONG_PROMPT, MAX_TOKENS) != qwen_ref.text(SHORT_PROMPT, MAX_TOKENS)
    assert len(set(qwen_ref.tokens(list(LONG_PROMPT.encode()), MAX_TOKENS))) > 1


def test_streamed_chat_equals_one_process(qwen: System, qwen_ref: Reference) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": LONG_PROMPT},
    ]
    stream = qwen.openai().chat.completions.create(
        model=qwen.model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == qwen_ref.text(plain_chat_prompt(messages), MAX_TOKENS)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")


def test_streamed_completion_and_whole_chat_agree(qwen: System, qwen_ref: Reference) -> None:
    stream = qwen.openai().completions.create(
        model=qwen.model, prompt=SHORT_PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == qwen_ref.text(SHORT_PROMPT, MAX_TOKENS)
    messages = [{"role": "user", "content": SHORT_PROMPT}]
    chat = qwen.openai().chat.completions.create(
        model=qwen.model, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    assert chat.choices[0].message.content == qwen_ref.text(plain_chat_prompt(messages), MAX_TOKENS)


def test_header_log_and_metrics_agree(qwen: System) -> None:
    before = get_text(f"{qwen.url}/metrics")
    _, route, body = _complete(qwen, LONG_PROMPT + "metrics")
    after = get_text(f"{qwen.url}/metrics")
    name = "prfaas:route_decisions_total"
    grew = metric_value(after, name, route=route) - metric_value(before, name, route=route)
    assert route == "prfaas" and grew == 1
    assert metric_value(after, "prfaas:kv_transfer_bytes_total", route="prfaas") > 0
    assert metric_value(after, "prfaas:time_to_first_token_seconds_count") > 0
    lines = [
        json.loads(x.split(": ", 1)[1])
        for x in qwen.log("router").splitlines()
        if '"event": "route"' in x
    ]
    mine = [x for x in lines if x["req_id"] == body["id"]]
    assert len(mine) == 1 and mine[0]["route"] == "prfaas" and mine[0]["transfer_id"]
    # which prefix rule speaks depends on the measured link; either way l > t decided it, with
    # t = 64, or 128 when the loopback link's measured retransmissions (a loaded machine) made
    # the congestion rule raise it by its factor of 2 (the rules' boundaries: test_route_boundaries)
    assert re.fullmatch(r"(cache-affine|global-prefix): l=\d+ > t=(64|128)", mine[0]["reason"])


def test_internal_apis_need_the_deployment_token(qwen: System) -> None:
    stats_url = f"{qwen.instance_url('pd-decode-0')}/internal/stats"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = httpx.get(stats_url, headers=headers, timeout=30)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_token"
    reply = httpx.post(f"{qwen.instance_url('prfaas-prefill-0')}/internal/prefill", json={})
    assert reply.status_code == 401
    assert get_json(stats_url, headers=qwen.internal_headers())["role"] == "decode"
    assert get_json(f"{qwen.instance_url('pd-decode-0')}/health")["status"] == "ok"  # open


def test_models_health_ready(qwen: System) -> None:
    assert [m.id for m in qwen.openai().models.list()] == ["qwen3_next"]
    assert get_json(f"{qwen.url}/health")["status"] == "ok"
    assert get_json(f"{qwen.url}/ready")["ready"] is True


def test_32_concurrent_mixed_requests_get_their_solo_outputs(
    qwen: System, qwen_ref: Reference
) -> None:
    prompts = [
        (LONG_PROMPT * (1 + i % 3))[: 80 + 37 * i] if i % 2 else f"{SHORT_PROMPT} {i}"
        for i in range(32)
    ]
    client = qwen.openai()

    def one(prompt: str) -> tuple[str, str]:
        raw = client.completions.with_raw_response.create(
            model=qwen.model, prompt=prompt, max_tokens=8, temperature=0
        )
        return raw.parse().choices[0].text, raw.headers["x-prfaas-route"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, prompts))
    routes = {route for _, route in results}
    assert routes == {"prfaas", "pd_prefill"}
    for prompt, (text, _) in zip(prompts, results, strict=True):
        assert text == qwen_ref.text(prompt, 8), prompt


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "x"}', 400, "model"),
        (b'{"model": "qwen3_next", "prompt": "x", "max_tokens": "5"}', 400, "max_tokens"),
        (b'{"model": "qwen3_next", "prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "qwen3_next", "prompt": "x", "max_tokens": 70000}', 400, "context length"),
        (b'{"model": "qwen3_next", "prompt": "x", "n": 2}', 400, "n must be 1"),
        (b'{"model": "nope", "prompt": "x"}', 404, "does not exist"),
        (b'{"model": "qwen3_next", "prompt": [999999]}', 400, "token id"),
        (b'{"model": "qwen3_next", "prompt": "x", "temperature": NaN}', 400, "temperature"),
        (b'{"model": "qwen3_next", "prompt": ""}', 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
    ],
)
def test_bad_requests_get_openai_errors(
    qwen: System, body: bytes, status: int, needle: str
) -> None:
    reply = httpx.post(
        f"{qwen.url}/v1/completions",
        content=body,
        timeout=60,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]


def test_bad_key_oversized_body_and_still_serving(qwen: System, qwen_ref: Reference) -> None:
    reply = httpx.post(
        f"{qwen.url}/v1/completions",
        json={"model": "qwen3_next", "prompt": "x"},
        headers={"Authorization": "Bearer wrong"},
        timeout=60,
    )
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{qwen.url}/v1", api_key="wrong", max_retries=0).models.list()
    huge = b'{"model": "qwen3_next", "prompt": "' + b"a" * (5 << 20) + b'"}'
    reply = httpx.post(
        f"{qwen.url}/v1/completions",
        content=huge,
        timeout=60,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert reply.status_code == 413 and "exceeds" in reply.json()["error"]["message"]
    text, _, _ = _complete(qwen, SHORT_PROMPT)  # every process survived
    assert text == qwen_ref.text(SHORT_PROMPT, MAX_TOKENS)


def _kill_prefill_mid_request(system: System, prompt: str) -> dict[str, object]:
    """Send `prompt` (offloaded) and SIGKILL the PrfaaS prefill instance while it works on it."""
    out: dict[str, object] = {}
    client = system.openai()

    def send() -> None:
        try:
            raw = client.completions.with_raw_response.create(
                model=system.model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
            )
            out["text"], out["route"] = raw.parse().choices[0].text, raw.headers["x-prfaas-route"]
        except openai.APIStatusError as exc:
            out["status"], out["error"] = exc.status_code, exc.message

    thread = threading.Thread(target=send)
    thread.start()
    stats_url = f"{system.instance_url('prfaas-prefill-0')}/internal/stats"
    headers = system.internal_headers()
    wait_for(
        lambda: get_json(stats_url, headers=headers)["num_requests_running"] >= 1,
        120,
        "the prefill to start",
        period_s=0.01,
    )
    system.launcher.kill("prfaas-prefill-0")
    thread.join(timeout=300)
    assert not thread.is_alive(), "the request outlived its deadline"
    return out


def _long_prompt(n: int) -> str:
    return (LONG_PROMPT * (n // len(LONG_PROMPT) + 1))[:n]


@pytest.mark.faults
def test_killed_prfaas_prefill_recomputes_then_routes_locally(
    qwen: System, qwen_ref: Reference
) -> None:
    prompt = _long_prompt(6000)  # long enough that the kill lands during its prefill
    out = _kill_prefill_mid_request(qwen, prompt)
    assert out.get("route") == "prfaas", out
    assert out["text"] == qwen_ref.text(prompt, MAX_TOKENS)
    metrics = get_text(f"{qwen.instance_url('pd-decode-0')}/metrics")
    assert metric_value(metrics, "prfaas:fallback_prefills_total") >= 1
    text, route, _ = _complete(qwen, LONG_PROMPT)  # served without the PrfaaS cluster
    assert route == "pd_prefill" and text == qwen_ref.text(LONG_PROMPT, MAX_TOKENS)
    qwen.launcher.restart("prfaas-prefill-0")
    wait_for(lambda: router_is_ready(qwen.url), 420, "the restarted instance to be ready")
    _, route, _ = _complete(qwen, LONG_PROMPT)
    assert route == "prfaas"


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = start_system(tmp_path_factory.mktemp("kimi"), "kimi_linear", failure="fail")
    try:
        yield system
    finally:
        system.launcher.stop()


def test_kimi_linear_offloaded_equals_one_process(kimi: System) -> None:
    ref = Reference("kimi_linear")
    text, route, _ = _complete(kimi, LONG_PROMPT)
    assert route == "prfaas" and text == ref.text(LONG_PROMPT, MAX_TOKENS)
    text, route, _ = _complete(kimi, SHORT_PROMPT)
    assert route == "pd_prefill" and text == ref.text(SHORT_PROMPT, MAX_TOKENS)


@pytest.mark.faults
def test_killed_prefill_with_fail_policy_returns_a_clear_error(kimi: System) -> None:
    out = _kill_prefill_mid_request(kimi, _long_prompt(6000))
    assert out.get("status") == 503, out
    assert "KV state lost" in str(out["error"]) and "fail" in str(out["error"])
    _, route, _ = _complete(kimi, SHORT_PROMPT)
    assert route == "pd_prefill"


def test_up_is_found_by_plain_status_and_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    """`prfaas up` (emulated engines, so no model loads) records itself: a plain `prfaas status`
    finds it while it runs and says none is running after SIGTERM, which leaves no child behind."""
    env = {**os.environ, RUN_DIR_ENV: str(tmp_path / "run")}
    cmd = [
        sys.executable,
        "-m",
        "prfaas",
        "up",
        "--engine",
        "emulated",
        "--json",
        "--port",
        str(free_port()),
        "--log-dir",
        str(tmp_path),
    ]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert up.stdout is not None
        banner = json.loads(_read_json_block(up.stdout))
        router_url = banner["url"].removesuffix("/v1")
        assert get_json(router_url + "/ready")["ready"] is True
        pids = list(banner["pids"].values())
        assert len(pids) == 4 and all(_is_running(pid) for pid in pids)
        status = _plain_status(env)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["router"]["url"] == router_url and len(report["instances"]) == 3
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        wait_for(lambda: not any(_is_running(pid) for pid in pids), 30, "children to exit")
        assert not Path(banner["deployment_file"]).exists()
        gone = _plain_status(env)
        assert gone.returncode == 2 and "no local deployment is running" in gone.stderr
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_ctrl_c_stops_up_even_where_it_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A background job of a shell without job control starts with SIGINT ignored, which Python
    keeps; `prfaas up` still takes Ctrl-C as a clean stop (its servers handle SIGINT
    themselves, so an `up` ignoring it saw them exit and failed with exit 2)."""
    env = {**os.environ, RUN_DIR_ENV: str(tmp_path / "run")}
    cmd = [sys.executable, "-m", "prfaas", "up", "--engine", "emulated", "--json",
           "--port", str(free_port()), "--log-dir", str(tmp_path)]  # fmt: skip
    up = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert up.stdout is not None
        pids = list(json.loads(_read_json_block(up.stdout))["pids"].values())
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
        _, stderr = up.communicate(timeout=120)
        assert up.returncode == 0, stderr
        assert "prfaas up: stopping" in stderr and "exited with status" not in stderr
        wait_for(lambda: not any(_is_running(pid) for pid in pids), 30, "children to exit")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def _plain_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prfaas", "status", "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


def _read_json_block(stream: Any) -> str:
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith("}"):
            return "".join(lines)
    raise AssertionError(f"prfaas up exited before printing its banner: {lines}")


def _is_running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text().lower()
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def checkpoint_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    from prfaas.engine.checkpoint import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    directory = save_tiny_checkpoint("qwen3_next", root / "tiny-qwen3-next")
    system = start_system(root, str(directory))
    try:
        yield system
    finally:
        system.launcher.stop()


def test_a_checkpoint_directory_serves_with_its_own_tokenizer_and_template(
    checkpoint_system: System,
) -> None:
    """`model.name` a local checkpoint (weights, tokenizer files, chat template): the router
    tokenizes and applies the template with the checkpoint's tokenizer, offloads, and the output
    equals one process loading the same directory."""
    system = checkpoint_system
    assert system.model == "tiny-qwen3-next"
    ref = Reference(system.topology.model.name)
    messages = [{"role": "user", "content": LONG_PROMPT}]
    raw = system.openai().chat.completions.with_raw_response.create(
        model=system.model, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    assert raw.headers["x-prfaas-route"] == "prfaas"
    text = raw.parse().choices[0].message.content
    assert text == ref.text(plain_chat_prompt(messages), MAX_TOKENS)
