"""What the router's controller measures of the link: the payload the wire carries (wire rate x
`payload_efficiency`, in the model's units), the same egress its initial stage costs and the
simulator's controller use, so a tick does not swap one for the other."""

from __future__ import annotations

import asyncio
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


def test_the_router_ticks_again_once_a_new_link_capacity_has_held() -> None:
    """Told a new capacity, the router's controller ticks at once and again `link_hold_s` later
    (not at its next period, 30 s away), when the controller acts on it."""
    config = ControllerConfig(link_hold_s=0.2)
    topology = TopologySpec(engine="emulated", controller=config, link_gbps=8.0).in_code()
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    control = RouterControl(topology, monitor, None, RouterMetrics(), lambda t: None)  # type: ignore[arg-type]
    control._outputs.append((0.0, 16))
    ticks: list[float] = []
    tick = control.tick

    def counted(now: float) -> list[dict[str, object]]:
        ticks.append(now)
        return tick(now)

    control.tick = counted  # type: ignore[method-assign]

    async def drop_the_link() -> None:
        control.tick(control.now())  # the controller learns the 8 Gbps
        monitor.link_capacity_bytes_per_s /= 10
        control.link_capacity_changed()
        assert control.controller.wake_at_s() is not None
        for _ in range(200):  # up to 10 s on a loaded machine
            if len(ticks) == 3:
                break
            await asyncio.sleep(0.05)
        await control.close()

    asyncio.run(drop_the_link())
    assert len(ticks) == 3, ticks
    assert ticks[2] - ticks[1] >= 0.2
    assert control.controller.wake_at_s() is None  # acted on
