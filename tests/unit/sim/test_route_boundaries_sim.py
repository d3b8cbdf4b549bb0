"""The threshold rule at its boundary through the simulator: requests whose incremental length is
t - 1, t and t + 1 tokens, with and without a cached prefix, route as worked out by hand.

`make_config`: t = 1000 tokens, one instance per role, a 1e4 bytes/s link, prefill 1 + 0.001 l
seconds; here 100-token prefix blocks. Requests arrive 100 s apart, so each finds idle queues and
an idle link (utilization 0: global best prefix). The simulator has no retransmissions; the
congestion rule's boundary is pinned in `tests/unit/policy/test_route_boundaries.py` and, through
the router's link measurement, in `tests/unit/router/test_route_boundaries_router.py`.
"""

from __future__ import annotations

import pytest
from sim_factories import make_config

from prfaas.policy.route import RouteTarget
from prfaas.sim.config import SimRequest
from prfaas.sim.simulator import Simulator

PD, PRFAAS = RouteTarget.PD_PREFILL, RouteTarget.PRFAAS
BLOCK_TOKENS = 100
CACHED = tuple(range(1, 11))  # 10 blocks = 1000 tokens, prefilled on PD-P by request 3
G = "global-prefix: "  # every reason's rule: the idle link makes bandwidth abundant


def _blocks(first: int, num_blocks: int) -> tuple[int, ...]:
    return tuple(range(first, first + num_blocks))


# (prompt tokens, block hashes) -> (target, incremental, hit, moved, reason)
TABLE = [
    # no prefix information: l = prompt
    ((999, ()), (PD, 999, 0, 0, G + "l=999 <= t=1000")),
    ((1000, ()), (PD, 1000, 0, 0, G + "l=1000 <= t=1000")),
    ((1001, ()), (PRFAAS, 1001, 0, 0, G + "l=1001 > t=1000")),
    # 1000 tokens in 10 blocks, nothing cached yet: l = 1000, PD-P caches the 10 blocks
    ((1000, CACHED), (PD, 1000, 0, 0, G + "l=1000 <= t=1000")),
    # the same 10 blocks then new ones: PD-P holds 1000 tokens, l = prompt - 1000
    ((1999, CACHED + _blocks(201, 10)), (PD, 999, 1000, 0, G + "l=999 <= t=1000")),
    ((2000, CACHED + _blocks(301, 10)), (PD, 1000, 1000, 0, G + "l=1000 <= t=1000")),
    # l = 1001: PrfaaS, which gets PD-P's 1000 cached tokens moved over first
    ((2001, CACHED + _blocks(401, 11)), (PRFAAS, 1001, 1000, 1000, G + "l=1001 > t=1000")),
]  # fmt: skip


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    config = make_config(threshold_tokens=1000, block_tokens=BLOCK_TOKENS, record_decisions=True)
    requests = [
        SimRequest(100.0 * k, prompt, 1, hashes) for k, ((prompt, hashes), _) in enumerate(TABLE)
    ]
    sim = Simulator(config, requests)
    sim.run()
    return sim


@pytest.mark.parametrize("k", range(len(TABLE)))
def test_the_simulator_routes_each_request_as_worked_out(simulator: Simulator, k: int) -> None:
    record = simulator.decision_log[k]
    d = record.decision
    got = (
        d.target,
        d.num_incremental_tokens,
        d.num_prefix_hit_tokens,
        d.num_prefix_transfer_tokens,
        d.reason,
    )
    assert got == TABLE[k][1]
    assert record.link.utilization == 0.0  # the link was idle: global best prefix applies
    assert simulator.log.is_offloaded[k] == (d.target is PRFAAS)


def test_the_summary_counts_the_same_decisions(simulator: Simulator) -> None:
    # 5 requests with l <= 1000 on PD-P, 2 with l = 1001 on PrfaaS
    reasons = simulator.summary()["route_reasons"]
    assert reasons == {"global-prefix -> pd_prefill": 5, "global-prefix -> prfaas": 2}
    assert simulator.num_finished == len(TABLE)
