"""A topology with several prfaas clusters as a simulation with several providers
(`prfaas.topology.sim_config`), and `prfaas sim --topology FILE`: its providers table, its JSON and
the flags it refuses in one line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.sim.config import SimRequest
from prfaas.sim.link import BandwidthStep
from prfaas.sim.simulator import Simulator
from prfaas.topology import load_topology
from prfaas.topology.load import parse_topology
from prfaas.topology.sim_config import sim_config_of

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TWO = EXAMPLES / "emulated-two-providers.toml"


def _data() -> dict[str, Any]:
    return tomllib.loads(TWO.read_text())


def test_each_cluster_becomes_a_provider_with_its_own_link_and_prices() -> None:
    config = sim_config_of(load_topology(TWO))
    cheap, fast = config.deployment.providers
    assert (cheap.name, fast.name) == ("cheap", "fast")
    assert cheap.bandwidth == (BandwidthStep(0.0, 25.0),) and cheap.path.rtt_s == 0.03
    assert fast.bandwidth == (BandwidthStep(0.0, 100.0),) and fast.path.rtt_s == 0.005
    assert (cheap.price_per_gpu_hour, cheap.price_per_gb) == (2.5, 0.002)
    assert (fast.price_per_gpu_hour, fast.price_per_gb) == (4.0, 0.0)
    assert (cheap.cluster.num_instances, fast.cluster.num_instances) == (2, 1)
    assert cheap.gpus_per_instance == fast.gpus_per_instance == 8
    dep = config.deployment
    assert dep.prfaas.num_instances == 0 and dep.pd_prefill.num_instances == 2
    assert (dep.pd_price_per_gpu_hour, dep.pd_gpus_per_instance) == (1.5, 8)
    assert config.ttft_target_s == 10.0
    assert dep.route_config is not None and dep.route_config.threshold_tokens == 8000


def test_a_provider_is_simulated_as_it_would_be_alone(tmp_path: Path) -> None:
    """fast alone (cheap's cluster removed) is a one-provider topology: its curve, link and
    instances are that topology's PrfaaS cluster's."""
    data = _data()
    data["clusters"] = [c for c in data["clusters"] if c["name"] != "cheap"]
    alone = sim_config_of(parse_topology(data, tmp_path))
    fast = sim_config_of(load_topology(TWO)).deployment.providers[1]
    for num_tokens in (1000, 8001, 60_000):
        alone_s = alone.deployment.prfaas.latency.t_prefill_s(num_tokens)
        assert fast.cluster.latency.t_prefill_s(num_tokens) == alone_s
    assert (fast.bandwidth, fast.path) == (alone.bandwidth, alone.path)


def test_time_scale_turns_the_target_and_the_links_into_model_units(tmp_path: Path) -> None:
    data = _data()
    data["model"]["time_scale"] = 2.0
    config = sim_config_of(parse_topology(data, tmp_path))
    cheap = config.deployment.providers[0]
    assert config.ttft_target_s == 5.0
    assert cheap.path.rtt_s == pytest.approx(0.015)
    assert cheap.bandwidth[0].gbps == pytest.approx(50.0)


def test_a_bandwidth_series_is_refused_with_several_providers() -> None:
    with pytest.raises(UserError, match="several providers have one each"):
        sim_config_of(load_topology(TWO), [BandwidthStep(0.0, 10.0)])


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["sim", "--topology", str(TWO), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sim_topology_json_per_provider(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--rate", "1.5", "--num-requests", "300", "--json")
    assert code == 0
    r = json.loads(out)["prfaas"]
    rows = r["providers"]
    assert set(rows) == {"cheap", "fast", "local"}
    assert sum(row["num_requests"] for row in rows.values()) == r["num_arrived"] == 300
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0, abs=1e-5)  # rounded
    offloaded = rows["cheap"]["share"] + rows["fast"]["share"]
    assert r["offload_ratio"] == pytest.approx(offloaded, abs=1e-5)  # each share is rounded
    assert r["compute_usd"] == pytest.approx(sum(row["compute_usd"] for row in rows.values()))
    assert rows["cheap"]["transfer_usd"] > 0 and rows["fast"]["transfer_usd"] == 0
    assert rows["local"]["transfer_usd"] == 0
    assert r["ttft_target_s"] == 10.0 and 0 <= r["ttft_target_met_share"] <= 1
    assert r["split"] == [3, 2, 2] and r["threshold_tokens"] == 8000
    rules = r["route_reasons"]
    for name in ("cheap", "fast"):  # within the target the cheapest, past it the fastest
        routed = rules.get(f"cheapest -> {name}", 0) + rules.get(f"fastest -> {name}", 0)
        assert routed == rows[name]["num_requests"]


def test_sim_topology_text_has_a_providers_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--rate", "1", "--num-requests", "100")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:2] == ["provider", "hardware"] for line in lines)
    assert [line.split()[0] for line in lines if line.split()[:1] in (["cheap"], ["fast"])] == [
        "cheap",
        "fast",
    ]
    assert any(line.startswith("TTFT target 10 s: met by") for line in lines)


def test_sim_topology_of_one_provider_has_no_providers_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = str(EXAMPLES / "emulated-1t.toml")
    code = main(["sim", "--topology", one, "--rate", "1", "--num-requests", "50", "--json"])
    r = json.loads(capsys.readouterr().out)["prfaas"]
    assert code == 0 and "providers" not in r and r["num_arrived"] == 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "1", "--link-gbps", "5"], "--link-gbps does not apply with --topology"),
        (["--rate", "1", "--deployment", "naive"], "--deployment does not apply"),
        (["--rate", "1", "--find-max-rate"], "--find-max-rate does not apply"),
        (["--num-requests", "10"], "needs --rate"),
    ],
)
def test_sim_topology_refusals(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_sim_topology_refuses_prefix_caching_with_providers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    row = {"timestamp": 0, "input_length": 20_000, "output_length": 4, "hash_ids": [1, 2]}
    trace.write_text(json.dumps(row) + "\n")
    code, _, err = _run(capsys, "--trace", str(trace))
    assert code == 2 and "add --no-prefix-cache" in err
    code, out, _ = _run(capsys, "--trace", str(trace), "--no-prefix-cache", "--json")
    assert code == 0 and json.loads(out)["prfaas"]["num_arrived"] == 1


def test_sim_topology_timeline_has_a_link_track_per_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.json"
    code, _, _ = _run(capsys, "--rate", "1.5", "--num-requests", "200", "--timeline", str(trace))
    assert code == 0
    spans = json.loads(trace.read_text())["traceEvents"]
    transfers = {e["pid"] for e in spans if e["name"] == "transfer"}
    assert transfers == {"prfaas link cheap", "prfaas link fast"}


def test_the_simulators_offers_are_the_routers_for_the_same_views() -> None:
    """For one topology and the same views (a provider's queue and link, the PD-P queue), the
    simulator's `ProviderSite.offer` and `local_option` equal the live router's
    `ProviderQuoter.offer` and `local` (at time_scale 1, payload efficiency 1: one set of units),
    and so does the KV size each charges; the choice is then `choose_provider` on both."""
    from prfaas.policy.route import RouteDecision, RouteTarget
    from prfaas.policy.views import ClusterView, InstanceLoad, LinkView
    from prfaas.router.providers import ProviderQuoter
    from prfaas.sim.providers import ProviderEvaluation, local_option, make_sites

    topology = load_topology(TWO)
    config = sim_config_of(topology)
    sites = make_sites(config, jitter_seed=0)
    quoter = ProviderQuoter(topology)
    link = LinkView(25e9 / 8, 0.7, backlog_bytes=4e8, rtt_s=0.03)
    queue = ClusterView("cheap", (InstanceLoad("cheap-0", 9000, queued_prefill_s=3.5),))
    offload = RouteDecision(RouteTarget.PRFAAS, 30_000, 0, "global-prefix: l=30000 > t=8000")
    evaluation = ProviderEvaluation("cheap", link, queue, offload)
    sim_offer = sites["cheap"].offer(evaluation)
    cluster = next(c for c in topology.clusters if c.name == "cheap")
    router_offer = quoter.offer(cluster, cluster.instances[0], 3.5, link)
    assert sim_offer is not None
    fields = (
        *("name", "price_per_gpu_hour", "gpus_per_instance", "queue_s", "link_bytes_per_s"),
        *("path", "price_per_gb", "link_backlog_s", "wire_state"),
    )
    for name in fields:
        assert getattr(sim_offer, name) == pytest.approx(getattr(router_offer, name)), name
    for num_tokens in (8001, 30_000, 120_000):
        sim_s, router_s = sim_offer.t_prefill_s(num_tokens), router_offer.t_prefill_s(num_tokens)
        assert sim_s == pytest.approx(router_s)
    pd_view = ClusterView("pd", (InstanceLoad("pd-p-0", 100, queued_prefill_s=1.25),))
    pd = next(c for c in topology.clusters if c.name == "pd")
    sim_local, router_local = (
        local_option(config.deployment, pd_view),
        quoter.local(pd, pd.instances[0], 1.25),
    )
    assert (sim_local.price_per_gpu_hour, sim_local.gpus_per_instance, sim_local.queue_s) == (
        router_local.price_per_gpu_hour,
        router_local.gpus_per_instance,
        router_local.queue_s,
    )
    assert sim_local.t_prefill_s(5000) == pytest.approx(router_local.t_prefill_s(5000))
    assert config.kv_size.kv_bytes(30_000) == pytest.approx(quoter.kv_bytes(30_000))
    assert config.ttft_target_s == quoter.ttft_target_s


def test_bench_reports_the_simulated_side_of_several_providers() -> None:
    """`prfaas bench system`'s report simulates a topology with several providers (egress summed
    over every provider's link); its planner side says it models one provider."""
    from prfaas.bench.outcome import RequestResult, RunOutcome
    from prfaas.bench.report import compare

    lengths = [2000, 20_000, 60_000, 9000] * 5
    results = [RequestResult(i, 0.5 * i, n, 4, sent_at_s=0.5 * i) for i, n in enumerate(lengths)]
    sim, plan = compare(load_topology(TWO), RunOutcome(results))
    assert sim["num_completed"] == len(lengths)
    assert sim["offload_ratio"] == pytest.approx(15 / 20)  # the three longer of each four
    assert sim["egress_bytes"] > 0
    assert "one prfaas cluster" in plan["unavailable"]


def test_sim_topology_json_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--rate", "1.5", "--num-requests", "200", "--seed", "7", "--json")
    first, second = _run(capsys, *argv), _run(capsys, *argv)
    assert first == second and first[0] == 0
    other = _run(capsys, "--rate", "1.5", "--num-requests", "200", "--seed", "8", "--json")
    assert other[0] == 0 and other[1] != first[1]


@pytest.mark.parametrize(
    ("target_s", "expected"), [(4.5, ["cheap", "fast", "fast"]), (86400.0, ["cheap"] * 3)]
)
def test_the_live_providers_scenario_simulated(target_s: float, expected: list[str]) -> None:
    """tests/e2e/test_providers_services.py's topology and overlapping long requests, through the
    simulator: at time_scale 0.1 a 1000-token prefill takes 30 model seconds on cheap and 15 on
    fast, and the 4.5 s wall target is 45 model seconds. The first request goes to cheap; cheap
    behind it would take 60 s, so the next ones go to fast (15 s, then 30 s behind the first).
    With a target no provider misses, all go to cheap: what the live test sees."""
    from topologies import TopologySpec, two_providers

    spec = TopologySpec(
        two_providers(),
        engine="emulated",
        time_scale=0.1,
        payload_scale=1e-3,
        prefill_latency=(
            ("b200", "quadratic:0,0.015,0"),
            ("h100", "quadratic:0,0.03,0"),
            ("h20", "quadratic:0,0.12,0"),
        ),
        threshold=64,
        ttft_target_s=target_s,
        token="providers-test-token",
    )
    config = sim_config_of(spec.topology())
    sim = Simulator(config, [SimRequest(0.1 * k, 1000, 4) for k in range(3)])
    sim.run()
    assert sim.provider_of == expected
