"""What the router's controller measures of the link: the payload the wire carries (wire rate x
`payload_efficiency`, in the model's units), the same egress its initial stage costs and the
simulator's controller use, so a tick does not swap one for the other."""

from __future__ import annotations

from dataclasses import replace

import pytest

from prfaas.policy.controller import ControllerConfig
from prfaas.router.control_loop import RouterControl
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.topology.derived import planner_inputs
from topologies import TopologySpec


@pytest.mark.parametrize("efficiency", [1.0, 0.5])
def test_the_measured_egress_is_the_links_payload_rate(efficiency: float) -> None:
    spec = TopologySpec(engine="emulated", controller=ControllerConfig(), link_gbps=8.0)
    topology = spec.in_code()
    topology = replace(topology, link=replace(topology.link, payload_efficiency=efficiency))
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    control = RouterControl(topology, monitor, None, RouterMetrics(), lambda t: None)  # type: ignore[arg-type]
    control._outputs.append((0.0, 16))
    measured = control.measurements(0.5)
    assert measured is not None
    wire = topology.model.model_bytes_per_s(8e9 / 8)
    assert measured.egress_bytes_per_s == pytest.approx(wire * efficiency)
    inputs, _ = planner_inputs(topology)
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    assert measured.egress_bytes_per_s == pytest.approx(costs.egress_bytes_per_s)
