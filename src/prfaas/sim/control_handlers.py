"""The simulator's long-timescale controller at work: ticks, wakes and role changes.

A `ControllerTick` every period, and a `ControllerWake` when the controller names a due time (a
new link capacity held long enough), ask it to decide (`prfaas.sim.control.SimControl`); its
decisions are carried out here. A new t replaces the routing policy's; a role change drains the
least-loaded PD instance of one role (no new work, finish what it holds), then retires it and
starts an instance of the other role in its place. PrfaaS instances keep their role.
"""

from __future__ import annotations

from dataclasses import replace

from prfaas.policy.controller import ControlDecision, PdRole, RoleChange
from prfaas.policy.route import RouteTarget
from prfaas.sim.control import SimControl, TickState
from prfaas.sim.events import ControllerTick, ControllerWake
from prfaas.sim.instances import SimDecode, SimPrefill
from prfaas.sim.state import FollowUps, SimState


class ControlHandlers(SimState):
    """The controller's handlers on a run's state (mixed into `prfaas.sim.handlers.SimHandlers`)."""

    def on_controller_tick(self, event: ControllerTick) -> FollowUps:
        control = self._control()
        self._control_decide()
        control.record(self.now, self._tick_state(control.period_s))
        next_tick = ControllerTick(event.tick_index + 1)
        return [(self.now + control.period_s, next_tick)]

    def on_controller_wake(self, event: ControllerWake) -> FollowUps:
        wake_at_s = self._control().wake_at_s()
        if wake_at_s is not None and wake_at_s <= self.now:  # not moved by a later change
            self._control_decide()
        return []

    def _controller_wake(self) -> FollowUps:
        """The extra decision the controller asked for, if it is later than now."""
        wake_at_s = self._control().wake_at_s()
        if wake_at_s is None or wake_at_s <= self.now:
            return []
        return [(wake_at_s, ControllerWake())]

    def _control_decide(self) -> None:
        """The controller decides now and its decisions are carried out."""
        control = self._control()
        measured = control.measurements(self.now, self.link.bytes_per_s, self.role_counts())
        for decision in control.tick(self.now, measured):
            self._apply(decision)

    def _tick_state(self, period_s: float) -> TickState:
        num_p, num_d, draining = self.active_counts()
        config = self.policy.config
        return TickState(
            threshold_tokens=None if config is None else config.threshold_tokens,
            num_pd_p=num_p,
            num_pd_d=num_d,
            num_draining=draining,
            num_finished=self.num_finished,
            link_bytes_per_s=self.link.bytes_per_s,
            backlog_bytes=self.link.backlog_bytes(self.now),
            egress_bytes_per_s=self.link.mean_rate_bytes_per_s(self.now, period_s),
        )

    def role_counts(self) -> tuple[int, int, int]:
        """(N_p, N_d, converting), each draining instance counted in the role it is heading to."""
        p_active, d_active, _ = self.active_counts()
        to_p = sum(1 for d in self.decode if d.is_draining and d.active_until_s is None)
        to_d = sum(1 for p in self.pd_prefill_all if p.is_draining and p.active_until_s is None)
        return p_active + to_p, d_active + to_d, to_p + to_d

    def active_counts(self) -> tuple[int, int, int]:
        """(PD-P taking work, PD-D taking work, PD instances draining)."""
        num_p = len(self.clusters[RouteTarget.PD_PREFILL])
        num_d = sum(1 for d in self.decode if d.takes_work)
        draining = sum(1 for p in self.pd_prefill_all if p.is_draining and p.active_until_s is None)
        draining += sum(1 for d in self.decode if d.is_draining and d.active_until_s is None)
        return num_p, num_d, draining

    def _apply(self, decision: ControlDecision) -> None:
        if isinstance(decision, RoleChange):
            for _ in range(decision.num_instances):
                self._start_conversion(decision.from_role)
            return
        assert self.policy.config is not None
        config = replace(self.policy.config, threshold_tokens=decision.new_threshold_tokens)
        self.policy = replace(self.policy, config=config)  # keeps a wrapping policy's class

    def _start_conversion(self, from_role: PdRole) -> None:
        """Drain the least-loaded instance of `from_role`; retire it at once if it is idle."""
        if from_role is PdRole.PD_PREFILL:
            cluster = self.clusters[RouteTarget.PD_PREFILL]
            if len(cluster) < 2:
                raise RuntimeError("a role change would leave no PD-P instance taking work")
            instance = min(cluster, key=lambda p: p.remaining_work_s(self.now))
            cluster.remove(instance)
            instance.is_draining = True
            self._control().conversion_started(self.now, instance.instance_id, from_role)
            if instance.is_drained:
                self._retire_prefill(instance)
            return
        active = [k for k, d in enumerate(self.decode) if d.takes_work]
        if len(active) < 2:
            raise RuntimeError("a role change would leave no PD-D instance taking work")
        k = min(active, key=lambda k: (self.decode_tokens[k], k))
        self.decode[k].is_draining = True
        self._control().conversion_started(self.now, self.decode[k].instance_id, from_role)
        if self.decode_requests[k] == 0:
            self._retire_decode(k)

    def _retire_prefill(self, instance: SimPrefill) -> None:
        """A drained PD-P instance becomes a new PD-D instance."""
        instance.active_until_s = self.now
        dep = self.config.deployment
        decode = SimDecode(f"pd-d-{len(self.decode)}", dep.max_batch_size, dep.decode_step)
        decode.active_from_s = self.now
        self.decode.append(decode)
        self.decode_by_id[decode.instance_id] = decode
        self.decode_tokens.append(0)
        self.decode_requests.append(0)
        self._control().conversion_done(self.now, instance.instance_id, decode.instance_id)

    def _retire_decode(self, k: int) -> None:
        """A drained PD-D instance becomes a new PD-P instance."""
        self.decode[k].active_until_s = self.now
        spec = self.config.deployment.pd_prefill
        name = f"pd-p-{len(self.pd_prefill_all)}"
        instance = SimPrefill(name, spec.latency, self.config.chunk_tokens)
        instance.active_from_s = self.now
        self.clusters[RouteTarget.PD_PREFILL].append(instance)
        self.pd_prefill_all.append(instance)
        self.prefill_by_id[name] = instance
        self._control().conversion_done(self.now, self.decode[k].instance_id, name)

    def _control(self) -> SimControl:
        assert self.control is not None  # role changes come only from the controller
        return self.control
