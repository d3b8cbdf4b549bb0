"""A topology's simulation waits for KV as its decode instances do: `[policy]
transfer_deadline_s` (in model seconds) and `[policy] failure`, and a decode instance that
recomputes prefills as its emulated engine sleeps a local prefill."""

from __future__ import annotations

import pytest

from prfaas.instance.engines import build_engine
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.topology import Topology
from prfaas.topology.sim_config import sim_config_of
from topologies import Node, TopologySpec, pd, prfaas

# decode instances on other hardware than the PD cluster's prefill instances (H20)
CLUSTERS = (prfaas(Node("r0")), pd(Node("p0"), Node("d0", "decode", hardware="h100", kv=True)))
TIME_SCALE = 0.5


def _topology(**options: object) -> Topology:
    spec = TopologySpec(CLUSTERS, engine="emulated", time_scale=TIME_SCALE, **options)  # type: ignore[arg-type]
    return spec.topology()


@pytest.mark.parametrize(("deadline_s", "failure"), [(60.0, "recompute"), (7.5, "fail")])
def test_the_topologys_deadline_and_failure_policy_are_the_simulations(
    deadline_s: float, failure: str
) -> None:
    topology = _topology(transfer_deadline_s=deadline_s, failure=failure)
    assert topology.policy.transfer_deadline_s == deadline_s
    config = sim_config_of(topology)
    assert config.transfer_deadline_s == pytest.approx(deadline_s / TIME_SCALE)  # model seconds
    assert config.failure_policy == failure


def test_a_decode_instances_prefill_is_what_its_engine_sleeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = _topology()
    instance = next(i for i in topology.instances if i.role == "decode")
    engine = build_engine(topology, instance)
    slept: list[float] = []
    monkeypatch.setattr(engine, "_sleep", slept.append)
    monkeypatch.setattr(engine, "_clock", engine._slept_clock)  # time is what it sleeps
    num_tokens = 3000
    engine.add_request(GenerateRequest("r", (7,) * num_tokens, SamplingParams(max_tokens=4)))
    engine.step()  # the waiting request's prefill, as a decode instance recomputing runs it
    latency = sim_config_of(topology).deployment.decode_prefill_latency
    assert sum(slept) == pytest.approx(latency.t_prefill_s(num_tokens) * TIME_SCALE, rel=1e-12)
    prefill = sim_config_of(topology).deployment.pd_prefill.latency
    assert latency.t_prefill_s(num_tokens) != pytest.approx(prefill.t_prefill_s(num_tokens))
