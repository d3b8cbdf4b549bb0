"""The routing rule's knobs the router and the simulator take from a topology."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from prfaas.nodes.testbed import TestbedLayout, TestbedSpec, topology_text
from prfaas.nodes.topology import parse_topology
from prfaas.nodes.topology_sim import sim_config_of
from prfaas.nodes.topology_threshold import route_config_of
from prfaas.policy.route import RoutePolicyConfig


@pytest.mark.parametrize("controller", [False, True])
def test_only_a_controller_keeps_congestion_from_raising_t(controller: bool) -> None:
    spec = TestbedSpec(controller=controller)
    text = topology_text(spec, TestbedLayout(spec.name), None, 16000.0, 1.0)
    topology = parse_topology(tomllib.loads(text), Path("."), source="test")
    config = route_config_of(topology)
    default = RoutePolicyConfig(16000.0).threshold_raise_factor
    assert config.threshold_tokens == 16000.0
    assert config.threshold_raise_factor == (1.0 if controller else default) and default > 1
    assert sim_config_of(topology).deployment.route_config == config  # the simulator's too


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
