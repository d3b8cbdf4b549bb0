"""The `[controller]` table: its knobs, and what it asks of the deployment (convertible PD
instances with a KV receiver, a PrfaaS-PD deployment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prfaas.topology import Topology, parse_topology
from prfaas.topology.keys import TopologyError

Data = dict[str, Any]


def _data(**controller: Any) -> Data:
    def inst(name: str, role: str, port: int, kv: bool) -> Data:
        d: Data = {"name": name, "role": role, "http": f"127.0.0.1:{port * 100}"}
        d["engine"] = "emulated"
        d["hardware"] = "h200" if name.startswith("r") else "h20"
        if kv:
            d["kv"] = f"127.0.0.1:{port * 100 + 1}"
        return d

    return {
        "model": {"name": "qwen3_next"},
        "policy": {"threshold": 4096},
        "transport": {"token": "secret"},
        "controller": controller,
        "clusters": [
            {"name": "prfaas", "kind": "prfaas", "instances": [inst("r0", "prefill", 181, False)]},
            {
                "name": "pd",
                "kind": "pd",
                "instances": [
                    inst("p0", "prefill", 182, True),
                    inst("d0", "decode", 183, True),
                    inst("d1", "decode", 184, True),
                ],
            },
        ],
    }


def _parse(data: Data) -> Topology:
    return parse_topology(data, Path("."), source="t.toml")


def _problems(data: Data) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as info:
        _parse(data)
    return info.value.problems


def test_controller_table_sets_the_knobs_and_makes_pd_instances_convertible() -> None:
    topology = _parse(_data(period_s=5, window_s=60, min_samples=10, driven=True, cooldown_s=0))
    settings = topology.controller
    assert settings.enabled and settings.driven
    assert settings.config.period_s == 5.0 and settings.config.window_s == 60.0
    assert settings.config.min_samples == 10 and settings.config.cooldown_s == 0.0
    pd = topology.clusters_of_kind("pd")[0]
    assert all(topology.is_convertible(i) for i in pd.instances)
    assert not topology.is_convertible(topology.instance("r0"))


def test_without_the_table_nothing_is_convertible_and_a_pd_prefill_may_still_have_kv() -> None:
    data = _data()
    del data["controller"]
    topology = _parse(data)
    assert not topology.controller.enabled
    assert topology.instance("p0").kv == "127.0.0.1:18201"
    assert not any(topology.is_convertible(i) for i in topology.instances)


def test_controller_needs_a_kv_receiver_on_every_pd_instance() -> None:
    data = _data()
    del data["clusters"][1]["instances"][0]["kv"]
    (problem,) = _problems(data)
    assert "clusters[1].instances[0].kv" in problem and "[controller]" in problem


def test_controller_needs_a_prfaas_deployment() -> None:
    data = _data()
    data["policy"]["deployment"] = "homogeneous"
    (problem,) = _problems(data)
    assert problem.startswith("t.toml: controller:") and "homogeneous" in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("period_s", 0),
        ("window_s", -1),
        ("persistence_ticks", 0),
        ("cooldown_s", float("nan")),
        ("driven", "yes"),
        ("unknown_knob", 1),
    ],
)
def test_bad_controller_knobs_are_one_problem_naming_the_key(key: str, value: Any) -> None:
    (problem,) = _problems(_data(**{key: value}))
    assert f"controller.{key}" in problem or "unknown_knob" in problem, problem


def test_min_samples_above_max_samples_is_refused() -> None:
    (problem,) = _problems(_data(min_samples=100000))
    assert "min_samples" in problem
