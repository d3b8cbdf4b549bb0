"""The PrfaaS router in front of stock `vllm serve` processes, all started by `prfaas up` from a
topology of `engine = "vllm"` instances (a PrfaaS prefill, a PD prefill, a PD decode; a tiny
random llama made here, with the project's byte tokenizer). Through the `openai` client: a long
prompt is prefilled by the PrfaaS instance and its KV crosses to the decode instance over the
PrfaaS connector, a short one stays in the PD cluster, the route header, the response's `prfaas`
field and the router's metrics agree; greedy tokens through the router equal a lone vLLM
instance's for the same prompt; `prfaas profile` measures one of the instances and `prfaas plan`
plans with the file. (A killed instance: test_router_vllm_faults.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from checkpoints import save_checkpoint
from harness import run_engine

from prfaas.engine.checkpoint import byte_tokenizer
from prfaas.engine.presets import tiny_config_kwargs
from prfaas.service.text import load_codec
from prfaas.topology import ModelConfig, load_topology
from topologies import STANDARD, Cluster, TopologySpec

TOKEN = "vllm-router-test"
THRESHOLD_TOKENS = 64
START_TIMEOUT_S = 900.0  # three vLLM engines start one after another on two loaded cores
NUM_OUTPUT_TOKENS = 8
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VLLM_ARGS = (
    "--dtype bfloat16 --enforce-eager --max-model-len 2048 --kv-cache-memory-bytes 268435456"
)


def _topology(
    directory: Path,
    model: Path,
    failure: str = "recompute",
    clusters: tuple[Cluster, ...] = STANDARD,
) -> tuple[Path, str]:
    """Router, PrfaaS prefill r0, PD prefill p0, PD decode d0 (with its KV receiver), on vLLM
    (or the instances of `clusters`)."""
    spec = TopologySpec(
        clusters=clusters,
        engine="vllm",
        model=str(model),
        threshold=THRESHOLD_TOKENS,
        token=TOKEN,
        transfer_deadline_s=60.0,
        failure=failure,
    )
    path = spec.write(directory)
    return path, f"http://{load_topology(path).router.http}"


def _checkpoint(directory: Path, preset: str = "llama") -> Path:
    model = save_checkpoint(preset, directory / preset)
    byte_tokenizer(tiny_config_kwargs(preset)).save_pretrained(model)
    return model


@contextlib.contextmanager
def prfaas_up(
    config: Path, url: str, work: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Path]:
    """`prfaas up --config` in a child process until the router is ready; yields the log
    folder, and stops the deployment (Ctrl-C) on the way out."""
    logs = work / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "PRFAAS_VLLM_ARGS": VLLM_ARGS,
        "PRFAAS_RUN_DIR": str(work / "run"),
        **(extra_env or {}),
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "prfaas", "up", "--config", str(config), "--log-dir", str(logs),
         "--ready-timeout", str(START_TIMEOUT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        while not _ready(url):
            assert up.poll() is None, f"prfaas up exited: {up.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the vLLM deployment did not become ready"
            time.sleep(1.0)
        yield logs
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()
            up.communicate()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """`prfaas up` of the vLLM topology: (router URL, checkpoint, log folder)."""
    work = tmp_path_factory.mktemp("router-vllm")
    model = _checkpoint(work)
    config, url = _topology(work, model)
    with prfaas_up(config, url, work) as logs:
        yield url, model, logs


def _config_of(logs: Path) -> Path:
    return logs.parent / "topology.toml"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)


def _completion(url: str, prompt: str | list[int]) -> tuple[str, dict[str, object], str]:
    client = _client(url)
    raw = client.completions.with_raw_response.create(
        model=client.models.list().data[0].id, prompt=prompt, max_tokens=NUM_OUTPUT_TOKENS,
        temperature=0,
    )  # fmt: skip
    reply = raw.parse()
    info = reply.model_extra["prfaas"] if reply.model_extra else {}
    return raw.headers["x-prfaas-route"], dict(info), reply.choices[0].text


def _streamed(url: str, prompt: list[int]) -> str:
    """The text of a streamed completion, chunk by chunk."""
    client = _client(url)
    model = client.models.list().data[0].id
    chunks = client.completions.create(
        model=model, prompt=prompt, max_tokens=NUM_OUTPUT_TOKENS, temperature=0, stream=True
    )
    return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)


def _route_logged(logs: Path, req_id: str) -> str:
    """The route the router's log line gave request `req_id`."""
    for line in (logs / "router.log").read_text().splitlines():
        if '"event": "route"' in line and req_id in line:
            return str(json.loads(line[line.index("{") :])["route"])
    raise AssertionError(f"no route line for {req_id}")


