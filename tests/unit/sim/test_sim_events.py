"""The event order is (time, priority, seq) and the priority table is the documented one."""

from __future__ import annotations

from sim_factories import make_config, requests_at

from prfaas.sim.events import (
    Arrival,
    BandwidthChange,
    ControllerTick,
    DecodeWake,
    EventQueue,
    LinkDrain,
    PrefillStepDone,
    Priority,
)
from prfaas.sim.simulator import Simulator
from prfaas.types import DeploymentKind


def test_priority_table_order() -> None:
    assert [p.name for p in sorted(Priority)] == [
        "BANDWIDTH_CHANGE",
        "TRANSFER_DEADLINE",
        "LINK_DRAIN",
        "DECODE_WAKE",
        "PREFILL_STEP_DONE",
        "CONTROLLER_TICK",
        "ARRIVAL",
    ]
    assert ControllerTick(1).priority is Priority.CONTROLLER_TICK
    assert Arrival(0).priority is Priority.ARRIVAL
    assert LinkDrain(0).priority is Priority.LINK_DRAIN
    assert PrefillStepDone("p").priority is Priority.PREFILL_STEP_DONE


def test_same_time_events_pop_by_priority_then_push_order() -> None:
    queue = EventQueue()
    queue.push(1.0, Arrival(0))
    queue.push(1.0, DecodeWake("d", 0))
    queue.push(1.0, BandwidthChange(1, 5.0))
    queue.push(0.5, Arrival(1))
    queue.push(1.0, Arrival(2))
    queue.push(1.0, DecodeWake("d", 1))
    popped = [queue.pop() for _ in range(len(queue))]
    assert [s.at for s in popped] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [s.event for s in popped] == [
        Arrival(1),
        BandwidthChange(1, 5.0),
        DecodeWake("d", 0),
        DecodeWake("d", 1),
        Arrival(0),
        Arrival(2),
    ]


def test_arrival_at_step_end_sees_the_freed_instance() -> None:
    """A request arriving exactly when a prefill step ends is routed after the step is committed,
    so the least-loaded pick sees instance 0 empty and chooses it (lowest index wins ties)."""
    config = make_config(DeploymentKind.HOMOGENEOUS, num_pd_p=2, prefill_s=(2.0, 0.0, 0.0))
    sim = Simulator(config, requests_at([0.0, 2.0], 100, 2))
    sim.run()
    busy = {p.instance_id: p.busy_s for p in sim.prefill_by_id.values()}
    assert busy == {"pd-p-0": 4.0, "pd-p-1": 0.0}
    assert sim.log.prefill_started_at == [0.0, 2.0]
