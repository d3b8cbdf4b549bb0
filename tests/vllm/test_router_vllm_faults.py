"""A vLLM instance lost under load, behind the PrfaaS router: the deployment of
test_router_vllm.py started by the launcher `prfaas up` runs (without `up`'s supervision, which
stops everything when a child dies). The PrfaaS prefill instance (its API server and every vLLM
process under it) is killed as a long request goes out: under `failure = "recompute"` that
request is still answered with one vLLM instance's greedy text, and the next ones too, routed to
the PD cluster once the router has marked the instance down; under `failure = "fail"` the
request ends in a clear error and the next ones are still served.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from harness import run_engine
from test_router_vllm import (
    NUM_OUTPUT_TOKENS,
    PROMPTS,
    START_TIMEOUT_S,
    VLLM_ARGS,
    _checkpoint,
    _completion,
    _topology,
)

from prfaas.launch.local import Launcher, descendant_pids
from prfaas.service.text import load_codec
from prfaas.topology import ModelConfig, load_topology


def _kill_instance(launcher: Launcher, name: str) -> None:
    """SIGKILL an instance's process and everything it started (a vLLM server's engine core
    and workers outlive a killed API server)."""
    pid = launcher.procs[name].pid
    for child in [*descendant_pids(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    launcher.procs[name].wait()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("faults-model"))


@pytest.fixture(scope="module")
def expected_text(model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The text of one plain vLLM process's greedy tokens for the long prompt."""
    spec = {"prompts": [PROMPTS["prfaas"]], "num_output_tokens": NUM_OUTPUT_TOKENS}
    spec["dtype"] = "bfloat16"
    result = run_engine("reference", model, spec, tmp_path_factory.mktemp("ref"))["results"][0]
    return load_codec(ModelConfig(str(model))).decode(result["tokens"])


@contextlib.contextmanager
def _launched(model: Path, work: Path, failure: str) -> Iterator[tuple[str, Launcher]]:
    config, url = _topology(work, model, failure=failure)
    logs = work / "logs"
    logs.mkdir()
    launcher = Launcher(config, load_topology(config), logs)
    with launcher:
        launcher.wait_ready(START_TIMEOUT_S)
        yield url, launcher


@pytest.fixture
def vllm_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRFAAS_VLLM_ARGS", VLLM_ARGS)


@pytest.mark.usefixtures("vllm_args")
def test_a_killed_prfaas_instance_is_recomputed_and_later_requests_are_served(
    model: Path, expected_text: str, tmp_path: Path
) -> None:
    with _launched(model, tmp_path, "recompute") as (url, launcher):
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_completion, url, PROMPTS["prfaas"])
            _kill_instance(launcher, "r0")
            _, info, text = pending.result(timeout=600)
        assert text == expected_text, info
        routes: list[str] = []
        deadline = time.monotonic() + 120  # the router's poller marks r0 down after its misses
        while not routes or routes[-1] != "pd_prefill":
            assert time.monotonic() < deadline, routes
            route, info, text = _completion(url, PROMPTS["prfaas"])
            assert text == expected_text, (route, info)  # recomputed, or prefilled on PD
            routes.append(route)
        assert str(info["reason"]).startswith("prfaas-unavailable"), info


@pytest.mark.usefixtures("vllm_args")
def test_under_fail_a_lost_prefill_is_a_clear_error_and_the_next_requests_are_served(
    model: Path, expected_text: str, tmp_path: Path
) -> None:
    with _launched(model, tmp_path, "fail") as (url, launcher):
        _kill_instance(launcher, "r0")
        try:  # the router may already have seen r0 go: then the PD cluster serves it
            _, _, text = _completion(url, PROMPTS["prfaas"])
            assert text == expected_text
        except openai.APIStatusError as exc:
            assert "prefill instance r0 failed" in str(exc)
        deadline = time.monotonic() + 120
        while True:
            try:
                route, _, text = _completion(url, PROMPTS["prfaas"])
                break
            except openai.APIStatusError as exc:
                assert "prefill instance r0 failed" in str(exc)
                assert time.monotonic() < deadline, "r0 was never marked down"
        assert route == "pd_prefill" and text == expected_text
