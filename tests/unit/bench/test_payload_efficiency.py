"""A testbed run's measured payload efficiency (KV over the WAN's wire bytes) and the topology
the simulator and the planner replay it on."""

from __future__ import annotations

import pytest

from prfaas.bench.outcome import RequestResult, RunOutcome
from prfaas.bench.report import measured_payload_efficiency, with_payload_efficiency
from prfaas.topology.sim_config import sim_config_of
from topologies import Node, TopologySpec, decode, pd, prfaas


def _result(index: int, route: str, kv_bytes: int, error: str | None = None) -> RequestResult:
    return RequestResult(index, 0.0, 20_000, 4, sent_at_s=0.0, first_chunk_at_s=1.0,
                         last_chunk_at_s=1.1, finished_at_s=1.1, num_output_tokens=4,
                         route=route, kv_bytes=kv_bytes, error=error)  # fmt: skip


def test_efficiency_is_offloaded_kv_over_the_wan_bytes() -> None:
    """900 + 60 bytes of offloaded KV over 1,200 wire bytes: 0.8. A local request's KV and a
    failed request's do not cross the WAN."""
    results = [_result(0, "prfaas", 900), _result(1, "prfaas", 60), _result(2, "pd_prefill", 500),
               _result(3, "prfaas", 100, error="HTTP 503")]  # fmt: skip
    outcome = RunOutcome(results, [(0.0, 300), (5.0, 700), (9.0, 1_500)])
    assert measured_payload_efficiency(outcome) == pytest.approx(0.8)
    assert measured_payload_efficiency(RunOutcome(results, [])) is None
    assert measured_payload_efficiency(RunOutcome(results[2:3], [(0.0, 0), (1.0, 9)])) is None
    more_kv_than_wire = RunOutcome(results[:1], [(0.0, 0), (1.0, 899)])
    assert measured_payload_efficiency(more_kv_than_wire) is None


def test_the_replay_takes_the_measured_efficiency() -> None:
    topology = TopologySpec(
        (prfaas(Node("r0")), pd(Node("p0"), decode("d0"))), engine="emulated", time_scale=0.5
    ).topology()
    assert topology.link.payload_efficiency == 1.0
    replay = with_payload_efficiency(topology, 0.9)
    assert replay.link.payload_efficiency == 0.9 and replay.link.gbps == topology.link.gbps
    assert with_payload_efficiency(topology, None) is topology
    assert sim_config_of(replay).path.payload_efficiency == 0.9  # the simulator's payload rate