def _metric(url: str, name: str, route: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


LONG_PROMPT = "Hybrid attention keeps the KV cache small enough to cross datacenters. " * 6
SHORT_PROMPT = "Where does my prefill run?"


def test_a_long_prompt_prefills_on_prfaas_and_a_short_one_stays_local(
    deployment: tuple[str, Path, Path],
) -> None:
    url, _, logs = deployment
    before = _metric(url, "prfaas:route_decisions_total", "prfaas")
    route, info, text = _completion(url, LONG_PROMPT)
    assert route == "prfaas"
    assert info["route"] == "prfaas" and info["prefill_instance"] == "r0"
    assert _route_logged(logs, str(info["transfer_id"])) == "prfaas"
    assert info["decode_instance"] == "d0"
    assert len(text) > 0
    assert _metric(url, "prfaas:route_decisions_total", "prfaas") == before + 1
    short_route, short_info, _ = _completion(url, SHORT_PROMPT)
    assert short_route == "pd_prefill" and short_info["prefill_instance"] == "p0"


PROMPTS = {
    "prfaas": [16 + (7 * i) % 200 for i in range(300)],
    "pd_prefill": [16 + i for i in range(37)],
}


@pytest.fixture(scope="module")
def expected_text(
    deployment: tuple[str, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Per route, the text of the greedy tokens one plain vLLM process generates for its prompt
    (decoded by the router's own tokenizer)."""
    _, model, _ = deployment
    prompts = list(PROMPTS.values())
    spec = {"prompts": prompts, "num_output_tokens": NUM_OUTPUT_TOKENS, "dtype": "bfloat16"}
    work = tmp_path_factory.mktemp("reference")
    results = run_engine("reference", model, spec, work)["results"]
    codec = load_codec(ModelConfig(str(model)))
    return {route: codec.decode(r["tokens"]) for route, r in zip(PROMPTS, results, strict=True)}


def test_tokens_through_the_router_equal_one_vllm_instance(
    deployment: tuple[str, Path, Path], expected_text: dict[str, str]
) -> None:
    """Token ids in, text out: on both routes the router's text is one vLLM process's, whole
    and streamed."""
    url, _, _ = deployment
    for route, prompt in PROMPTS.items():
        got_route, _, text = _completion(url, prompt)
        assert got_route == route
        assert text == expected_text[route], route
        assert _streamed(url, prompt) == expected_text[route], route


def test_prfaas_profile_measures_a_vllm_instance_and_plan_reads_it(
    deployment: tuple[str, Path, Path], tmp_path: Path
) -> None:
    _, _, logs = deployment
    topology = load_topology(_config_of(logs))
    out = tmp_path / "vllm-profile.json"
    profile = [sys.executable, "-m", "prfaas", "profile", "--url", f"http://{topology.instance('r0').http}",
               "--lengths", "64,256,1024", "--repeats", "2", "--batch-sizes", "1,2",
               "--decode-tokens", "4", "--output", str(out), "--json"]  # fmt: skip
    done = subprocess.run(profile, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["prefill_latency_from"] == "ttft"  # vLLM reports no prefill_s
    assert [r["tokens"] for r in document["rows"]] == [64, 256, 1024]
    plan = [sys.executable, "-m", "prfaas", "plan", "--preset", "paper-case-study",
            "--prfaas-latency", f"profile:{out}", "--json"]  # fmt: skip
    planned = subprocess.run(plan, capture_output=True, text=True, timeout=600, check=False)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)
