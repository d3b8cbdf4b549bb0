"""Several prefill providers in the simulator: routing by cost under a TTFT target (hand-worked),
one link per provider, per-provider costs, refusals, and the one-cluster path reproduced by a
provider run whose second provider is never chosen."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_factories import LinearKV, make_config, requests_at

from prfaas.errors import UserError
from prfaas.perf.latency import QuadraticLatency
from prfaas.policy.controller import ControllerConfig
from prfaas.policy.providers import LOCAL, choose_provider
from prfaas.policy.route import RoutePolicyConfig
from prfaas.policy.throughput import StageCosts
from prfaas.policy.transfer import LinkPath
from prfaas.sim.config import (
    DeploymentSpec,
    PrefillClusterSpec,
    ProviderSpec,
    SimConfig,
    SimRequest,
)
from prfaas.sim.cost import FixedDecodeStep
from prfaas.sim.link import BandwidthStep
from prfaas.sim.simulator import Simulator
from prfaas.types import DeploymentKind

LATENCY = QuadraticLatency(1.0, 0.001, 0.0)  # T(1000) = 2 s
NO_PRFAAS = PrefillClusterSpec(0, LATENCY, "-")
BIG_KV = LinearKV(fixed_bytes=1_000_000, bytes_per_token=1_000_000)  # 1.001e9 B at 1000 tokens


def _gbps(bytes_per_s: float) -> tuple[BandwidthStep, ...]:
    return (BandwidthStep(0.0, bytes_per_s * 8 / 1e9),)


def _provider(name: str, bytes_per_s: float, **fields: object) -> ProviderSpec:
    cluster = PrefillClusterSpec(1, LATENCY, f"{name}-hw")
    return ProviderSpec(name, cluster, _gbps(bytes_per_s), **fields)  # type: ignore[arg-type]


def _deployment(*providers: ProviderSpec, **fields: object) -> DeploymentSpec:
    return DeploymentSpec(
        kind=DeploymentKind.PRFAAS,
        prfaas=NO_PRFAAS,
        pd_prefill=PrefillClusterSpec(1, LATENCY, "pd-hw"),
        num_decode_instances=1,
        max_batch_size=8,
        decode_step=FixedDecodeStep(0.1),
        route_config=RoutePolicyConfig(500),
        providers=providers,
        **fields,  # type: ignore[arg-type]
    )


def _two_providers(target_s: float, **knobs: object) -> SimConfig:
    """ "cheap": 2 GPUs at $1/GPU-h plus $0.001/GB; "fast": 1 GPU at $4/GPU-h, unmetered; local
    PD-P: 1 GPU at $2/GPU-h. Every prefill of 1000 tokens takes 2 s; links of 1e11 B/s drain a
    request's 1.001e9 B in 0.01 s, under its prefill."""
    cheap = _provider("cheap", 1e11, price_per_gpu_hour=1.0, gpus_per_instance=2, price_per_gb=1e-3)
    fast = _provider("fast", 1e11, price_per_gpu_hour=4.0)
    deployment = _deployment(fast, cheap, pd_price_per_gpu_hour=2.0)
    return SimConfig(deployment, BIG_KV, 10, ttft_target_s=target_s, **knobs)  # type: ignore[arg-type]


