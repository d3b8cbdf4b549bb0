"""End-to-end runs of small deployments: a hand-timed request, conservation, determinism, routing
by the real policy, prefix hits, a bandwidth drop and the decision log."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from sim_factories import make_config, requests_at

from prfaas.policy.route import make_route_policy
from prfaas.policy.throughput import StageCosts
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.link import BandwidthStep
from prfaas.sim.simulator import Simulator, simulate
from prfaas.sim.timeline import timeline_events
from prfaas.sim.traffic import synthetic_requests
from prfaas.types import DeploymentKind
from prfaas.workload import TruncatedLogNormal

SMALL_LENGTHS = TruncatedLogNormal(mu=6.5, sigma=0.8, min_tokens=16, max_tokens=4000)


def test_one_offloaded_request_timed_by_hand() -> None:
    """T(1000) = 1 + 0.001*1000 = 2 s. KV = 1000 + 10*1000 = 11000 B, 1/10 held back. The flow
    sends 9900 B at the production rate 4950 B/s during prefill, then 1100 B at 1e4 B/s: KV lands
    at 2.11 s, the idle decode instance imports it and streams the first token then (TTFT 2.11 s,
    the prefill alone 2 s); 10 decode steps of 0.1 s: the second token at 2.21 s, the last at
    3.11 s."""
    sim = Simulator(make_config(DeploymentKind.NAIVE), requests_at([0.0], 1000, 11))
    result = sim.run()
    log = sim.log
    assert log.prefill_done_at[0] == pytest.approx(2.0)
    assert log.kv_ready_at[0] == pytest.approx(2.11)
    assert log.first_token_at[0] == pytest.approx(2.11)
    assert log.second_token_at[0] == pytest.approx(2.21)
    assert log.finished_at[0] == pytest.approx(3.11)
    assert result["ttft_s"]["p50"] == pytest.approx(2.11)
    assert result["prefill_done_s"]["p50"] == pytest.approx(2.0)
    assert result["second_token_s"]["p50"] == pytest.approx(2.21)
    assert result["transfer_s"]["p50"] == pytest.approx(0.11)
    assert result["tpot_s"]["p50"] == pytest.approx(0.1)
    assert result["offload_ratio"] == 1.0
    assert sim.link.total_sent_bytes == pytest.approx(11000.0)
    assert result["utilization"]["prfaas_prefill"] == pytest.approx(2.0 / 3.11, abs=1e-6)
    assert result["utilization"]["pd_decode"] == pytest.approx(1.0 / (4 * 3.11), abs=1e-6)
    assert result["route_reasons"] == {"naive -> prfaas": 1}


def test_bandwidth_drop_delays_the_tail_of_the_transfer() -> None:
    """Same request, link drops to 100 B/s at 2.05 s: 500 B of the 1100 B tail went at 1e4 B/s,
    the other 600 B take 6 s more."""
    steps = (BandwidthStep(0.0, 1e4 * 8 / 1e9), BandwidthStep(2.05, 100 * 8 / 1e9))
    sim = Simulator(
        make_config(DeploymentKind.NAIVE, bandwidth=steps), requests_at([0.0], 1000, 11)
    )
    sim.run()
    assert sim.log.kv_ready_at[0] == pytest.approx(2.05 + 600 / 100)


def test_routing_comes_from_the_policy() -> None:
    requests = [SimRequest(float(i), 500 if i % 2 else 1500, 4) for i in range(40)]
    ratios = {
        kind: simulate(make_config(kind, threshold_tokens=1000), requests)["offload_ratio"]
        for kind in DeploymentKind
    }
    assert ratios == {
        DeploymentKind.PRFAAS: 0.5,
        DeploymentKind.HOMOGENEOUS: 0.0,
        DeploymentKind.NAIVE: 1.0,
    }


def _workload(seed: int, rate: float = 0.5, n: int = 300) -> list[SimRequest]:
    return synthetic_requests(SMALL_LENGTHS, 20, rate, seed=seed, num_requests=n)


@pytest.mark.parametrize("kind", list(DeploymentKind))
def test_conservation_every_arrival_completes_or_is_unfinished(kind: DeploymentKind) -> None:
    overloaded = simulate(make_config(kind, drain_s=0.0), _workload(1, rate=3.0))
    assert overloaded["num_arrived"] == 300
    assert overloaded["num_unfinished"] > 0
    assert overloaded["num_completed"] + overloaded["num_unfinished"] == 300
    drained = simulate(make_config(kind, drain_s=1e5), _workload(1, rate=3.0))
    assert drained["num_completed"] == 300
    assert drained["num_unfinished"] == 0


def test_same_config_and_seed_give_byte_identical_json() -> None:
    def run(seed: int) -> str:
        config = make_config(DeploymentKind.PRFAAS, num_pd_p=2, chunk_tokens=512)
        return json.dumps(simulate(config, _workload(seed)), sort_keys=True)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_prefix_hits_shorten_prefill_and_are_reported() -> None:
    """Two identical 4-block prompts: the second hits 3 blocks (one token is always computed)."""
    blocks = (11, 12, 13, 14)
    requests = [SimRequest(0.0, 2048, 2, blocks), SimRequest(100.0, 2048, 2, blocks)]
    config = make_config(DeploymentKind.HOMOGENEOUS, block_tokens=512)
    sim = Simulator(config, requests)
    result = sim.run()
    assert sim.log.num_cached_tokens == [0, 2047]
    assert sim.log.first_token_at[1] - sim.log.arrived_at[1] == pytest.approx(1.0 + 0.001)
    assert result["prefix_hit_ratio"] == pytest.approx(2047 / 4096)


def test_utilization_and_egress_are_consistent() -> None:
    result = simulate(make_config(DeploymentKind.NAIVE, egress_bin_s=10.0), _workload(3))
    series = result["egress"]["series"]
    assert len(series) == pytest.approx(result["sim_end_s"] / 10, abs=1)
    assert all(0.0 <= b["utilization"] <= 1.0 + 1e-9 for b in series)
    assert 0.0 < result["utilization"]["prfaas_prefill"] <= 1.0
    assert result["utilization"]["pd_prefill"] is None


def test_timeline_has_one_span_per_stage_reached() -> None:
    sim = Simulator(make_config(DeploymentKind.NAIVE), requests_at([0.0], 1000, 11))
    sim.run()
    spans = timeline_events(sim.log, "naive")
    assert [(e["name"], e["tid"], e["ts"], e["dur"]) for e in spans] == [
        ("prefill", "naive prfaas-0", 0, 2_000_000),
        ("transfer", "naive link", 2_000_000, 110_000),
        ("decode", "naive pd-d-0", 2_110_000, 1_000_000),
    ]


def _with_delay_rule(config: SimConfig) -> SimConfig:
    """The PrfaaS route config with the offload-delay rule on (the factory's curves, S_kv)."""
    dep = config.deployment
    latency, kv = dep.prfaas.latency, config.kv_size
    costs = StageCosts(
        t_prefill_prfaas_s=lambda n: latency.t_prefill_s(round(n)),
        t_prefill_pd_s=lambda n: dep.pd_prefill.latency.t_prefill_s(round(n)),
        kv_bytes=lambda n: float(kv.kv_bytes(round(n))),
        egress_bytes_per_s=config.bandwidth[0].gbps * 1e9 / 8,
        max_batch_size=dep.max_batch_size,
        t_decode_step_s=0.1,
        num_output_tokens=20,
    )
    assert dep.route_config is not None
    route = replace(dep.route_config, costs=costs, local_delay_ratio=1.0)
    return replace(config, deployment=replace(dep, route_config=route))


def test_decision_log_replays_through_the_policy() -> None:
    """Parity hook: every recorded decision comes back unchanged when its recorded inputs are fed
    to the policy again, and the log agrees with the summary's reason counts."""
    config = _with_delay_rule(
        make_config(threshold_tokens=300, link_bytes_per_s=3e3, record_decisions=True)
    )
    requests = _workload(seed=3, rate=0.6, n=200)
    sim = Simulator(config, requests)
    result = sim.run()
    log = sim.decision_log
    assert [r.req_index for r in log] == list(range(len(requests)))
    policy = make_route_policy(config.deployment.kind, config.deployment.route_config)
    for r in log:
        again = policy.choose(
            r.num_prompt_tokens,
            r.num_cached_tokens_pd,
            r.num_cached_tokens_prfaas,
            r.link,
            r.prfaas,
            r.pd,
        )
        assert again == r.decision
    rules = Counter(f"{r.decision.reason.split(':')[0]} -> {r.decision.target}" for r in log)
    assert dict(rules) == result["route_reasons"]
    assert rules["link-backlog -> pd_prefill"] > 0  # the slow link made the rule fire
    assert any(r.link.backlog_bytes > 0 for r in log)
    assert any(r.pd.prefill_wait_s() > 0 for r in log)
    plain = Simulator(make_config(), requests)
    plain.run()
    assert not plain.decision_log  # off by default
