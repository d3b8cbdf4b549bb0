"""The routing rule's knobs the router and the simulator take from a topology."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from prfaas.policy.route import RoutePolicyConfig
from prfaas.testbed.layout import TestbedLayout, TestbedScale, TestbedSpec, topology_text
from prfaas.topology import Topology, parse_topology
from prfaas.topology.derived import offload_delay_costs, route_config_of
from prfaas.topology.sim_config import sim_config_of


@pytest.mark.parametrize("controller", [False, True])
def test_only_a_controller_keeps_congestion_from_raising_t(controller: bool) -> None:
    spec = TestbedSpec(controller=controller)
    text = topology_text(spec, TestbedLayout(spec.name), None, 16000.0, 1.0)
    topology = parse_topology(tomllib.loads(text), Path("."), source="test")
    config = route_config_of(topology)
    default = RoutePolicyConfig(16000.0).threshold_raise_factor
    assert config.threshold_tokens == 16000.0
    assert config.threshold_raise_factor == (1.0 if controller else default) and default > 1
    sim_config = sim_config_of(topology).deployment.route_config
    assert sim_config is not None
    assert replace(sim_config, costs=None) == replace(config, costs=None)  # the simulator's too
    # the short-timescale offload-delay rule runs with the controller only
    assert (config.costs is not None) == controller == (sim_config.costs is not None)


def _topology(spec: TestbedSpec) -> Topology:
    text = topology_text(spec, TestbedLayout(spec.name), None, 16000.0, 100.0)
    return parse_topology(tomllib.loads(text), Path("."), source="test")


def test_the_router_compares_paths_in_wall_seconds_and_wire_bytes() -> None:
    """Emulated engines sleep time_scale x and send payload_scale x the model's figures, so the
    router's offload-delay costs are the simulator's times those factors."""
    scale = TestbedScale(100.0, 0.5, 0.002)
    topology = _topology(TestbedSpec(controller=True, scale=scale))
    wall = route_config_of(topology, wall_units=True).costs
    model = route_config_of(topology).costs
    assert wall is not None and model is not None
    for n in (1000, 32_000):
        assert wall.t_prefill_prfaas_s(n) == pytest.approx(0.5 * model.t_prefill_prfaas_s(n))
        assert wall.t_prefill_pd_s(n) == pytest.approx(0.5 * model.t_prefill_pd_s(n))
        assert wall.kv_bytes(n) == pytest.approx(0.002 * model.kv_bytes(n))
    assert model.t_prefill_pd_s(32_000) > model.t_prefill_prfaas_s(32_000)  # H20 vs H200


def test_no_offload_delay_rule_without_predicted_prefill_times() -> None:
    """Torch engines (no curve predicts them) or emulated ones that do not sleep: rule off."""
    torch = TestbedSpec(
        controller=True, engine="torch", threshold=4000.0, scale=TestbedScale(100.0, 1.0, 1.0)
    )
    assert offload_delay_costs(_topology(torch), wall_units=True) is None
    no_sleep = TestbedSpec(controller=True, scale=TestbedScale(100.0, 1.0, 1.0))
    topology = _topology(no_sleep)
    asleep = replace(topology, model=replace(topology.model, time_scale=0.0))
    assert offload_delay_costs(asleep, wall_units=True) is None
    assert offload_delay_costs(topology, wall_units=True) is not None


def test_the_controller_period_reaches_the_topology() -> None:
    spec = TestbedSpec(controller=True, controller_period_s=10.0)
    text = topology_text(spec, TestbedLayout(spec.name), None, 16000.0, 1.0)
    topology = parse_topology(tomllib.loads(text), Path("."), source="test")
    assert topology.controller.enabled and topology.controller.config.period_s == 10.0
    default = parse_topology(
        tomllib.loads(
            topology_text(TestbedSpec(controller=True), TestbedLayout("x"), None, 1.0, 1.0)
        ),
        Path("."),
        source="test",
    )
    assert default.controller.config.period_s == 30.0


def test_a_controller_period_without_a_controller_is_refused() -> None:
    from prfaas.errors import UserError

    with pytest.raises(UserError, match="needs --controller"):
        TestbedSpec(controller_period_s=10.0)