def test_cheap_until_its_queue_breaks_the_target_then_fast_then_local() -> None:
    """Five requests of 1000 tokens at t=0, target 5 s. A request costs 2 s x 2 x $1/3600 +
    1.001 GB x $0.001 = $0.002112 on cheap, 2 s x $4/3600 = $0.002222 on fast. Predicted TTFTs
    (queue + 2 s): cheap 2, 4, then 6 > 5, so requests 2 and 3 go to fast (2, 4) and request 4,
    with both at 6 s, prefills locally."""
    sim = Simulator(_two_providers(5.0, record_decisions=True), requests_at([0.0] * 5, 1000, 2))
    result = sim.run()
    assert sim.provider_of == ["cheap", "cheap", "fast", "fast", ""]
    ttft = [sim.log.prefill_done_at[i] - sim.log.arrived_at[i] for i in range(5)]
    assert ttft == pytest.approx([2.0, 4.0, 2.0, 4.0, 2.0])
    assert result["route_reasons"] == {
        "cheapest -> cheap": 2,
        "cheapest -> fast": 2,
        "local -> pd_prefill": 1,
    }
    third = sim.provider_routes[2].choice
    assert third is not None
    assert [q.name for q in third.quotes] == ["cheap", "fast", "local"]
    assert [q.ttft_s for q in third.quotes[:2]] == pytest.approx([6.0, 2.0])
    reason = sim.provider_routes[2].decision.reason
    assert reason.startswith("cheapest: provider fast $0.0022 (ttft 2 s <= 5 s) vs cheap")
    assert reason.endswith("; global-prefix: l=1000 > t=500")  # the rule's, as the router keeps it
    rows = result["providers"]
    assert [rows[n]["num_requests"] for n in ("cheap", "fast", "local")] == [2, 2, 1]
    assert rows["cheap"]["share"] == pytest.approx(0.4)
    assert rows["cheap"]["offload_share"] == rows["fast"]["offload_share"] == 0.5
    assert "offload_share" not in rows["local"]
    # a row's TTFT is the client's first token: after the prefill, the transfer's tail and the
    # decode instance's admission at its next step boundary
    first = [sim.log.first_token_at[i] - sim.log.arrived_at[i] for i in range(5)]
    assert all(f > t for f, t in zip(first[:4], ttft[:4], strict=True))  # offloaded
    assert rows["fast"]["ttft_s"]["p50"] == pytest.approx((first[2] + first[3]) / 2)
    assert result["ttft_target_met_share"] == 1.0
    assert result["offload_ratio"] == pytest.approx(0.8)


def test_costs_per_provider_by_hand() -> None:
    """Same run: cheap ran 4 s of prefill on 2 GPUs at $1/GPU-h and carried 2 x 1.001e9 B at
    $0.001/GB; fast ran 4 s on 1 GPU at $4/GPU-h; local 2 s on 1 GPU at $2/GPU-h."""
    result = Simulator(_two_providers(5.0), requests_at([0.0] * 5, 1000, 2)).run()
    rows = result["providers"]
    assert rows["cheap"]["compute_usd"] == pytest.approx(4 * 2 * 1.0 / 3600, abs=1e-6)
    assert rows["cheap"]["transfer_usd"] == pytest.approx(2 * 1.001 * 1e-3, abs=1e-6)
    assert rows["fast"]["compute_usd"] == pytest.approx(4 * 1 * 4.0 / 3600, abs=1e-6)
    assert rows["fast"]["transfer_usd"] == 0.0
    assert rows["local"]["compute_usd"] == pytest.approx(2 * 1 * 2.0 / 3600, abs=1e-6)
    expected = (8 + 16 + 4) / 3600 + 2.002e-3
    assert result["compute_usd"] + result["transfer_usd"] == pytest.approx(expected, abs=2e-6)
    assert rows["cheap"]["egress_gbps"] > 0 and rows["local"]["transfer_usd"] == 0.0


def test_a_huge_target_sends_everything_to_the_cheapest() -> None:
    sim = Simulator(_two_providers(1e6), requests_at([0.0] * 5, 1000, 2))
    result = sim.run()
    assert sim.provider_of == ["cheap"] * 5
    assert result["providers"]["cheap"]["share"] == 1.0
    assert result["ttft_target_met_share"] == 1.0


def test_a_target_nothing_meets_sends_each_request_where_it_is_predicted_first() -> None:
    """Target 1 ms, three requests of 1000 tokens at t=0, every prefill 2 s. The first: all three
    options predict 2 s, local is the cheapest ($0.0011). The second: local now 4 s, cheap and
    fast 2 s, cheap the cheaper. The third: fast, the only one still at 2 s."""
    sim = Simulator(_two_providers(1e-3), requests_at([0.0] * 3, 1000, 2))
    result = sim.run()
    assert sim.provider_of == ["", "cheap", "fast"]
    assert result["route_reasons"] == {
        "fastest -> pd_prefill": 1,
        "fastest -> cheap": 1,
        "fastest -> fast": 1,
    }
    ttft = [sim.log.prefill_done_at[i] - sim.log.arrived_at[i] for i in range(3)]
    assert ttft == pytest.approx([2.0, 2.0, 2.0])
    assert result["ttft_target_met_share"] == 0.0


