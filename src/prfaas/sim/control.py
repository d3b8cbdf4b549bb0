"""The simulator's side of the long-timescale controller: what it feeds in and what it records.

`SimControl` owns one run's `prfaas.policy.controller.AdaptiveController` (absent in a static run
that only records), the output-length window the measurements need, the log of every decision, and
the time series (one point per tick) of t, N_p, N_d, throughput and the link. Carrying out a role
change (draining, retiring, starting the instance of the other role) is the handlers' job, since it
touches instances.

What the simulator measures: the link's capacity now (B_out), T_decode at a full batch (the
deployment's planned decode figures, as a topology's live controller plans with the planner's,
else its decode step at BS_max: `planned_decode`), and the mean output length of the requests
that arrived in the window.
Its instances run exactly their latency curves, so the prefill time scales stay 1.0.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from prfaas.policy.controller import (
    AdaptiveController,
    ControlDecision,
    Measurements,
    decision_dict,
)
from prfaas.policy.throughput import StageCosts
from prfaas.policy.transfer import flow_cap_bytes_per_s, payload_bandwidth_bytes_per_s
from prfaas.sim.config import PlannedDecode, SimConfig
from prfaas.sim.link import gbps_to_bytes_per_s
from prfaas.types import GBPS


def planned_decode(config: SimConfig) -> PlannedDecode:
    """The decode figures the controller plans with: the deployment's planned ones, else its
    decode step at BS_max."""
    dep = config.deployment
    if dep.planned_decode is not None:
        return dep.planned_decode
    return PlannedDecode(dep.decode_step.t_decode_step_s(dep.max_batch_size), dep.max_batch_size)


def stage_costs_of(config: SimConfig) -> StageCosts:
    """The stage costs the simulated instances run at (the controller's profile)."""
    dep = config.deployment
    prfaas, pd, kv = dep.prfaas.latency, dep.pd_prefill.latency, config.kv_size
    return StageCosts(
        t_prefill_prfaas_s=lambda n: prfaas.t_prefill_s(round(n)),
        t_prefill_pd_s=lambda n: pd.t_prefill_s(round(n)),
        kv_bytes=lambda n: float(kv.kv_bytes(round(n))),
        egress_bytes_per_s=payload_bandwidth_bytes_per_s(
            gbps_to_bytes_per_s(config.bandwidth[0].gbps), config.path
        ),
        max_batch_size=planned_decode(config).max_batch_size,
        t_decode_step_s=planned_decode(config).t_decode_step_s,
        num_output_tokens=1.0,  # replaced by the measured mean at every tick
        flow_cap_bytes_per_s=flow_cap_bytes_per_s(config.path),
    )


@dataclass(frozen=True, slots=True)
class TickState:
    """What the handlers report at a tick, after its decisions were carried out."""

    threshold_tokens: float | None  # t the router uses now (None: not a PrfaaS-PD deployment)
    num_pd_p: int  # PD-P instances taking work
    num_pd_d: int  # PD-D instances taking work
    num_draining: int  # PD instances draining for a role change
    num_finished: int  # requests finished since the start of the run
    link_bytes_per_s: float  # link capacity now
    backlog_bytes: float  # KV accepted by the link and not delivered
    egress_bytes_per_s: float  # mean sending rate over the last period


class SimControl:
    """One run's controller (None: record only), its inputs and its records."""

    def __init__(self, config: SimConfig) -> None:
        dep = config.deployment
        period_s = config.tick_period_s
        assert period_s is not None
        self.period_s = period_s
        self.controller: AdaptiveController | None = None
        if config.controller is not None:
            assert dep.route_config is not None  # SimConfig checks the deployment kind
            self.controller = AdaptiveController(
                config.controller,
                stage_costs_of(config),
                dep.prfaas.num_instances,
                dep.route_config.threshold_tokens,
            )
        self._t_decode_step_s = planned_decode(config).t_decode_step_s
        self._outputs: deque[tuple[float, int]] = deque()  # (arrival time, output tokens)
        self.decisions: list[ControlDecision] = []
        self.series: list[dict[str, Any]] = []
        self.conversions: list[dict[str, Any]] = []  # one per converted instance, in order
        self._last_tick_s = 0.0
        self._last_num_finished = 0

    def observe(self, now: float, num_incremental_tokens: int, num_output_tokens: int) -> None:
        """A request was routed: its incremental length and its output length."""
        if self.controller is None:
            return
        self.controller.observe(now, num_incremental_tokens)
        self._outputs.append((now, num_output_tokens))

    def measurements(
        self, now: float, link_bytes_per_s: float, roles: tuple[int, int, int]
    ) -> Measurements | None:
        """What the controller sees now; None while no request arrived in the window.

        `roles` is (N_p, N_d, converting), converting instances counted in their new role."""
        if self.controller is None:
            return None
        while self._outputs and self._outputs[0][0] <= now - self.controller.config.window_s:
            self._outputs.popleft()
        if not self._outputs or link_bytes_per_s <= 0:
            return None
        mean_output = sum(n for _, n in self._outputs) / len(self._outputs)
        num_pd_p, num_pd_d, num_converting = roles
        return Measurements(
            egress_bytes_per_s=link_bytes_per_s,
            t_decode_step_s=self._t_decode_step_s,
            num_output_tokens=max(1.0, mean_output),
            num_pd_p=num_pd_p,
            num_pd_d=num_pd_d,
            num_converting=num_converting,
        )

    def tick(self, now: float, measured: Measurements | None) -> list[ControlDecision]:
        """The controller's decisions at `now` (none without measurements); logged here."""
        if self.controller is None or measured is None:
            return []
        decisions = self.controller.tick(now, measured)
        self.decisions += decisions
        return decisions

    def wake_at_s(self) -> float | None:
        """When the controller wants to decide before its next tick, or None."""
        return None if self.controller is None else self.controller.wake_at_s()

    def conversion_started(self, now: float, instance_id: str, from_role: str) -> None:
        """An instance stopped taking work and drains before changing role."""
        self.conversions.append(
            {"instance": instance_id, "from_role": from_role, "drain_from_s": now}
        )

    def conversion_done(self, now: float, instance_id: str, new_instance_id: str) -> None:
        """A drained instance was retired and `new_instance_id` took its place."""
        for entry in self.conversions:
            if entry["instance"] == instance_id and "retired_at_s" not in entry:
                entry["retired_at_s"] = now
                entry["new_instance"] = new_instance_id

    def record(self, now: float, state: TickState) -> None:
        """One point of the time series; throughput counts completions since the last point."""
        span_s = now - self._last_tick_s
        done = state.num_finished - self._last_num_finished
        cap = state.link_bytes_per_s
        self.series.append(
            {
                "at_s": now,
                "threshold_tokens": state.threshold_tokens,
                "num_pd_p": state.num_pd_p,
                "num_pd_d": state.num_pd_d,
                "num_draining": state.num_draining,
                "throughput_rps": done / span_s if span_s > 0 else 0.0,
                "link_gbps": cap * 8 / GBPS,
                "egress_gbps": state.egress_bytes_per_s * 8 / GBPS,
                "link_backlog_s": state.backlog_bytes / cap if cap > 0 else math.inf,
            }
        )
        self._last_tick_s, self._last_num_finished = now, state.num_finished

    def summary(self) -> dict[str, Any]:
        """The time series and, with a controller, its decision log and exported metrics."""
        result: dict[str, Any] = {"period_s": self.period_s, "series": self.series}
        if self.controller is not None:
            result["metrics"] = self.controller.metrics()
            result["num_threshold_updates"] = self.controller.num_threshold_updates
            result["decisions"] = [decision_dict(d) for d in self.decisions]
            result["conversions"] = self.conversions
        return result
