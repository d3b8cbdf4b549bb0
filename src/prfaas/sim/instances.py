"""Simulated instances: a prefill instance (FCFS queue, chunked prefill) and a decode instance
(continuous batching up to BS_max). They own queues and timing only; routing is not theirs.

Prefill: each step takes up to `chunk_tokens` tokens from the head of the queue (possibly finishing
one request and starting the next); a step costs the sum of its chunks' marginal costs
(`cost.chunk_time_s`), so a lone request takes exactly T_prefill(l). `chunk_tokens=None` runs one
whole request per step.

Decode: every step emits one token for each running request. The instance is only woken where its
batch changes (a request finishes, or a waiting request can join at the next step boundary), so the
event count does not grow with output length. A step's time is the step cost at the batch size and
the batch's mean context (tokens computed so far) at the batch change, as an emulated engine takes
it per step; the context's growth between two changes is left out.

A decode instance may also prefill a request itself (`SimDecode.recompute`: its KV did not arrive
by the transfer deadline), as the engine's `step` does: a waiting prefill runs whole at the next
step boundary (at once when idle), one at a time, and no decode step, nor any import, runs until it
ends; the request's first token streams then and it joins the batch.

Role changes (the adaptive controller): an instance is *active* from `active_from_s` until
`active_until_s` (None: still active). A *draining* instance takes no new work and finishes what it
holds; the simulator then retires it and starts an instance of the other role in its place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prfaas.sim.config import PrefillClusterSpec
from prfaas.sim.cost import DecodeStepTime, PrefillLatency, chunk_time_s

JobSizer = Callable[["PrefillJob"], int]  # tokens a job computes, asked as it starts


@dataclass(slots=True)
class PrefillJob:
    """One request's prefill on one instance."""

    req_index: int  # position of the request in the workload
    num_tokens: int  # uncached tokens to compute
    num_done: int = 0  # tokens computed so far
    is_sized: bool = False  # its size was settled as it started (`SimPrefill.start_step`)


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """Tokens [start_token, end_token) of one job, computed in the current step."""

    job: PrefillJob
    start_token: int
    end_token: int


class SimPrefill:
    """One prefill instance: FCFS queue and the step in progress."""

    def __init__(
        self, instance_id: str, latency: PrefillLatency, chunk_tokens: int | None = None
    ) -> None:
        self.instance_id = instance_id
        self.latency = latency
        self.chunk_tokens = chunk_tokens
        self.queue: deque[PrefillJob] = deque()
        self.step: tuple[PrefillChunk, ...] = ()
        self.step_s = 0.0  # duration of the running step, seconds
        self.step_started_at = 0.0  # simulated time the running step started, seconds
        self.num_queued_tokens = 0  # tokens not yet computed, queued or in the running step
        self.queued_work_s = 0.0  # prefill seconds not yet done, queued or in the running step
        self.busy_s = 0.0  # total seconds spent in steps
        self.active_from_s = 0.0  # simulated time this instance took its role, seconds
        self.active_until_s: float | None = None  # when it was retired (None: still active)
        self.is_draining = False  # takes no new work; retired once its queue is empty

    @property
    def is_busy(self) -> bool:
        return bool(self.step)

    @property
    def is_drained(self) -> bool:
        """Draining, and nothing is left to prefill."""
        return self.is_draining and not self.queue and not self.step

    def enqueue(self, job: PrefillJob) -> None:
        self.queue.append(job)
        self.num_queued_tokens += job.num_tokens
        self.queued_work_s += chunk_time_s(self.latency, job.num_done, job.num_tokens)

    def remaining_work_s(self, now: float) -> float:
        """Seconds until everything queued here is prefilled, if nothing else arrives."""
        if not self.step:
            return self.queued_work_s
        elapsed_s = min(self.step_s, max(0.0, now - self.step_started_at))
        return max(0.0, self.queued_work_s - elapsed_s)

    def plan_step(self) -> tuple[PrefillChunk, ...]:
        """Chunks of the next step, FCFS from the head of the queue, within the token budget."""
        budget = math.inf if self.chunk_tokens is None else self.chunk_tokens
        chunks = []
        for job in self.queue:
            if budget <= 0:
                break
            take = int(min(job.num_tokens - job.num_done, budget))
            chunks.append(PrefillChunk(job, job.num_done, job.num_done + take))
            budget -= take
            if self.chunk_tokens is None:
                break
        return tuple(chunks)

    def start_step(self, now: float = 0.0, size_job: JobSizer | None = None) -> float:
        """Start the next step at `now`; returns its duration, seconds (0 if the queue is empty).
        `size_job` says how many tokens a job computes, asked as it starts (a prefix cache is
        looked up then, not when the job was queued)."""
        if size_job is not None:
            self._size_starting_jobs(size_job)
        self.step = self.plan_step()
        self.step_started_at = now
        duration_s = sum(chunk_time_s(self.latency, c.start_token, c.end_token) for c in self.step)
        self.busy_s += duration_s
        self.step_s = duration_s
        return duration_s

    def _size_starting_jobs(self, size_job: JobSizer) -> None:
        """Settle the size of every job the next step starts (a smaller one may let another in)."""
        while starting := [
            c.job for c in self.plan_step() if c.start_token == 0 and not c.job.is_sized
        ]:
            for job in starting:
                num_tokens = size_job(job)
                self.num_queued_tokens += num_tokens - job.num_tokens
                self.queued_work_s += self.latency.t_prefill_s(num_tokens)
                self.queued_work_s -= self.latency.t_prefill_s(job.num_tokens)
                job.num_tokens, job.is_sized = num_tokens, True

    def finish_step(self) -> list[PrefillJob]:
        """Commit the running step; returns the jobs whose prefill is now complete."""
        finished = []
        for chunk in self.step:
            chunk.job.num_done = chunk.end_token
            self.num_queued_tokens -= chunk.end_token - chunk.start_token
            if chunk.job.num_done == chunk.job.num_tokens:
                finished.append(chunk.job)
        for job in finished:
            self.queue.remove(job)
        self.step = ()
        # Chunks of a job add up to T(l) (see cost.chunk_time_s), so the work drains exactly; the
        # reset on an empty queue keeps float rounding from accumulating.
        self.queued_work_s = max(0.0, self.queued_work_s - self.step_s) if self.queue else 0.0
        self.step_s = 0.0
        return finished