def test_short_requests_stay_local_by_the_route_rule() -> None:
    sim = Simulator(_two_providers(5.0), requests_at([0.0, 1.0], 400, 2))
    result = sim.run()
    assert result["route_reasons"] == {"global-prefix -> pd_prefill": 2}


def test_each_provider_has_its_own_link() -> None:
    """Links of 1e4 B/s, KV 11000 B in 10 layers, T(1000) = 2 s: alone on a link, a transfer
    sends 9900 B at 4950 B/s during prefill and its 1100 B tail at 1e4 B/s, landing at 2.11 s.
    Target 3 s: request 0 goes to "cheap" (ttft 2), request 1 to "fast" (cheap's queue makes 4).
    Both transfers run at once, each on its own link, and each lands at 2.11 s (sharing one
    link, the tails would take 0.22 s)."""
    cheap = _provider("cheap", 1e4, price_per_gpu_hour=1.0)
    fast = _provider("fast", 1e4, price_per_gpu_hour=4.0)
    config = SimConfig(_deployment(cheap, fast), LinearKV(), 10, ttft_target_s=3.0)
    sim = Simulator(config, requests_at([0.0, 0.0], 1000, 11))
    sim.run()
    assert sim.provider_of == ["cheap", "fast"]
    assert sim.log.kv_ready_at == pytest.approx([2.11, 2.11])
    assert sim.sites["cheap"].link.total_sent_bytes == pytest.approx(11000.0)
    assert sim.sites["fast"].link.total_sent_bytes == pytest.approx(11000.0)


def test_a_drop_on_one_link_leaves_the_other_alone() -> None:
    """As above, with cheap's link dropping to 100 B/s at 2.05 s: its transfer's last 600 B take
    6 s more, fast's lands at 2.11 s as before."""
    drop = (BandwidthStep(0.0, 1e4 * 8 / 1e9), BandwidthStep(2.05, 100 * 8 / 1e9))
    cheap = replace(_provider("cheap", 1e4, price_per_gpu_hour=1.0), bandwidth=drop)
    fast = _provider("fast", 1e4, price_per_gpu_hour=4.0)
    config = SimConfig(_deployment(cheap, fast), LinearKV(), 10, ttft_target_s=3.0)
    sim = Simulator(config, requests_at([0.0, 0.0], 1000, 11))
    sim.run()
    assert sim.log.kv_ready_at == pytest.approx([2.05 + 600 / 100, 2.11])


def test_the_rtt_of_the_providers_path_enters_the_prediction_and_the_transfer() -> None:
    """fast's path has a 1.5 s RTT: its predicted TTFT is 2 s + one RTT (the acknowledgment, on
    connections taken as warm, as the router takes them) = 3.5 s > 3 s, so with cheap busy the
    second request stays local. Made the cheaper one under a 4 s target, fast takes the first
    request (3.5 s) and cheap the second (fast's queue would make 4 + 1.5 s). fast's transfer,
    on a new connection, lands two RTTs (handshake and acknowledgment) after its last byte: the
    prediction leaves out the handshake and the last layer's 0.11 s tail."""
    cheap = _provider("cheap", 1e4, price_per_gpu_hour=1.0)
    fast = _provider("fast", 1e4, price_per_gpu_hour=4.0, path=LinkPath(rtt_s=1.5))
    config = SimConfig(_deployment(cheap, fast), LinearKV(), 10, ttft_target_s=3.0)
    sim = Simulator(config, requests_at([0.0, 0.0], 1000, 11))
    sim.run()
    assert sim.provider_of == ["cheap", ""]
    fast_cheaper = _deployment(cheap, replace(fast, price_per_gpu_hour=0.5))
    config = SimConfig(fast_cheaper, LinearKV(), 10, ttft_target_s=4.0, record_decisions=True)
    sim = Simulator(config, requests_at([0.0, 0.0], 1000, 11))
    sim.run()
    assert sim.provider_of == ["fast", "cheap"]
    assert sim.log.kv_ready_at == pytest.approx([2.11 + 3.0, 2.11])
    first, second = (r.choice for r in sim.provider_routes)
    assert first is not None and second is not None
    assert {q.name: q.ttft_s for q in first.quotes}["fast"] == pytest.approx(3.5)
    assert {q.name: q.ttft_s for q in second.quotes}["fast"] == pytest.approx(5.5)


