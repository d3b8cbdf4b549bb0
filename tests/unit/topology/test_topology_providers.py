"""Several prefill providers in one topology: prfaas clusters, each with its own
`[clusters.link]` (or the top-level `[link]`) and price, and `[policy] ttft_target_s`. What
several providers need (prices everywhere, a target, a numeric threshold, a prfaas deployment,
no controller) and where a `[clusters.link]` may stand are refused in one line each naming the
key; a topology with one provider loads as before."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from test_topology import _assert_names, _instance, _only_problem, _parse, _problems, _valid

from prfaas.errors import UserError
from prfaas.topology import LinkConfig
from prfaas.topology.derived import planner_inputs
from prfaas.topology.schema import LINK_KEYS
from prfaas.topology.write import topology_to_toml

Data = dict[str, Any]


def _providers() -> Data:
    """Providers "cheap" (its own 10 Gbps link, 1 $/GPU-h) and "fast" (the top-level 100 Gbps
    link, 4 $/GPU-h), then the pd cluster (2 $/GPU-h); ttft target 5 s."""
    data = _valid()
    cheap = data["clusters"][0]
    cheap.update(name="cheap", price_per_gpu_hour=1.0, link={"gbps": 10, "rtt_ms": 20})
    fast = {
        "name": "fast",
        "kind": "prfaas",
        "price_per_gpu_hour": 4,
        "instances": [_instance("f0", "prefill", 18400)],
    }
    data["clusters"].insert(1, fast)
    data["clusters"][2]["price_per_gpu_hour"] = 2.0
    data["link"] = {"gbps": 100, "price_per_gb": 0.01}
    data["policy"]["ttft_target_s"] = 5
    return data


def test_providers_load_with_their_links(tmp_path: Path) -> None:
    topology = _parse(_providers(), tmp_path)
    assert [c.name for c in topology.providers] == ["cheap", "fast"]
    assert topology.link_of("cheap") == LinkConfig(gbps=10, rtt_ms=20)
    assert topology.link_of("fast") == topology.link == LinkConfig(gbps=100, price_per_gb=0.01)
    assert topology.link_of("pd") == topology.link
    assert topology.link_path_of("cheap").rtt_s == pytest.approx(0.02)
    assert topology.policy.ttft_target_s == 5.0
    with pytest.raises(KeyError, match="nowhere"):
        topology.link_of("nowhere")


def test_providers_keep_file_order(tmp_path: Path) -> None:
    data = _providers()
    data["clusters"][0], data["clusters"][1] = data["clusters"][1], data["clusters"][0]
    assert [c.name for c in _parse(data, tmp_path).providers] == ["fast", "cheap"]


def test_providers_write_and_read_back(tmp_path: Path) -> None:
    topology = _parse(_providers(), tmp_path)
    text = topology_to_toml(topology)
    assert "[clusters.link]" in text and "ttft_target_s = 5.0" in text
    assert _parse(tomllib.loads(text), tmp_path) == topology


def test_one_provider_loads_as_before_and_keeps_a_target(tmp_path: Path) -> None:
    plain = _parse(_valid(), tmp_path)
    assert plain.policy.ttft_target_s is None
    assert plain.providers == plain.clusters_of_kind("prfaas")
    assert plain.link_of("prfaas") == plain.link
    data = _valid()
    data["policy"]["ttft_target_s"] = 2.5  # a single provider has no choice to make: unused
    assert _parse(data, tmp_path).policy.ttft_target_s == 2.5


@pytest.mark.parametrize("cluster", [0, 1, 2])
def test_every_cluster_needs_a_price(tmp_path: Path, cluster: int) -> None:
    data = _providers()
    del data["clusters"][cluster]["price_per_gpu_hour"]
    name = data["clusters"][cluster]["name"]
    _assert_names(
        _only_problem(data, tmp_path),
        f"clusters[{cluster}].price_per_gpu_hour",
        "missing",
        "2 prfaas clusters",
        repr(name),
    )


def test_several_providers_need_a_ttft_target(tmp_path: Path) -> None:
    data = _providers()
    del data["policy"]["ttft_target_s"]
    _assert_names(_only_problem(data, tmp_path), "policy.ttft_target_s", "missing", "cheapest")


def test_several_providers_refuse_an_auto_threshold(tmp_path: Path) -> None:
    data = _providers()
    data["policy"]["threshold"] = "auto"
    problem = _only_problem(data, tmp_path)
    _assert_names(problem, "policy.threshold", '"auto"', "one link", "give a number of tokens")


@pytest.mark.parametrize("deployment", ["naive", "homogeneous"])
def test_several_providers_need_a_prfaas_deployment(tmp_path: Path, deployment: str) -> None:
    data = _providers()
    data["policy"]["deployment"] = deployment
    _assert_names(_only_problem(data, tmp_path), "policy.deployment", repr(deployment))


def test_several_providers_refuse_the_controller(tmp_path: Path) -> None:
    data = _providers()
    data["controller"] = {}
    for instance in data["clusters"][2]["instances"]:
        instance.setdefault("kv", "127.0.0.1:18290")
    _assert_names(_only_problem(data, tmp_path), "controller", "one prfaas cluster")


def test_a_pd_cluster_has_no_link_of_its_own(tmp_path: Path) -> None:
    data = _providers()
    data["clusters"][2]["link"] = {"gbps": 10}
    _assert_names(_only_problem(data, tmp_path), "clusters[2].link", "pd cluster 'pd'")


def test_a_single_provider_uses_the_top_level_link(tmp_path: Path) -> None:
    data = _valid()
    data["clusters"][0]["link"] = {"gbps": 10}
    _assert_names(
        _only_problem(data, tmp_path), "clusters[0].link", "only prfaas cluster", "[link]"
    )


def test_a_cluster_link_has_the_keys_and_bounds_of_link(tmp_path: Path) -> None:
    data = _providers()
    data["clusters"][0]["link"] = {"gbps": 0, "loss_pct": 100, "latency_ms": 5}
    problems = _problems(data, tmp_path)
    assert len(problems) == 3, problems
    _assert_names(problems[0], "clusters[0].link.latency_ms", "unknown key", ", ".join(LINK_KEYS))
    _assert_names(problems[1], "clusters[0].link.gbps", "> 0")
    _assert_names(problems[2], "clusters[0].link.loss_pct", "[0, 100)")


def test_a_cluster_link_must_be_a_table(tmp_path: Path) -> None:
    data = _providers()
    data["clusters"][0]["link"] = 10
    _assert_names(_only_problem(data, tmp_path), "clusters[0].link", "a table")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(0, "in (0, 86400] s"), (-1, "got -1"), (math.nan, "got nan"), (1e5, "got 100000"),
     (True, "boolean"), ("5", "number")],
)  # fmt: skip
def test_bad_ttft_target_is_refused(tmp_path: Path, value: object, fragment: str) -> None:
    data = _providers()
    data["policy"]["ttft_target_s"] = value
    _assert_names(_only_problem(data, tmp_path), "policy.ttft_target_s", fragment)


def test_the_planner_refuses_several_providers_in_one_line(tmp_path: Path) -> None:
    topology = _parse(_providers(), tmp_path)
    with pytest.raises(UserError) as info:
        planner_inputs(topology)
    message = str(info.value)
    assert "\n" not in message and "one prfaas cluster" in message and "cheap, fast" in message
