"""The model's units of a scaled deployment (`ModelConfig.model_bytes_per_s`) as the planner and
the simulator see them, the homogeneous topology without a PrfaaS cluster, and the simulated
side of `prfaas bench system`'s report (`compare` with a changed link, `sim_meets_slo`)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from prfaas.bench.loadgen import RequestResult, RunOutcome
from prfaas.bench.report import GBIT, compare, sim_meets_slo
from prfaas.errors import UserError
from prfaas.sim.link import BandwidthStep
from prfaas.topology import ModelConfig, PrefixCacheConfig, Topology
from prfaas.topology.derived import planner_inputs
from prfaas.topology.sim_config import sim_config_of
from topologies import Node, TopologySpec, decode, pd, prfaas, two_providers


def _topology(
    deployment: str = "prfaas",
    num_prfaas: int = 1,
    num_pd_prefill: int = 1,
    time_scale: float = 0.5,
    payload_scale: float = 0.01,
) -> Topology:
    """Emulated paper-1t: `num_prfaas` H200 PrfaaS prefill instances (0: no PrfaaS cluster),
    `num_pd_prefill` H20 PD prefill instances and one H20 decode instance, a 2 Gbps wire."""
    remote = tuple(Node(f"r{i}") for i in range(num_prfaas))
    local = pd(*(Node(f"p{i}") for i in range(num_pd_prefill)), decode("d0"))
    spec = TopologySpec(
        clusters=(prfaas(*remote), local) if remote else (local,),
        engine="emulated",
        time_scale=time_scale,
        payload_scale=payload_scale,
        link_gbps=2,
        deployment=deployment,
        threshold=1000,
        token="model-units-unit-test-token",
        port_base=18000,
    )
    return spec.topology()


def _outcome(prompt_lengths: list[int], gap_s: float = 0.2) -> RunOutcome:
    """A finished run whose requests were sent every `gap_s` seconds (8 output tokens each)."""
    results = [
        RequestResult(i, i * gap_s, n, 8, sent_at_s=i * gap_s) for i, n in enumerate(prompt_lengths)
    ]
    return RunOutcome(results)


MIXED = [200, 4000, 8000, 16000, 500, 30000] * 3  # short ones stay local, long ones offload


# ---- model_bytes_per_s ------------------------------------------------------------------------


def test_model_rate_is_the_wire_rate_times_time_over_payload_scale() -> None:
    model = ModelConfig("qwen3_next", time_scale=0.5, payload_scale=0.01)
    assert model.model_bytes_per_s(1e9) == pytest.approx(50e9)
    assert ModelConfig("qwen3_next").model_bytes_per_s(1e9) == 1e9


def test_without_modelled_time_the_wire_rate_is_unchanged() -> None:
    model = ModelConfig("qwen3_next", time_scale=0.0, payload_scale=0.01)
    assert model.model_bytes_per_s(1e9) == 1e9


def test_planner_and_simulator_see_the_link_in_model_units() -> None:
    """A 2 Gbps wire at time_scale 0.5 and payload_scale 0.01 is the paper's 100 Gbps link."""
    topology = _topology()
    inputs, _ = planner_inputs(topology)
    assert inputs.link_bytes_per_s == pytest.approx(100 * GBIT)
    (step,) = sim_config_of(topology).bandwidth
    assert step.at == 0.0 and step.gbps == pytest.approx(100.0)


# ---- the homogeneous topology without a PrfaaS cluster ------------------------------------------


def test_homogeneous_without_prfaas_cluster_plans_and_simulates() -> None:
    topology = _topology("homogeneous", num_prfaas=0, num_pd_prefill=2)
    _, num_pd_prefill = planner_inputs(topology)
    assert num_pd_prefill == 2
    deployment = sim_config_of(topology).deployment
    assert deployment.prfaas.num_instances == 0
    assert deployment.pd_prefill.num_instances == 2
    assert deployment.num_decode_instances == 1


@pytest.mark.parametrize("deployment", ["prfaas", "naive"])
def test_offloading_deployments_still_need_a_prfaas_cluster(deployment: str) -> None:
    with pytest.raises(UserError, match="needs a cluster of kind 'prfaas'"):
        _topology(deployment, num_prfaas=0, num_pd_prefill=2)
    homogeneous = _topology("homogeneous", num_prfaas=0, num_pd_prefill=2)
    topology = replace(homogeneous, policy=replace(homogeneous.policy, deployment=deployment))
    with pytest.raises(UserError, match="kind 'prfaas'"):
        planner_inputs(topology)
    with pytest.raises(UserError, match="kind 'prfaas'"):
        sim_config_of(topology)


