"""The two-datacenter testbed on vLLM (needs root and network namespaces): `prfaas testbed up
--engine vllm` starts a PrfaaS prefill, a PD prefill and a PD decode `vllm serve` with the PrfaaS
connector inside the PrfaaS and PD namespaces. A long prompt sent from the client namespace is
prefilled in the PrfaaS namespace and its KV crosses the tbf-shaped WAN veth: the qdisc's byte
counter grows by at least what `prfaas kv` predicts for that model and length. A short prompt
stays in the PD namespace and the WAN carries no KV for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_router_vllm import PROMPTS, START_TIMEOUT_S, VLLM_ARGS, _checkpoint

from prfaas.models import load_model_spec
from prfaas.testbed.netns import netns_unavailable_reason, qdisc_stats

_REASON = netns_unavailable_reason()
if _REASON is not None:
    pytest.skip(f"the testbed needs network namespaces: {_REASON}", allow_module_level=True)

NAME = f"tbv-{uuid.uuid4().hex[:6]}"
THRESHOLD_TOKENS = 64
REQUEST = """
import json, sys, urllib.request
url, prompt = sys.argv[1], json.loads(sys.argv[2])
with urllib.request.urlopen(url + "/v1/models", timeout=60) as reply:
    model = json.loads(reply.read())["data"][0]["id"]
body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 4}).encode()
headers = {"Content-Type": "application/json"}
request = urllib.request.Request(url + "/v1/completions", body, headers)
with urllib.request.urlopen(request, timeout=600) as reply:
    print(json.dumps({"route": reply.headers.get("x-prfaas-route"),
                      "prfaas": json.loads(reply.read())["prfaas"]}))
"""


def _testbed(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prfaas", "testbed", *args, "--name", NAME]
    cmd += ["--state-dir", str(state_dir)]
    env = {**os.environ, "PRFAAS_VLLM_ARGS": VLLM_ARGS}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S + 120, env=env, check=False
    )


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("testbed-vllm")
    model = _checkpoint(work)
    state_dir = work / "state"
    up = ["up", "--engine", "vllm", "--model", str(model), "--threshold", str(THRESHOLD_TOKENS)]
    up += ["--ready-timeout", str(START_TIMEOUT_S), "--json"]
    done = _testbed(state_dir, *up)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        state = json.loads(done.stdout)
        state["model"] = model
        yield state
    finally:
        _testbed(state_dir, "down")


def _send(state: dict[str, Any], prompt: list[int]) -> dict[str, Any]:
    """One completion of token ids, sent from inside the client namespace."""
    cmd = [*state["client_exec"], sys.executable, "-c", REQUEST, state["router_url"]]
    cmd += [json.dumps(prompt)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def _wan_bytes(state: dict[str, Any]) -> int:
    return qdisc_stats(state["wan"]["ns"], state["wan"]["dev"]).bytes_sent


def test_a_long_prompts_kv_crosses_the_shaped_wan_and_a_short_one_stays(
    testbed: dict[str, Any],
) -> None:
    predicted = load_model_spec(testbed["model"] / "config.json").kv_bytes(len(PROMPTS["prfaas"]))
    before = _wan_bytes(testbed)
    long = _send(testbed, PROMPTS["prfaas"])
    grew = _wan_bytes(testbed) - before
    assert long["route"] == "prfaas", long
    assert grew >= predicted, (grew, predicted)  # the KV went through the tbf qdisc
    print(f"long request: predicted {predicted:,} KV bytes, WAN qdisc +{grew:,} B")
    before = _wan_bytes(testbed)
    short = _send(testbed, PROMPTS["pd_prefill"])
    assert short["route"] == "pd_prefill", short
    assert _wan_bytes(testbed) - before < predicted  # polls and acks only, no KV
