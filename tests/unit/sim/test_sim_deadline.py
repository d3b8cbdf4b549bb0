"""The transfer deadline, timed by hand (`prfaas.sim.deadline`).

One PrfaaS-PD deployment, t = 500 tokens, a 1000 B/s link, one decode instance at 0.1 s a step.
At time 0 request A (1000 tokens, 11 output tokens) is offloaded and request B (400 tokens, 101
output tokens) prefills at PD-P. Prefill instances: T(l) = 1 + 0.001 l (A: 2 s, B: 1.4 s); the
decode instance's own prefill: T_d(l) = 0.5 + 0.002 l (A: 2.5 s). A's KV is 11000 B: the link
carries 1000 B/s, so 2000 B by the end of its prefill and the other 9000 B by 11 s, when it
lands. B's KV is handed over at 1.4 s; it decodes alone from there, its 100 steps ending at
11.4 s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from sim_factories import make_config

from prfaas.errors import UserError
from prfaas.perf.latency import QuadraticLatency
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.cost import FixedDecodeStep
from prfaas.sim.instances import LocalPrefill, SimDecode
from prfaas.sim.simulator import Simulator
from prfaas.types import DeploymentKind

A, B = 0, 1
REQUESTS = [SimRequest(0.0, 1000, 11), SimRequest(0.0, 400, 101)]
KV_LANDS_S = 11.0
DECODE_PREFILL_S = 2.5  # T_d(1000)


def _config(**knobs: object) -> SimConfig:
    config = make_config(
        DeploymentKind.PRFAAS, threshold_tokens=500, link_bytes_per_s=1000.0, **knobs
    )
    decode_prefill = QuadraticLatency(0.5, 0.002, 0.0)
    return replace(config, deployment=replace(config.deployment, decode_prefill=decode_prefill))


def _run(**knobs: object) -> tuple[Simulator, dict[str, object]]:
    sim = Simulator(_config(**knobs), REQUESTS)
    return sim, sim.run()


def test_without_a_deadline_the_kv_lands_late() -> None:
    sim, result = _run()
    log = sim.log
    assert log.is_offloaded == [True, False]
    assert log.kv_ready_at[A] == pytest.approx(KV_LANDS_S)
    assert log.first_token_at[A] == pytest.approx(KV_LANDS_S)  # a step boundary of B's
    assert log.finished_at[B] == pytest.approx(11.4)
    assert log.failure == ["", ""]
    assert "num_recomputed" not in result and "num_errors" not in result


def test_kv_past_the_deadline_is_recomputed_on_the_decode_instance() -> None:
    """Deadline 5 s from the dispatch at 0 (a step boundary of B's: 1.4 + 36 x 0.1). A's first
    token: 0 + 5 + T_d(1000) = 7.5 s. B's 64 steps left wait for that prefill, then run with A's:
    B ends at 7.5 + 6.4 s, A at 7.5 + 10 x 0.1 s. The sender gives A's KV up at 5 s: 2000 B during
    the prefill and 3000 B after it crossed, the other 6000 B never do."""
    sim, result = _run(transfer_deadline_s=5.0)
    log = sim.log
    assert log.failure == ["recompute", ""]
    assert math.isnan(log.kv_ready_at[A])
    assert log.first_token_at[A] == pytest.approx(0.0 + 5.0 + DECODE_PREFILL_S)
    assert log.second_token_at[A] == pytest.approx(7.6)
    assert log.finished_at[A] == pytest.approx(8.5)
    assert log.finished_at[B] == pytest.approx(7.5 + 6.4)  # 11.4 without the deadline
    assert sim.link.total_sent_bytes == pytest.approx(5000.0)
    assert sim.link.flows == {}
    assert result["num_recomputed"] == 1
    assert result["num_errors"] == 0
    assert result["num_completed"] == 2
    assert result["ttft_s"]["max"] == pytest.approx(7.5)


def test_a_deadline_between_steps_waits_for_the_step_to_end() -> None:
    """Deadline 5.05 s: B's step ends at 5.1 s, then the 2.5 s prefill runs."""
    sim, _ = _run(transfer_deadline_s=5.05)
    assert sim.log.first_token_at[A] == pytest.approx(5.1 + DECODE_PREFILL_S)
    assert sim.log.finished_at[B] == pytest.approx(5.1 + DECODE_PREFILL_S + 6.3)


def test_a_deadline_during_the_prefill_blocks_imports_and_stops_the_flow_at_its_end() -> None:
    """B arrives at 0.2 s (KV handed over at 1.6 s); deadline 1.5 s. A still prefills (until 2 s)
    and the decode instance is idle, so it prefills A from 1.5 to 4 s, and B's KV is imported
    after that: B's first token at 4 s. A's flow sends what its prefill produces until 2 s (2000 B
    at the link's rate), then leaves."""
    requests = [REQUESTS[A], replace(REQUESTS[B], arrived_at=0.2)]
    sim = Simulator(_config(transfer_deadline_s=1.5), requests)
    result = sim.run()
    log = sim.log
    assert log.failure == ["recompute", ""]
    assert log.first_token_at[A] == pytest.approx(1.5 + DECODE_PREFILL_S)
    assert log.kv_ready_at[B] == pytest.approx(1.6)
    assert log.first_token_at[B] == pytest.approx(4.0)
    assert log.second_token_at[B] == pytest.approx(4.1)
    assert log.finished_at[B] == pytest.approx(4.0 + 10.0)
    assert sim.link.total_sent_bytes == pytest.approx(2000.0)
    assert sim.link.flows == {}
    assert result["num_recomputed"] == 1


def test_a_request_prefilled_locally_has_the_deadline_too() -> None:
    """Deadline 1 s: B's PD-P prefill ends at 1.4 s, too late as well (live, its KV crosses to
    the decode instance the same way). The decode instance prefills A from 1 to 3.5 s, then B
    until 3.5 + T_d(400) = 4.8 s."""
    sim, result = _run(transfer_deadline_s=1.0)
    assert sim.log.failure == ["recompute", "recompute"]
    assert sim.log.first_token_at == pytest.approx([3.5, 4.8])
    assert result["num_recomputed"] == 2


def test_a_deadline_above_the_transfer_time_keeps_todays_timing() -> None:
    """The negative control: a 20 s deadline is never reached."""
    without, _ = _run()
    sim, result = _run(transfer_deadline_s=20.0)
    assert sim.log.failure == ["", ""]
    assert sim.log.first_token_at == without.log.first_token_at
    assert sim.log.finished_at == without.log.finished_at
    assert sim.link.total_sent_bytes == pytest.approx(11000.0)
    assert result["num_recomputed"] == 0


def test_kv_landing_exactly_at_the_deadline_is_too_late() -> None:
    without, _ = _run()
    landed_s = without.log.kv_ready_at[A]
    at_deadline, _ = _run(transfer_deadline_s=landed_s)
    assert at_deadline.log.failure[A] == "recompute"
    assert at_deadline.log.first_token_at[A] == pytest.approx(landed_s + DECODE_PREFILL_S)
    just_after, _ = _run(transfer_deadline_s=math.nextafter(landed_s, math.inf))
    assert just_after.log.failure[A] == ""
    assert just_after.log.first_token_at[A] == pytest.approx(landed_s)


def test_failure_policy_fail_ends_the_request_and_counts_it() -> None:
    sim, result = _run(transfer_deadline_s=5.0, failure_policy="fail")
    log = sim.log
    assert log.failure == ["fail", ""]
    assert math.isnan(log.first_token_at[A]) and math.isnan(log.finished_at[A])
    assert log.finished_at[B] == pytest.approx(11.4)  # its steps never wait
    assert sim.link.total_sent_bytes == pytest.approx(5000.0)
    assert result["num_errors"] == 1
    assert result["num_recomputed"] == 0
    assert (result["num_arrived"], result["num_completed"], result["num_unfinished"]) == (2, 1, 0)
    assert result["ttft_s"]["count"] == 1


def test_a_request_of_one_output_token_ends_with_its_local_prefill() -> None:
    sim = Simulator(_config(transfer_deadline_s=5.0), [SimRequest(0.0, 1000, 1)])
    sim.run()
    assert sim.log.first_token_at[A] == pytest.approx(7.5)
    assert sim.log.finished_at[A] == pytest.approx(7.5)


def test_a_decode_instance_prefills_between_steps_by_hand() -> None:
    decode = SimDecode("d", max_batch_size=4, step_time=FixedDecodeStep(1.0))
    assert decode.add(0.0, 0, 5) == ([0], 5.0)
    assert decode.recompute(0.5, LocalPrefill(1, 2, 100, 3.0)) == 1.0  # the step's end
    assert decode.on_wake(1.0) == ([], [], 4.0)  # prefills 1..4, nobody decodes
    assert decode.add(2.0, 2, 1) == ([], None)  # an import waits for the prefill
    assert decode.on_wake(4.0) == ([], [1, 2], 5.0)  # request 2 ends after one step
    assert decode.prefilled == [1]
    assert decode.on_wake(5.0) == ([2], [], 6.0)
    assert decode.prefilled == []
    assert decode.on_wake(6.0) == ([1], [], 8.0)  # request 0's 4 steps left end at 8
    assert decode.batch_seconds == pytest.approx(1 * 1 + 1 * 3 + 3 * 1 + 2 * 1)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"transfer_deadline_s": 0.0}, "transfer_deadline_s must be > 0 s"),
        ({"transfer_deadline_s": math.inf}, "transfer_deadline_s must be > 0 s"),
        ({"failure_policy": "retry"}, "failure policy must be recompute or fail"),
    ],
)
def test_bad_deadline_settings_are_refused(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        make_config(**knobs)  # type: ignore[arg-type]
