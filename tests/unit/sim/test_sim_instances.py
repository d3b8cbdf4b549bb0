"""Decode batching math and chunked prefill costs, on hand-computed cases."""

from __future__ import annotations

import pytest

from prfaas.perf.latency import QuadraticLatency
from prfaas.sim.cost import FixedDecodeStep, chunk_time_s, context_decode_step
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


def test_remaining_work_counts_queued_prefill_seconds() -> None:
    prefill = SimPrefill("p", LATENCY, chunk_tokens=300)
    prefill.enqueue(PrefillJob(0, 1000))  # 3.0 s alone
    prefill.enqueue(PrefillJob(1, 10))  # 1.0101 s alone
    total_s = LATENCY.t_prefill_s(1000) + LATENCY.t_prefill_s(10)
    assert prefill.remaining_work_s(0.0) == pytest.approx(total_s)
    step_s = prefill.start_step(now=5.0)
    assert prefill.remaining_work_s(5.0 + step_s / 2) == pytest.approx(total_s - step_s / 2)
    prefill.finish_step()
    assert prefill.remaining_work_s(5.0 + step_s) == pytest.approx(total_s - step_s)
    while prefill.queue:
        prefill.start_step()
        prefill.finish_step()
    assert prefill.remaining_work_s(100.0) == 0.0


class _FakeDecodeModel:
    """t = 1 ms per sequence + 1 us per context token per sequence."""

    def t_decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        return batch_size * (1e-3 + 1e-6 * context_tokens)


def test_context_decode_step_tabulates_the_cost_model() -> None:
    step = context_decode_step(_FakeDecodeModel(), context_tokens=1000, max_batch_size=4)
    assert step.t_decode_step_s(1) == pytest.approx(0.002)
    assert step.t_decode_step_s(4) == pytest.approx(0.008)
    assert step.t_decode_step_s(9) == pytest.approx(0.008)  # never above the batch limit
    decode = SimDecode("d", max_batch_size=4, step_time=step)
    assert decode.add(0.0, 0, 10) == ([0], pytest.approx(0.02))  # 10 steps of 2 ms alone