def test_homogeneous_compare_has_a_finite_rate_and_no_offload() -> None:
    topology = _topology("homogeneous", num_prfaas=0, num_pd_prefill=2)
    sim, plan = compare(topology, _outcome(MIXED))
    assert "unavailable" not in plan, plan
    assert math.isfinite(plan["lambda_max_rps"]) and plan["lambda_max_rps"] > 0
    assert plan["offload_ratio"] == 0 and plan["threshold_tokens"] is None
    assert "unavailable" not in sim, sim
    assert sim["num_completed"] == sim["num_requests"] == len(MIXED)
    assert sim["offload_ratio"] == 0 and sim["egress_bytes"] == 0


# ---- the simulated side of the report -----------------------------------------------------------


def test_a_slower_link_in_the_simulation_holds_back_the_offloaded_requests() -> None:
    """Over a crawling link no offloaded KV lands by the topology's transfer deadline: the decode
    instance recomputes those requests (failure policy "recompute"), or they end with an error
    ("fail"), counted as live counts its errors."""
    topology, outcome = _topology(), _outcome(MIXED)
    sim, _ = compare(topology, outcome)
    assert sim["num_completed"] == len(MIXED) and sim["offload_ratio"] > 0
    assert sim["num_recomputed"] == sim["num_errors"] == 0
    crawl = [BandwidthStep(0.0, 1e-4)]  # Gbps in model units: the KV would take hours
    slow, _ = compare(topology, outcome, crawl)
    num_offloaded = round(slow["offload_ratio"] * len(MIXED))
    assert num_offloaded > 0
    assert slow["num_completed"] == len(MIXED)
    assert (slow["num_recomputed"], slow["num_errors"]) == (num_offloaded, 0)
    assert slow["ttft_s"]["max"] > sim["ttft_s"]["max"]
    assert slow["egress_bytes"] < sim["egress_bytes"]
    failing = replace(topology, policy=replace(topology.policy, failure="fail"))
    failed, _ = compare(failing, outcome, crawl)
    assert (failed["num_recomputed"], failed["num_errors"]) == (0, num_offloaded)
    assert failed["num_completed"] == len(MIXED) - num_offloaded


def test_compare_is_unavailable_without_modelled_time() -> None:
    sim, plan = compare(_topology(time_scale=0.0), _outcome(MIXED))
    assert "time_scale" in sim["unavailable"] and "time_scale" in plan["unavailable"]


def _sim(num_requests: int, num_completed: int, p90_s: float | None) -> dict[str, object]:
    return {"num_requests": num_requests, "num_completed": num_completed, "ttft_s": {"p90": p90_s}}


@pytest.mark.parametrize(
    ("sim", "expected"),
    [
        (_sim(10, 10, 1.0), True),
        (_sim(10, 10, 2.0), True),  # at the SLO
        (_sim(10, 10, 2.5), False),
        (_sim(10, 9, 1.0), False),  # a request never completed
        (_sim(10, 0, None), False),
        ({"unavailable": "no request was sent"}, None),
    ],
)
def test_sim_meets_slo(sim: dict[str, object], expected: bool | None) -> None:
    assert sim_meets_slo(sim, 2.0) is expected


def test_with_a_prefix_cache_the_replay_reuses_what_the_prompts_share() -> None:
    """A second turn of a conversation, sent once the first has been served: with the sent
    prompts (their block hashes) and a `[prefix_cache]`, the simulated PD prefill reuses the first
    turn and the second TTFT drops; without one, or without the prompts, it does not."""
    first = tuple(range(10, 10 + 650))
    prompts = [first, (*first, *range(300, 550))]
    outcome = RunOutcome(
        [RequestResult(i, 30.0 * i, len(p), 8, sent_at_s=30.0 * i) for i, p in enumerate(prompts)]
    )
    cached = replace(_topology(), prefix_cache=PrefixCacheConfig(64, 8 << 30))
    ttft = {
        name: compare(topology, outcome, prompts=given)[0]["ttft_s"]["mean"]
        for name, topology, given in (
            ("reused", cached, prompts),
            ("no prompts", cached, ()),
            ("no cache", _topology(), prompts),
        )
    }
    assert ttft["reused"] < ttft["no prompts"] == ttft["no cache"]


def test_several_providers_replay_without_prefix_hashes() -> None:
    """Their simulation does not model prefix caching: the replay leaves the hashes out rather
    than being refused."""
    topology = TopologySpec(
        two_providers(),
        engine="emulated",
        time_scale=0.5,
        ttft_target_s=5.0,
        prefix_cache=PrefixCacheConfig(64, 8 << 30),
    ).topology()
    prompts = [tuple(range(10, 660)), tuple(range(10, 900))]
    outcome = RunOutcome(
        [RequestResult(i, 30.0 * i, len(p), 8, sent_at_s=30.0 * i) for i, p in enumerate(prompts)]
    )
    sim, _ = compare(topology, outcome, prompts=prompts)
    assert "unavailable" not in sim, sim
    assert sim["num_completed"] == 2
