"""Coded KV through the live services: router, PrfaaS prefill, PD prefill and PD decode as
processes with emulated engines (no torch, no sleeping) and `[transport] compression = "fp8"`.

An offloaded request's payload crosses the link at the coded size `prfaas.models` predicts for
its attention layers (recurrent and conv state exact): the router's `prfaas` field, the router's
`prfaas:kv_transfer_bytes_total` counter and the PrfaaS prefill instance's transport counter
(`prfaas:kv_transfer_bytes_total`, what the sender moved and had acknowledged) all equal it, the
decode instance checked every byte of it (the emulated import compares the sizes for the
manifest's codec and every byte's pattern), and `x-prfaas-kv-codec` says fp8. A request
prefilled inside the PD cluster moves its exact, uncoded size.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from services_harness import System, get_text, launch, metric_value

from prfaas.models import load_model_spec
from topologies import Node, TopologySpec, decode, pd, prfaas

pytestmark = pytest.mark.slow
EMULATE = "nemotron-3-nano"  # a hybrid: attention K/V and Mamba state in every payload
THRESHOLD = 64
READY_TIMEOUT_S = 300.0
TOKEN = "kv-codec-test-token"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("kv-codec")
    spec = TopologySpec(
        clusters=(prfaas(Node("prfaas-p0")), pd(Node("pd-p0"), decode("pd-d0"))),
        engine="emulated",
        emulate=EMULATE,
        time_scale=0.0,
        threshold=THRESHOLD,
        token=TOKEN,
        compression="fp8",
    )
    started = launch(spec.write(tmp), tmp / "logs", READY_TIMEOUT_S)
    try:
        yield started
    finally:
        started.launcher.stop()


def _complete(system: System, num_tokens: int) -> tuple[dict[str, str], dict[str, Any]]:
    """A completion of a prompt of `num_tokens` token ids: its headers and `prfaas` field."""
    body = {"model": system.model, "prompt": [11 + i % 200 for i in range(num_tokens)]}
    request = urllib.request.Request(
        system.url + "/v1/completions",
        json.dumps({**body, "max_tokens": 3}).encode(),
        {"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return dict(reply.headers), json.loads(reply.read())["prfaas"]


def _sent_bytes(system: System, instance: str) -> float:
    return metric_value(get_text(system.instance_url(instance) + "/metrics"), _SENT)


_SENT = "prfaas:kv_transfer_bytes_total"


def test_an_offloaded_request_moves_the_coded_size(system: System) -> None:
    num_tokens = 3 * THRESHOLD
    predicted = load_model_spec(EMULATE).kv_bytes(num_tokens, kv_codec="fp8")
    assert predicted < load_model_spec(EMULATE).kv_bytes(num_tokens)
    sent_before = _sent_bytes(system, "prfaas-p0")
    router_before = metric_value(
        get_text(system.url + "/metrics"), "prfaas:kv_transfer_bytes_total"
    )
    headers, info = _complete(system, num_tokens)
    assert info["route"] == "prfaas", info
    assert headers["x-prfaas-kv-codec"] == "fp8" == info["kv_codec"]
    assert info["kv_codec_reason"] == "configured: [transport] compression = fp8"
    assert info["kv_bytes"] == predicted
    assert _sent_bytes(system, "prfaas-p0") - sent_before == predicted
    router_after = metric_value(get_text(system.url + "/metrics"), "prfaas:kv_transfer_bytes_total")
    assert router_after - router_before == predicted


def test_a_request_prefilled_in_the_pd_cluster_moves_its_exact_size(system: System) -> None:
    num_tokens = THRESHOLD // 2
    headers, info = _complete(system, num_tokens)
    assert info["route"] == "pd_prefill", info
    assert headers["x-prfaas-kv-codec"] == "none" == info["kv_codec"]
    assert info["kv_bytes"] == load_model_spec(EMULATE).kv_bytes(num_tokens)
