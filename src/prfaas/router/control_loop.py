"""The router's long-timescale loop: the pure `AdaptiveController` fed with live measurements, and
its decisions carried out (a new threshold to the dispatcher, role changes to PD instances).

What it feeds the controller, the same quantities the simulator feeds it (`prfaas.sim.control`):

- every routed request's incremental length: prompt minus the best usable prefix over both
  clusters, when it is routed;
- the mean output length of the requests that finished in the window;
- at each tick (once a period, and at once when told the link's new capacity): the link's
  capacity (the topology's `[link]`, or the last capacity reported with
  `POST /internal/control/link`) in the model's units (`ModelConfig.model_bytes_per_s`),
  T_decode and the stage costs of the planner's inputs for this topology
  (`prfaas.topology.derived.planner_inputs`: the prefill curves emulated engines sleep
  on the instances' hardware), and the PD roles the monitor sees (a converting instance counts in
  its new role).

Time is seconds since the router started, or, with `driven = true`, the time the driver gives
(`POST /internal/control/clock` and `/internal/control/tick`), so a scripted run can replay the
same timeline through the router and through `prfaas sim`.

A role change is carried out here: the least loaded instance of the old role stops receiving
work, the router waits until nothing it sent there is in flight, asks the instance to change
(`POST /internal/role`; it finishes what it still holds), and routes to it again once its stats
report the new role. Every decision is logged as one JSON line with its reason and inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from prfaas.policy.controller import (
    AdaptiveController,
    ControlDecision,
    Measurements,
    PdRole,
    RoleChange,
    decision_dict,
)
from prfaas.policy.transfer import payload_bandwidth_bytes_per_s
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor, InstanceState
from prfaas.topology import Topology
from prfaas.topology.derived import planner_inputs

log = logging.getLogger("prfaas.router")
_ROLE_OF = {PdRole.PD_PREFILL: "prefill", PdRole.PD_DECODE: "decode"}
_MAX_LOGGED_DECISIONS = 1000
_ROUTER_DRAIN_TIMEOUT_S = 900.0  # requests in flight to a converting instance may take this long
_SWITCH_TIMEOUT_S = 900.0  # and the instance as long to report its new role
_POLL_S = 0.05
_WAKE_SLACK_S = 0.01  # wake this much after the controller's wake_at_s, so that it is due
_ROLE_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


class RouterControl:
    """One router's controller, its measurements, and the conversions it has under way."""

    def __init__(
        self,
        topology: Topology,
        monitor: ClusterMonitor,
        client: aiohttp.ClientSession,
        metrics: RouterMetrics,
        set_threshold: Callable[[float], None],
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        settings = topology.controller
        inputs, _ = planner_inputs(topology)
        self.topology, self.monitor, self.client, self.metrics = topology, monitor, client, metrics
        self.set_threshold = set_threshold
        self.on_event = on_event  # each decision and finished role change (the dashboard's)
        self.driven = settings.driven
        self.t_decode_step_s = inputs.t_decode_step_s
        self.pd = topology.clusters_of_kind("pd")[0]
        prfaas = topology.clusters_of_kind("prfaas")[0]
        self.controller = AdaptiveController(
            settings.config,
            inputs.stage_costs(inputs.prfaas, inputs.pd),
            len(prfaas.by_role("prefill")),
            topology.policy.threshold_tokens,
        )
        self.decisions: deque[dict[str, Any]] = deque(maxlen=_MAX_LOGGED_DECISIONS)
        self.conversions: list[dict[str, Any]] = []
        self._outputs: deque[tuple[float, int]] = deque()  # (finish time, output tokens)
        self._started_at = time.monotonic()
        self._driven_now = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None

    # ---- time and inputs -------------------------------------------------------------------
    def now(self) -> float:
        """The controller's time: seconds since start, or the driver's last time."""
        return self._driven_now if self.driven else time.monotonic() - self._started_at

    def set_clock(self, at_s: float) -> None:
        """Driven mode: move the controller's time to `at_s` (never backwards)."""
        if not self.driven:
            raise ValueError("the controller runs on its own clock (set driven = true)")
        if not at_s >= self._driven_now:
            raise ValueError(f"time cannot go backwards: {at_s} < {self._driven_now}")
        self._driven_now = float(at_s)

    def observe_routed(self, num_incremental_tokens: int) -> None:
        self.controller.observe(self.now(), num_incremental_tokens)

    def observe_finished(self, num_output_tokens: int) -> None:
        self._outputs.append((self.now(), num_output_tokens))

    def link_capacity_changed(self) -> None:
        """The monitor took a new link capacity (an operator or a testbed said so): the
        controller ticks at once instead of at its next period, and again when the capacity
        has held `link_hold_s` (in driven mode the driver decides when: `/tick` answers the
        controller's `wake_at_s`)."""
        if not self.driven:
            self.tick(self.now())
            self._schedule_wake()

    def _schedule_wake(self) -> None:
        """A tick at the controller's `wake_at_s`, if it asks for one."""
        wake_at_s = self.controller.wake_at_s()
        if wake_at_s is None:
            return
        task = asyncio.create_task(self._wake(wake_at_s - self.now() + _WAKE_SLACK_S))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))
        wake_at_s = self.controller.wake_at_s()
        if wake_at_s is None or wake_at_s > self.now():  # moved by a later change
            return
        self._tick_guarded()

    def role_counts(self) -> tuple[int, int, int]:
        """(N_p, N_d, converting), converting instances counted in their new role."""
        num_p = len(self.monitor.in_role(self.pd, "prefill"))
        num_d = len(self.monitor.in_role(self.pd, "decode"))
        converting = sum(1 for s in self._pd_states() if _is_converting(s))
        return num_p, num_d, converting

    def measurements(self, now: float) -> Measurements | None:
        """What the controller sees at `now`; None while no request finished in the window."""
        window_s = self.controller.config.window_s
        while self._outputs and self._outputs[0][0] <= now - window_s:
            self._outputs.popleft()
        num_p, num_d, converting = self.role_counts()
        if not self._outputs or num_p < 1 or num_d < 1:
            return None
        mean_output = sum(n for _, n in self._outputs) / len(self._outputs)
        return Measurements(
            egress_bytes_per_s=payload_bandwidth_bytes_per_s(
                self.topology.model.model_bytes_per_s(self.monitor.link_capacity_bytes_per_s),
                self.topology.link_path,
            ),
            t_decode_step_s=self.t_decode_step_s,
            num_output_tokens=max(1.0, mean_output),
            num_pd_p=num_p,
            num_pd_d=num_d,
            num_converting=converting,
        )

    # ---- ticks -----------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.driven:
            self._timer = asyncio.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        period_s = self.controller.config.period_s
        while True:
            await asyncio.sleep(period_s)
            self._tick_guarded()

    def _tick_guarded(self) -> None:
        """A tick of the router's own (period or wake): a bug in it must not stop the router."""
        try:
            self.tick(self.now())
        except Exception:
            log.exception("controller tick failed")

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Decide at `now` and start carrying the decisions out; the decisions as dicts."""
        measured = self.measurements(now)
        if measured is None:  # nothing finished in the window yet: nothing to decide on
            return []
        done = []
        for decision in self.controller.tick(now, measured):
            entry = decision_dict(decision)
            log.info(json.dumps({"event": "control_decision", **entry}, default=str))
            self.decisions.append(entry)
            self._report(entry)
            self._apply(decision)
            done.append(entry)
        return done

    def _apply(self, decision: ControlDecision) -> None:
        if isinstance(decision, RoleChange):
            for _ in range(decision.num_instances):
                self._start_conversion(decision.from_role, decision.to_role)
            return
        self.set_threshold(decision.new_threshold_tokens)
        self.metrics.threshold_tokens.set(decision.new_threshold_tokens)
        self.metrics.threshold_updates.inc()

    # ---- role changes ----------------------------------------------------------------------
    def _pd_states(self) -> list[InstanceState]:
        return [self.monitor.states[i.name] for i in self.pd.instances]

    def _start_conversion(self, from_role: PdRole, to_role: PdRole) -> None:
        """Stop routing to the least loaded instance of `from_role` and convert it."""
        old, new = _ROLE_OF[from_role], _ROLE_OF[to_role]
        candidates = self.monitor.ready(self.pd, old)
        if len(candidates) < 2:
            log.warning(
                json.dumps({"event": "role_change_skipped", "reason": f"fewer than 2 {old}"})
            )
            return
        state = min(candidates, key=lambda s: (s.load().num_queued_tokens, s.pending_requests))
        self.monitor.mark_converting(state.config.name, new)
        entry: dict[str, Any] = {"instance": state.config.name, "from_role": old, "to_role": new}
        entry["drain_from_s"] = self.now()
        self.conversions.append(entry)
        task = asyncio.create_task(self._convert(state, new, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _convert(self, state: InstanceState, role: str, entry: dict[str, Any]) -> None:
        try:
            await _wait_until(lambda: state.pending_requests == 0, _ROUTER_DRAIN_TIMEOUT_S)
            url = f"http://{state.config.http}/internal/role"
            async with self.client.post(url, json={"role": role}, timeout=_ROLE_TIMEOUT) as r:
                if r.status != 202:
                    raise RuntimeError(f"answered {r.status}: {(await r.read())[:200]!r}")
            await _wait_until(lambda: _serves(state, role), _SWITCH_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            entry["error"] = str(exc)
            log.warning(json.dumps({"event": "role_change_failed", **entry}))
            self._report({"kind": "role_change_failed", **entry})
            self.monitor.mark_converting(state.config.name, None)
            return
        self.monitor.mark_converting(state.config.name, None)
        entry["done_at_s"] = self.now()
        self.metrics.role_changes.labels(role).inc()
        log.info(json.dumps({"event": "role_change_done", **entry}))
        self._report({"kind": "role_change_done", **entry})

    def _report(self, entry: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(entry)

    def status(self) -> dict[str, Any]:
        """The controller's state for `GET /internal/control`."""
        num_p, num_d, converting = self.role_counts()
        return {
            "now_s": self.now(),
            "driven": self.driven,
            "threshold_tokens": self.controller.threshold_tokens,
            "num_pd_p": num_p,
            "num_pd_d": num_d,
            "num_converting": converting,
            "link_bytes_per_s": self.monitor.link_capacity_bytes_per_s,
            "roles": {s.config.name: s.converting_to or s.role for s in self._pd_states()},
            "decisions": list(self.decisions),
            "conversions": self.conversions,
        }

    async def close(self) -> None:
        for task in [self._timer, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _is_converting(state: InstanceState) -> bool:
    return state.converting_to is not None or (
        state.stats is not None and state.stats.draining_to is not None
    )


def _serves(state: InstanceState, role: str) -> bool:
    s = state.stats
    return s is not None and s.role == role and s.draining_to is None


async def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(_POLL_S)
