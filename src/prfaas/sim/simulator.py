"""The simulation loop: pop the earliest event, dispatch it to its `on_<event>` handler, push the
follow-ups. State lives in `prfaas.sim.state`, handlers in `prfaas.sim.handlers`, the views in
`prfaas.sim.views`, the metrics summary in `prfaas.sim.summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prfaas.policy.route import RouteTarget
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.events import (
    Arrival,
    ControllerTick,
    ControllerWake,
    DecodeWake,
    Event,
    LinkDrain,
    PrefillStepDone,
    TransferDeadline,
    TransferLanded,
)
from prfaas.sim.handlers import SimHandlers
from prfaas.sim.metrics import round_floats
from prfaas.sim.providers import providers_summary
from prfaas.sim.state import FollowUps
from prfaas.sim.summary import run_summary
from prfaas.sim.views import DecisionRecord
from prfaas.types import FAIL, RECOMPUTE

__all__ = ["DecisionRecord", "ProgressFn", "Simulator", "simulate"]

ProgressFn = Callable[[float], None]
PROGRESS_EVERY_EVENTS = 4096


class Simulator(SimHandlers):
    """One run of one deployment over one workload. Call `run()` once."""

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Simulate until every request finished or `drain_s` after the last arrival."""
        if self.requests:
            self.queue.push(self.requests[0].arrived_at, Arrival(0))
        for site in self.sites.values():
            for at, event in self._next_bandwidth_change(site, 1):
                self.queue.push(at, event)
        if self.control is not None:
            self.queue.push(self.control.period_s, ControllerTick(1))
        stop_at = self.arrivals_end_s + self.config.drain_s
        num_events = 0
        while (
            self.queue
            and self.num_finished < len(self.requests)
            and self.queue.peek_time() <= stop_at  # type: ignore[operator]
        ):
            scheduled = self.queue.pop()
            self.now = scheduled.at
            for at, event in self.dispatch(scheduled.event):
                self.queue.push(at, event)
            num_events += 1
            if progress is not None and num_events % PROGRESS_EVERY_EVENTS == 0:
                progress(self.now)
        self.num_events = num_events
        return self.summary()

    def dispatch(self, event: Event) -> FollowUps:
        if isinstance(event, Arrival):
            return self.on_arrival(event)
        if isinstance(event, PrefillStepDone):
            return self.on_prefill_step_done(event)
        if isinstance(event, LinkDrain):
            return self.on_link_drain(event)
        if isinstance(event, TransferLanded):
            return self.on_transfer_landed(event)
        if isinstance(event, DecodeWake):
            return self.on_decode_wake(event)
        if isinstance(event, ControllerTick):
            return self.on_controller_tick(event)
        if isinstance(event, ControllerWake):
            return self.on_controller_wake(event)
        if isinstance(event, TransferDeadline):
            return self.on_transfer_deadline(event)
        return self.on_bandwidth_change(event)

    def summary(self) -> dict[str, Any]:
        """Metrics of the run as a JSON-ready dict (floats rounded, no wall-clock values)."""
        window_s = self.arrivals_end_s
        end_s = max(self.now, window_s)
        # every prefill instance that ever ran, retired ones included (role changes)
        clusters = {
            RouteTarget.PRFAAS: self.clusters[RouteTarget.PRFAAS],
            RouteTarget.PD_PREFILL: self.pd_prefill_all,
        }
        summary = run_summary(
            self.config,
            self.log,
            list(self.sites.values()),
            clusters,
            self.decode,
            self.route_reasons,
            window_s,
            end_s,
            self.num_events,
        )
        if self.provider_sites:
            summary.update(self._providers_summary(end_s))
        if self.config.transfer_deadline_s is not None:  # `prfaas.sim.deadline`
            summary["num_recomputed"] = self.log.failure.count(RECOMPUTE)
            summary["num_errors"] = self.log.failure.count(FAIL)
        if self.route_state is not None:
            summary["route_mode_switches"] = self.route_state.num_switches
        if self.control is not None:
            summary["controller"] = round_floats(self.control.summary())
            summary["route_flips"] = self.num_route_flips
        return summary

    def _providers_summary(self, end_s: float) -> dict[str, Any]:
        config = self.config
        assert config.ttft_target_s is not None  # SimConfig requires it with providers
        result = providers_summary(
            config.deployment,
            list(self.provider_sites.values()),
            self.pd_prefill_all,
            self.log,
            self.provider_of,
            end_s,
            config.ttft_target_s,
        )
        return round_floats(result)  # type: ignore[no-any-return]


def simulate(
    config: SimConfig, requests: Sequence[SimRequest], progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Run one deployment over one workload; returns the metrics summary."""
    return Simulator(config, requests).run(progress)
