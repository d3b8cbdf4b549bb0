"""The router's side of stock vLLM instances, without a vLLM: the load read from vLLM's
Prometheus exposition, the completion bodies it sends, the prefill answer and stream events it
reads, and the topology rules for `engine = "vllm"` instances. (The same driver against real
`vllm serve` processes: tests/vllm.)"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, SamplingParams, TokenDelta
from prfaas.policy.controller import ControllerConfig
from prfaas.prefix_cache.config import PrefixCacheConfig
from prfaas.router.vllm_driver import (
    VllmAnswerError,
    completion_body,
    prefill_answer,
    stream_delta,
)
from prfaas.router.vllm_metrics import stats_from_metrics
from prfaas.topology import parse_topology, topology_to_toml
from topologies import TopologySpec

# As vLLM 0.32's /metrics writes them: one sample per engine, labelled
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen3_next"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen3_next"} 5.0
vllm:num_requests_waiting{engine="1",model_name="qwen3_next"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen3_next"} 0.25
"""


def _vllm_spec(**options: object) -> TopologySpec:
    return TopologySpec(engine="vllm", **options)  # type: ignore[arg-type]


def test_the_load_comes_from_vllms_gauges_summed_over_engines() -> None:
    instance = _vllm_spec().topology().instance("d0")
    stats = stats_from_metrics(instance, VLLM_METRICS)
    assert (stats.num_requests_waiting, stats.num_requests_running) == (7, 3)
    assert (stats.instance_id, stats.role) == ("d0", "decode")


def test_an_exposition_without_vllms_gauges_is_no_answer() -> None:
    instance = _vllm_spec().topology().instance("d0")
    with pytest.raises(ValueError, match="vllm:num_requests_waiting"):
        stats_from_metrics(instance, "# TYPE other gauge\nother 1.0\n")


def test_completion_bodies_carry_the_sampling_and_token_ids_both_ways() -> None:
    sampling = SamplingParams(max_tokens=9, temperature=0.5, top_k=4, seed=7, stop=("\n",))
    request = GenerateRequest("r1", (5, 6, 7), sampling)
    params = {"do_remote_prefill": True, "transfer_id": "t"}
    body = completion_body(request, "m", [5, 6, 7, 8], 8, stream=True, kv_transfer_params=params)
    assert body["prompt"] == [5, 6, 7, 8] and body["max_tokens"] == 8
    assert body["return_token_ids"] is True and body["stream"] is True
    assert (body["temperature"], body["top_k"], body["seed"], body["stop"]) == (0.5, 4, 7, ["\n"])
    assert body["kv_transfer_params"] == params
    greedy = completion_body(GenerateRequest("r2", (1,)), "m", [1], 16, stream=False)
    assert "top_k" not in greedy and "seed" not in greedy and "kv_transfer_params" not in greedy


def test_a_prefill_answer_gives_the_first_token_and_the_consumer_params() -> None:
    params = {"do_remote_prefill": True, "transfer_id": "t", "num_prompt_tokens": 3}
    reply = {
        "choices": [{"token_ids": [42], "finish_reason": "length"}],
        "kv_transfer_params": params,
    }
    assert prefill_answer(reply) == (42, "length", params)
    for bad in (
        {"choices": [{"token_ids": [42]}]},  # no kv_transfer_params: the connector did not run
        {"choices": [{"token_ids": [1, 2]}], "kv_transfer_params": params},
        {"choices": [], "kv_transfer_params": params},
    ):
        with pytest.raises(VllmAnswerError):
            prefill_answer(bad)


def test_stream_events_become_token_deltas() -> None:
    def event(token_ids: list[int], reason: str | None) -> dict[str, object]:
        return {"choices": [{"token_ids": token_ids, "finish_reason": reason}]}

    assert stream_delta("r", event([3, 4], None)) == TokenDelta("r", (3, 4))
    assert stream_delta("r", event([5], "length")) == TokenDelta("r", (5,), "length")
    assert stream_delta("r", event([], "stop")) == TokenDelta("r", (), "stop")
    aborted = stream_delta("r", event([], "abort"))
    assert (
        aborted is not None and aborted.finish_reason == "error" and "abort" in str(aborted.error)
    )
    assert stream_delta("r", event([], None)) is None
    assert stream_delta("r", {"choices": [], "usage": {"completion_tokens": 3}}) is None


def test_a_vllm_topology_loads() -> None:
    topology = _vllm_spec().topology()
    assert {i.engine for i in topology.instances} == {"vllm"}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"controller": ControllerConfig()}, "controller does not drive"),
        ({"prefix_cache": PrefixCacheConfig(4, 1 << 20)}, "own prefix cache"),
    ],
)
def test_what_vllm_instances_do_not_support_is_refused(
    options: dict[str, object], reason: str
) -> None:
    with pytest.raises(UserError, match=reason):
        _vllm_spec(**options).topology()


def test_vllm_and_other_engines_do_not_mix() -> None:
    topology = _vllm_spec().in_code()
    torch_cluster = dataclasses.replace(
        topology.clusters[0],
        instances=tuple(
            dataclasses.replace(i, engine="torch") for i in topology.clusters[0].instances
        ),
    )
    mixed = dataclasses.replace(topology, clusters=(torch_cluster, *topology.clusters[1:]))
    data = tomllib.loads(topology_to_toml(mixed))
    with pytest.raises(UserError, match="every instance of the topology on vLLM"):
        parse_topology(data, Path("."), source="mixed")