def prefill_cluster(
    name: str, spec: PrefillClusterSpec, chunk_tokens: int | None
) -> list[SimPrefill]:
    """The cluster's idle prefill instances, named `name-0`, `name-1`, ..."""
    return [
        SimPrefill(f"{name}-{k}", spec.latency, chunk_tokens) for k in range(spec.num_instances)
    ]


@dataclass(frozen=True, slots=True)
class LocalPrefill:
    """A request prefilled on its decode instance (its KV was lost), then decoded there."""

    req_index: int  # position of the request in the workload
    num_steps: int  # decode steps after the first token (0: the prefill's token is the answer)
    context_tokens: int  # tokens computed by the prefill: the prompt
    prefill_s: float  # the decode instance's own T_prefill of the prompt, seconds


class SimDecode:
    """One decode instance: continuous batching of up to `max_batch_size` requests.

    Requests join and leave only at step boundaries. Between wakes, the batch is fixed and steps of
    `step_s` run back to back from `segment_at`; `num_steps_done` counts steps up to `segment_at`.
    """

    def __init__(self, instance_id: str, max_batch_size: int, step_time: DecodeStepTime) -> None:
        self.instance_id = instance_id
        self.max_batch_size = max_batch_size
        self.step_time = step_time
        # (req_index, num_steps, context tokens at import) awaiting a slot
        self.waiting: deque[tuple[int, int, int]] = deque()
        self.running: dict[int, int] = {}  # req_index -> step count at which it finishes
        # req_index -> its context minus the step count at its admission: at step count S its
        # context is that + S
        self._context_base: dict[int, int] = {}
        self.num_steps_done = 0
        self.segment_at = 0.0  # simulated time of the last batch change, s
        self.step_s = 0.0  # step duration of the current batch, s
        self.wake_at: float | None = None  # next planned batch change
        self.version = 0
        self.batch_seconds = 0.0  # integral of the batch size over time, request-seconds
        self.active_from_s = 0.0  # simulated time this instance took its role, seconds
        self.active_until_s: float | None = None  # when it was retired (None: still active)
        self.is_draining = False  # gets no new request; retired once its last one finishes
        self.local_prefills: deque[LocalPrefill] = deque()  # waiting to prefill here
        self.prefilling: LocalPrefill | None = None  # the local prefill running now
        self.prefilled: list[int] = []  # requests whose local prefill ended at the last wake

    @property
    def takes_work(self) -> bool:
        """Active in its role and not draining."""
        return not self.is_draining and self.active_until_s is None

    @property
    def num_assigned(self) -> int:
        """Requests here: running, waiting for a slot, or prefilling here."""
        num_prefills = len(self.local_prefills) + (self.prefilling is not None)
        return len(self.running) + len(self.waiting) + num_prefills

    def add(
        self, now: float, req_index: int, num_steps: int, context_tokens: int = 0
    ) -> tuple[list[int], float | None]:
        """KV of a request has landed (`num_steps` >= 1 steps to run, `context_tokens` computed:
        its prompt).

        Returns (requests admitted right now, new wake time or None if the plan is unchanged).
        An idle instance admits at once; a busy one with a free slot wakes at its next boundary.
        """
        self.waiting.append((req_index, num_steps, context_tokens))
        if self.prefilling is not None:  # the engine is busy: imports wait for the prefill's end
            return [], None
        if not self.running:
            self.segment_at = now
            return self._admit(), self._plan_wake(now)
        if len(self.running) + len(self.waiting) > self.max_batch_size:
            return [], None  # no slot: the request waits for a completion wake
        next_boundary = self._next_boundary(now)
        if self.wake_at is not None and self.wake_at <= next_boundary:
            return [], None
        self.wake_at = next_boundary
        self.version += 1
        return [], next_boundary

    def recompute(self, now: float, job: LocalPrefill) -> float | None:
        """Prefill `job` here, after the local prefills before it. Returns the new wake time, or
        None if the plan is unchanged: an idle instance starts it now, a busy one at its next step
        boundary."""
        self.local_prefills.append(job)
        if self.prefilling is not None:
            return None  # its end starts the next one
        if not self.running:
            self.segment_at = now
            return self._start_local_prefill(now)
        next_boundary = self._next_boundary(now)
        if self.wake_at is not None and self.wake_at <= next_boundary:
            return None
        self.wake_at = next_boundary
        self.version += 1
        return next_boundary

    def on_wake(self, now: float) -> tuple[list[int], list[int], float | None]:
        """Advance to boundary `now`: finish, admit, replan. Returns (finished, admitted, wake).
        A local prefill that ends now is in `prefilled`; one that starts now admits nobody."""
        self.prefilled = []
        if self.prefilling is not None:  # no step ran while it did
            self._end_local_prefill()
        elif self.running:
            self.num_steps_done += round((now - self.segment_at) / self.step_s)
        self.batch_seconds += len(self.running) * (now - self.segment_at)
        finished = [r for r, at in self.running.items() if at <= self.num_steps_done]
        for req_index in finished:
            del self.running[req_index]
            del self._context_base[req_index]
        self.segment_at = now
        if self.local_prefills:
            return finished, [], self._start_local_prefill(now)
        admitted = self._admit()
        return finished, admitted, self._plan_wake(now)

    def _start_local_prefill(self, now: float) -> float:
        self.prefilling = self.local_prefills.popleft()
        self.version += 1
        self.wake_at = now + self.prefilling.prefill_s
        return self.wake_at

    def _end_local_prefill(self) -> None:
        """The running local prefill's first token is out; the request joins the batch first."""
        job = self.prefilling
        assert job is not None
        self.prefilling = None
        self.prefilled.append(job.req_index)
        if job.num_steps >= 1:
            self.waiting.appendleft((job.req_index, job.num_steps, job.context_tokens))

    def _admit(self) -> list[int]:
        admitted = []
        while self.waiting and len(self.running) < self.max_batch_size:
            req_index, num_steps, context_tokens = self.waiting.popleft()
            self.running[req_index] = self.num_steps_done + num_steps
            self._context_base[req_index] = context_tokens - self.num_steps_done
            admitted.append(req_index)
        return admitted

    def _plan_wake(self, now: float) -> float | None:
        self.version += 1
        if not self.running:
            self.wake_at = None
            return None
        self.step_s = self.step_time.t_decode_step_s(len(self.running), self.context_tokens)
        steps_to_next = min(self.running.values()) - self.num_steps_done
        self.wake_at = now + steps_to_next * self.step_s
        return self.wake_at

    @property
    def context_tokens(self) -> int:
        """The running requests' mean context now, rounded down as the emulated engine does."""
        num_running = len(self._context_base)
        if not num_running:
            return 0
        total = sum(self._context_base.values()) + num_running * self.num_steps_done
        return total // num_running

    def _next_boundary(self, now: float) -> float:
        steps = math.ceil((now - self.segment_at) / self.step_s - 1e-9)
        return self.segment_at + steps * self.step_s
