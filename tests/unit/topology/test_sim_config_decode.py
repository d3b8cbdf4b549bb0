"""A topology's simulated decode instances step as its emulated decode engines do: the same cost
model, at the batch's size and mean context, up to the engine's batch; the long-timescale
controller still plans with the planner's T_decode and BS_max, as the live one does."""

from __future__ import annotations

import pytest

from prfaas.engine.emulated import EMULATED_MAX_BATCH_SIZE
from prfaas.instance.engines import build_engine
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.policy.controller import ControllerConfig
from prfaas.sim.control import stage_costs_of
from prfaas.sim.instances import SimDecode
from prfaas.topology import Topology
from prfaas.topology.derived import planner_inputs
from prfaas.topology.sim_config import sim_config_of
from topologies import Node, TopologySpec, decode, pd, prfaas

PROMPT_TOKENS = (1000, 2000, 3300)
CLUSTERS = (prfaas(Node("r0")), pd(Node("p0", kv=True), decode("d0")))  # PD-P convertible


def _topology(**options: object) -> Topology:
    spec = TopologySpec(CLUSTERS, engine="emulated", time_scale=0.5, **options)  # type: ignore[arg-type]
    return spec.topology()


def _engine_step_s(topology: Topology, monkeypatch: pytest.MonkeyPatch) -> float:
    """What the decode instance's own engine sleeps for one decode step of the three requests."""
    decode = next(i for i in topology.instances if i.role == "decode")
    engine = build_engine(topology, decode)
    slept: list[float] = []
    monkeypatch.setattr(engine, "_sleep", slept.append)
    monkeypatch.setattr(engine, "_clock", engine._slept_clock)  # time is what it sleeps
    requests = [
        GenerateRequest(f"r{k}", (7,) * n, SamplingParams(max_tokens=4, seed=k))
        for k, n in enumerate(PROMPT_TOKENS)
    ]
    engine.prefill(requests)
    slept.clear()
    engine.step()
    assert len(slept) == 1
    return slept[0]


def test_a_decode_step_is_the_emulated_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    topology = _topology()
    engine_s = _engine_step_s(topology, monkeypatch)
    dep = sim_config_of(topology).deployment
    assert dep.max_batch_size == EMULATED_MAX_BATCH_SIZE
    decode = SimDecode("pd-d-0", dep.max_batch_size, dep.decode_step)
    decode.add(0.0, 0, 3, PROMPT_TOKENS[0])  # admitted at once: a batch of one
    for k in (1, 2):
        decode.add(0.0, k, 3, PROMPT_TOKENS[k])  # join at the next boundary: now
    decode.on_wake(0.0)
    assert len(decode.running) == 3
    assert decode.step_s * topology.model.time_scale == pytest.approx(engine_s, rel=1e-12)
    assert decode.step_s < 0.025 / 2  # well below the planner's T_decode at this batch


def test_the_controller_plans_with_the_planners_decode() -> None:
    topology = _topology(controller=ControllerConfig())
    inputs, _ = planner_inputs(topology)
    costs = stage_costs_of(sim_config_of(topology))
    assert costs.t_decode_step_s == inputs.t_decode_step_s
    assert costs.max_batch_size == inputs.max_batch_size