# --- refusals ----------------------------------------------------------------------------


def test_provider_spec_refusals() -> None:
    with pytest.raises(UserError, match="other than 'local'"):
        _provider("local", 1e4)
    with pytest.raises(UserError, match="at least one prefill instance"):
        ProviderSpec("a", NO_PRFAAS, _gbps(1e4))
    with pytest.raises(UserError, match="price_per_gb"):
        _provider("a", 1e4, price_per_gb=-1.0)
    with pytest.raises(UserError, match="price_per_gpu_hour"):
        _provider("a", 1e4, price_per_gpu_hour=math.inf)
    with pytest.raises(UserError, match="GPUs per instance"):
        _provider("a", 1e4, gpus_per_instance=0)
    with pytest.raises(UserError, match="start at time 0"):
        ProviderSpec("a", PrefillClusterSpec(1, LATENCY, "x"), (BandwidthStep(1.0, 1.0),))


def test_deployment_refusals() -> None:
    a, b = _provider("a", 1e4), _provider("b", 1e4)
    with pytest.raises(UserError, match="two or more"):
        _deployment(a)
    with pytest.raises(UserError, match="distinct"):
        _deployment(a, _provider("a", 2e4))
    with pytest.raises(UserError, match="0 instances"):
        replace(_deployment(a, b), prfaas=PrefillClusterSpec(1, LATENCY, "x"))
    with pytest.raises(UserError, match="PrfaaS-PD deployment, not naive"):
        replace(_deployment(a, b), kind=DeploymentKind.NAIVE)
    with pytest.raises(UserError, match="pd_price_per_gpu_hour"):
        _deployment(a, b, pd_price_per_gpu_hour=-2.0)


def test_sim_config_refusals() -> None:
    dep = _deployment(_provider("a", 1e4), _provider("b", 1e4))
    for target in (None, 0.0, -1.0, math.inf):
        with pytest.raises(UserError, match="TTFT target > 0"):
            SimConfig(dep, LinearKV(), 10, ttft_target_s=target)
    with pytest.raises(UserError, match="leave `bandwidth` and `path` unset"):
        SimConfig(dep, LinearKV(), 10, _gbps(1e4), ttft_target_s=1.0)
    with pytest.raises(UserError, match="leave `bandwidth` and `path` unset"):
        SimConfig(dep, LinearKV(), 10, path=LinkPath(rtt_s=0.1), ttft_target_s=1.0)
    unsupported = {
        "adaptive controller": {"controller": ControllerConfig()},
        "routing hysteresis": {"route_hysteresis": True},
        "time series": {"series_period_s": 10.0},
    }
    for what, knobs in unsupported.items():
        with pytest.raises(UserError, match=f"{what} is not simulated with several providers"):
            SimConfig(dep, LinearKV(), 10, ttft_target_s=1.0, **knobs)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="there are none"):
        make_config(ttft_target_s=1.0)


def test_prefix_caching_is_refused_with_providers() -> None:
    config = _two_providers(5.0)
    with pytest.raises(UserError, match="prefix caching"):
        Simulator(config, [SimRequest(0.0, 1000, 2, block_hashes=(1, 2))])


def test_one_link_is_asked_of_a_run_with_several() -> None:
    sim = Simulator(_two_providers(5.0), requests_at([0.0], 1000, 2))
    with pytest.raises(RuntimeError, match="one link each"):
        _ = sim.link


