"""Decode batching math and chunked prefill costs, on hand-computed cases."""

from __future__ import annotations

import pytest

from prfaas.sim.cost import FixedDecodeStep, QuadraticLatency, chunk_time_s
from prfaas.sim.instances import PrefillJob, SimDecode, SimPrefill


def test_decode_continuous_batching_by_hand() -> None:
    decode = SimDecode("d", max_batch_size=2, step_time=FixedDecodeStep(1.0))
    assert decode.add(0.0, 0, 3) == ([0], 3.0)  # idle: admitted at once, done after 3 steps
    assert decode.add(0.5, 1, 2) == ([], 1.0)  # free slot: joins at the next step boundary
    assert decode.on_wake(1.0) == ([], [1], 3.0)  # r1 runs steps 2..3
    assert decode.add(1.5, 2, 1) == ([], None)  # batch full: waits for a completion
    assert decode.on_wake(3.0) == ([0, 1], [2], 4.0)
    assert decode.on_wake(4.0) == ([2], [], None)
    assert decode.batch_seconds == pytest.approx(1 * 1 + 2 * 2 + 1 * 1)


def test_decode_join_exactly_on_a_boundary_is_immediate() -> None:
    decode = SimDecode("d", max_batch_size=4, step_time=FixedDecodeStep(0.5))
    decode.add(0.0, 0, 10)
    assert decode.add(2.0, 1, 1) == ([], 2.0)


LATENCY = QuadraticLatency(1.0, 0.001, 1e-6)


def test_chunks_of_a_lone_request_add_up_to_its_latency() -> None:
    prefill = SimPrefill("p", LATENCY, chunk_tokens=300)
    prefill.enqueue(PrefillJob(0, 1000))
    total_s, num_steps, finished = 0.0, 0, []
    while prefill.queue:
        total_s += prefill.start_step()
        num_steps += 1
        finished += prefill.finish_step()
    assert num_steps == 4
    assert total_s == pytest.approx(LATENCY.t_prefill_s(1000))
    assert [j.req_index for j in finished] == [0]
    assert prefill.num_queued_tokens == 0


def test_a_step_can_finish_one_request_and_start_the_next() -> None:
    prefill = SimPrefill("p", LATENCY, chunk_tokens=300)
    prefill.enqueue(PrefillJob(0, 400))
    prefill.enqueue(PrefillJob(1, 400))
    prefill.start_step()
    prefill.finish_step()
    duration_s = prefill.start_step()
    assert [(c.job.req_index, c.start_token, c.end_token) for c in prefill.step] == [
        (0, 300, 400),
        (1, 0, 200),
    ]
    expected = chunk_time_s(LATENCY, 300, 400) + LATENCY.t_prefill_s(200)
    assert duration_s == pytest.approx(expected)
    assert [j.req_index for j in prefill.finish_step()] == [0]


def test_unchunked_prefill_runs_one_whole_request_per_step() -> None:
    prefill = SimPrefill("p", LATENCY)
    prefill.enqueue(PrefillJob(0, 1000))
    prefill.enqueue(PrefillJob(1, 10))
    assert prefill.start_step() == pytest.approx(3.0)
    assert [j.req_index for j in prefill.finish_step()] == [0]