# --- the one-cluster path, reproduced ------------------------------------------------------

_arrivals = st.lists(
    st.tuples(
        st.floats(0.0, 5.0, allow_nan=False),
        st.integers(1, 3000),
        st.integers(1, 12),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=_arrivals,
    link_bytes_per_s=st.floats(2e3, 1e6),
    rtt_s=st.sampled_from([0.0, 0.05, 0.3]),
    loss_rate=st.sampled_from([0.0, 0.01]),
    num_kv_layers=st.integers(1, 12),
    chunk_tokens=st.sampled_from([None, 256, 1000]),
    drop=st.one_of(st.none(), st.tuples(st.floats(0.5, 4.0), st.floats(1e3, 5e5))),
)
def test_a_never_chosen_second_provider_reproduces_the_one_cluster_run(
    arrivals: list[tuple[float, int, int]],
    link_bytes_per_s: float,
    rtt_s: float,
    loss_rate: float,
    num_kv_layers: int,
    chunk_tokens: int | None,
    drop: tuple[float, float] | None,
) -> None:
    """Provider "a" is the one-cluster run's PrfaaS cluster and link, free; "b" costs $1e6 per
    GPU-hour and the target is never missed, so every long request goes to "a": every request's
    timestamps and the bytes sent match the one-cluster run's."""
    requests = [SimRequest(t, n, out) for t, n, out in sorted(arrivals)]
    steps = [BandwidthStep(0.0, link_bytes_per_s * 8 / 1e9)]
    if drop is not None:
        steps.append(BandwidthStep(drop[0], drop[1] * 8 / 1e9))
    path = LinkPath(rtt_s=rtt_s, loss_rate=loss_rate)
    knobs = {"num_kv_layers": num_kv_layers, "chunk_tokens": chunk_tokens}
    one = make_config(bandwidth=tuple(steps), path=path, **knobs)  # type: ignore[arg-type]
    cluster = one.deployment.pd_prefill
    a = ProviderSpec("a", replace(cluster, hardware="a"), tuple(steps), path)
    b = ProviderSpec("b", cluster, _gbps(1e6), price_per_gpu_hour=1e6)
    several = replace(
        one,
        deployment=replace(one.deployment, prfaas=NO_PRFAAS, providers=(a, b)),
        bandwidth=(),
        path=LinkPath(),
        ttft_target_s=1e9,
    )
    sim_one, sim_several = Simulator(one, requests), Simulator(several, requests)
    sim_one.run()
    sim_several.run()
    for name in ("prefill_started_at", "first_token_at", "kv_ready_at", "finished_at"):
        assert getattr(sim_several.log, name) == pytest.approx(
            getattr(sim_one.log, name), nan_ok=True
        ), name
    assert sim_several.log.is_offloaded == sim_one.log.is_offloaded
    assert set(sim_several.provider_of) <= {"", "a"}
    sent = sim_several.sites["a"].link.total_sent_bytes
    assert sent == pytest.approx(sim_one.link.total_sent_bytes)


def test_every_recorded_route_replays_through_the_policy() -> None:
    """Each record's views give its per-provider decisions again through the provider's
    `RoutePolicy`, and its offers and local option give its choice again through
    `choose_provider`: what a live router fed the same views must decide."""
    cheap = _provider("cheap", 2e4, price_per_gpu_hour=1.0, path=LinkPath(rtt_s=0.2))
    fast = _provider("fast", 5e4, price_per_gpu_hour=4.0, price_per_gb=1.0)
    config = SimConfig(_deployment(cheap, fast), LinearKV(), 10, ttft_target_s=4.0)
    config = replace(config, record_decisions=True)
    lengths = [400, 1000, 3000, 1500, 800, 2500, 1200, 600, 2000, 1800] * 3
    requests = [SimRequest(0.4 * k, n, 3) for k, n in enumerate(lengths)]
    sim = Simulator(config, requests)
    sim.run()
    assert len(sim.provider_routes) == len(requests)
    assert {r.rule for r in sim.provider_routes} >= {
        "global-prefix -> pd_prefill",
        "cheapest -> cheap",
        "cheapest -> fast",
        "local -> pd_prefill",
    }
    for route in sim.provider_routes:
        query = route.query
        for e in route.evaluations:
            policy = sim.provider_sites[e.name].policy
            again = policy.choose(query.num_prompt_tokens, 0, 0, e.link, e.cluster, route.pd)
            assert again == e.decision
        if route.choice is None:
            assert not route.offers and route.provider == ""
            continue
        num_tokens = route.decision.num_incremental_tokens
        again_choice = choose_provider(
            route.offers, route.local, num_tokens, query.kv_bytes, query.ttft_target_s
        )
        assert again_choice == route.choice
        assert route.provider == ("" if route.choice.target == LOCAL else route.choice.target)


def test_the_offload_delay_rule_runs_with_each_providers_own_curve() -> None:
    """With the offload-delay rule on, "slow" (T(1000) = 20 s) is 10x the local 2 s, so its rule
    keeps the request local although it is the cheapest; "quick" (2 s) takes it. The
    deployment's costs name one PrfaaS curve (here the quick one): each provider's rule
    replaces it with its own."""
    costs = StageCosts(
        t_prefill_prfaas_s=LATENCY.t_prefill_s,
        t_prefill_pd_s=LATENCY.t_prefill_s,
        kv_bytes=lambda n: float(LinearKV().kv_bytes(round(n))),
        egress_bytes_per_s=1e6,
        max_batch_size=8,
        t_decode_step_s=0.1,
        num_output_tokens=3,
    )
    slow_cluster = PrefillClusterSpec(1, QuadraticLatency(10.0, 0.01, 0.0), "slow-hw")
    slow = ProviderSpec("slow", slow_cluster, _gbps(1e6), price_per_gpu_hour=0.1)
    quick = _provider("quick", 1e6, price_per_gpu_hour=4.0)
    deployment = replace(_deployment(slow, quick), route_config=RoutePolicyConfig(500, costs=costs))
    config = SimConfig(deployment, LinearKV(), 10, ttft_target_s=1e6, record_decisions=True)
    sim = Simulator(config, requests_at([0.0], 1000, 3))
    sim.run()
    (route,) = sim.provider_routes
    reasons = {e.name: e.decision.reason.split(":")[0] for e in route.evaluations}
    assert reasons == {"slow": "prfaas-delay", "quick": "global-prefix"}
    assert [o.name for o in route.offers] == ["quick"]
    assert sim.provider_of == ["quick"]


def test_the_queue_offered_is_the_one_the_request_joins() -> None:
    """cheap has two instances, T(l) = 1 + 0.001 l, t = 0: request 0 (1000 tokens, 2 s) runs on
    instance 0, ten of 50 tokens (1.05 s each) queue on instance 1, which holds fewer tokens
    (500), so a last request of 1000 tokens would join instance 1's 10.5 s, not instance 0's
    2 s: cheap offers 12.5 s > the 11 s target and fast (idle, 2 s) takes it. Every request
    then meets the target."""
    cheap = replace(
        _provider("cheap", 1e11, price_per_gpu_hour=1.0),
        cluster=PrefillClusterSpec(2, LATENCY, "cheap-hw"),
    )
    fast = _provider("fast", 1e11, price_per_gpu_hour=4.0)
    deployment = replace(_deployment(cheap, fast), route_config=RoutePolicyConfig(0))
    config = SimConfig(deployment, LinearKV(), 10, ttft_target_s=11.0, record_decisions=True)
    lengths = [1000] + [50] * 10 + [1000]
    sim = Simulator(config, [SimRequest(0.0, n, 2) for n in lengths])
    result = sim.run()
    assert sim.provider_of == ["cheap"] * 11 + ["fast"]
    last = sim.provider_routes[-1].choice
    assert last is not None
    assert {q.name: q.ttft_s for q in last.quotes}["cheap"] == pytest.approx(12.5)
    assert result["ttft_target_met_share"] == 1.0
