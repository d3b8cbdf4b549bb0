"""The simulator's per-event handlers: one `on_<event>` method per event type.

Each handler updates the instances, the links and the request log at the current simulated time
and returns its follow-up events; the loop in `prfaas.sim.simulator` schedules them. A request
goes: arrival -> route -> prefill queue -> prefill steps -> (KV over the shared link | intra-cluster
handover, taken as instantaneous) -> decode slot (the first token streams) -> decode steps ->
finished. This module carries a request along that way; the route step is
`prfaas.sim.route_handlers` (every decision from `prfaas.policy` on views built by
`prfaas.sim.views`; what is cached where is the prefix model's, `prfaas.sim.prefix`), the
controller's ticks and role changes are `prfaas.sim.control_handlers`, and the state they share is
`prfaas.sim.state`.

With several prefill providers (`DeploymentSpec.providers`), each has its own instances and its
own link (`prfaas.sim.link.LinkSite`, one max-min fair `SharedLink` each); a request's transfer
crosses its provider's link. A run with one PrfaaS cluster has one link, named "".

With `config.transfer_deadline_s`, a request whose KV has not landed by its deadline is given up
on, and its decode instance recomputes it or it fails (`prfaas.sim.deadline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prfaas.sim.control_handlers import ControlHandlers
from prfaas.sim.deadline import deadline_follow_up, drop_flow, local_prefill
from prfaas.sim.events import (
    Arrival,
    BandwidthChange,
    DecodeWake,
    LinkDrain,
    PrefillStepDone,
    TransferDeadline,
    TransferLanded,
)
from prfaas.sim.instances import PrefillJob, SimDecode, SimPrefill
from prfaas.sim.link import LinkSite, gbps_to_bytes_per_s
from prfaas.sim.prefix import SentKV, least_loaded
from prfaas.sim.route_handlers import RouteHandlers
from prfaas.sim.state import FollowUps, Transfer
from prfaas.types import RECOMPUTE


class SimHandlers(RouteHandlers, ControlHandlers):
    """One run's state (`prfaas.sim.state.SimState`) and every handler that advances it."""

    def on_arrival(self, event: Arrival) -> FollowUps:
        i = event.index
        req = self.requests[i]
        follow: FollowUps = []
        if i + 1 < len(self.requests):
            follow.append((self.requests[i + 1].arrived_at, Arrival(i + 1)))
        decision = self.route(i, req)
        self.decisions[i] = decision
        if self.moved_tokens[i] > 0:
            moved_bytes = self.config.kv_size.kv_bytes(self.moved_tokens[i])
            site = self._site(i)
            site.link.add(self.now, i, moved_bytes, 0.0, math.inf)
            self.transfers[i] = self._start_transfer(i, str(decision.target), moved_bytes, True)
            if site.link.release(self.now, i):  # nothing left to send
                return follow + self._transfer_drained(i) + self._link_follow_ups(site)
            return follow + self._link_follow_ups(site)
        return follow + self._enqueue_prefill(i)

    def on_prefill_step_done(self, event: PrefillStepDone) -> FollowUps:
        instance = self.prefill_by_id[event.instance_id]
        follow: FollowUps = []
        for job in instance.finish_step():
            follow += self._on_prefill_finished(job.req_index, instance)
        if instance.is_drained:
            self._retire_prefill(instance)
            return follow
        return follow + self._start_prefill_step(instance)

    def on_link_drain(self, event: LinkDrain) -> FollowUps:
        site = self.sites[event.link]
        if event.version != site.link.version:
            return []
        follow: FollowUps = []
        for flow_id in site.link.pop_drained(self.now):
            follow += self._transfer_drained(flow_id)
        return follow + self._link_follow_ups(site)

    def on_transfer_landed(self, event: TransferLanded) -> FollowUps:
        if event.is_prefix_move:
            i = event.req_index
            self.prefix.on_moved(self.prefill_of[i], self.requests[i], self.moved_tokens[i])
            return self._enqueue_prefill(i)
        if self.log.failure[event.req_index]:  # too late: given up on at its deadline
            return []
        return self._on_kv_ready(event.req_index)

    def on_transfer_deadline(self, event: TransferDeadline) -> FollowUps:
        """The decode instance stops waiting for request `i`'s KV (`prfaas.sim.deadline`)."""
        i = event.req_index
        if not math.isnan(self.log.kv_ready_at[i]):
            return []
        self.log.failure[i] = self.config.failure_policy
        prefill_ended = not math.isnan(self.log.prefill_done_at[i])
        follow = self._abandon_kv(i) if prefill_ended else []  # else once it ends
        if self.config.failure_policy != RECOMPUTE:
            self._leave_decode(i)
            return follow
        instance = self.decode[self.decode_of[i]]
        wake_at = instance.recompute(self.now, local_prefill(self.config, self.requests[i], i))
        return follow + self._on_admitted(instance, [], wake_at)

    def _abandon_kv(self, i: int) -> FollowUps:
        """Request `i`'s prefill ended and its KV was given up on: the prefill instance frees it,
        and its flow, if still on the link, leaves with its unsent bytes."""
        prefill = self.prefill_by_id[self.log.prefill_instance[i]]
        self.prefix.on_sent(prefill, self.requests[i], SentKV(i, 0.0))
        transfer = self.transfers.pop(i, None)
        if transfer is None:  # drained already, or handed over inside the cluster
            return []
        site = self._site(i)
        drop_flow(site, i, transfer.dest, self.now)
        return self._link_follow_ups(site)

    def _start_transfer(
        self, i: int, dest: str, num_bytes: float, is_prefix_move: bool
    ) -> Transfer:
        """The transfer of flow `i` (just added to the link) and its unhidden latency, from the
        fair share it starts with."""
        site = self._site(i)
        link = site.link
        flow = link.flows[i]
        share = link.bytes_per_s / max(1, sum(f.sendable_bytes > 0 for f in link.flows.values()))
        rate = min(share, flow.cap_bytes_per_s, link.flow_cap_bytes_per_s)
        unhidden_s = site.latency.start(self.now, dest, num_bytes, rate)
        return Transfer(i, is_prefix_move, dest, unhidden_s)

    def _transfer_drained(self, flow_id: int) -> FollowUps:
        """Flow `flow_id` sent its last byte: it lands now, or after its unhidden round trips."""
        transfer = self.transfers.pop(flow_id)
        self._site(flow_id).latency.finish(self.now, transfer.dest)
        landed = TransferLanded(transfer.req_index, transfer.is_prefix_move)
        if transfer.unhidden_s > 0:
            return [(self.now + transfer.unhidden_s, landed)]
        return self.on_transfer_landed(landed)

    def on_bandwidth_change(self, event: BandwidthChange) -> FollowUps:
        site = self.sites[event.link]
        site.set_wire_bytes_per_s(self.now, event.bytes_per_s)
        wake: FollowUps = []
        if self.control is not None:  # the controller hears of it at once, as the router does
            self._control_decide()
            wake = self._controller_wake()
        follow_ups = self._next_bandwidth_change(site, event.step_index + 1)
        return follow_ups + self._link_follow_ups(site) + wake

    def _next_bandwidth_change(self, site: LinkSite, step_index: int) -> FollowUps:
        if step_index >= len(site.bandwidth):
            return []
        step = site.bandwidth[step_index]
        change = BandwidthChange(step_index, gbps_to_bytes_per_s(step.gbps), site.name)
        return [(step.at, change)]

    def on_decode_wake(self, event: DecodeWake) -> FollowUps:
        instance = self.decode_by_id[event.instance_id]
        if event.version != instance.version:
            return []
        finished, admitted, wake_at = instance.on_wake(self.now)
        for i in finished:
            self._finish(i)
        for i in instance.prefilled:  # a local prefill's token is the first
            self.log.first_token_at[i] = self.now
            if self.requests[i].num_output_tokens < 2:
                self.log.decode_started_at[i] = self.now
                self._finish(i)
        return self._on_admitted(instance, admitted, wake_at)

    # --- prefill --------------------------------------------------------------------------------

    def _enqueue_prefill(self, i: int) -> FollowUps:
        decision = self.decisions[i]
        assert decision is not None
        provider = self.provider_of[i]
        if provider:
            cluster = self.provider_sites[provider].instances
        else:
            cluster = self.clusters[decision.target]
        instance = self.prefill_of[i]
        if instance is None or instance.is_draining:  # not chosen, or draining since
            instance = self.prefix.candidate(decision.target, cluster, self.requests[i]).instance
            instance = instance or least_loaded(cluster)
        instance.enqueue(PrefillJob(i, self._num_computed(instance, i)))
        follow: FollowUps = [*deadline_follow_up(self.config, self.now, i)]
        return follow + ([] if instance.is_busy else self._start_prefill_step(instance))

    def _num_computed(self, instance: SimPrefill, i: int) -> int:
        """Tokens request `i` computes on `instance`, by what it caches now."""
        decision = self.decisions[i]
        assert decision is not None
        return self.prefix.num_computed_tokens(instance, self.requests[i], decision)

    def _start_prefill_step(self, instance: SimPrefill) -> FollowUps:
        if not instance.queue:
            return []
        duration_s = instance.start_step(
            self.now, lambda job: self._num_computed(instance, job.req_index)
        )
        follow: FollowUps = [(self.now + duration_s, PrefillStepDone(instance.instance_id))]
        for chunk in instance.step:
            if chunk.start_token == 0:
                follow += self._on_prefill_started(chunk.job, instance)
        return follow

    def _on_prefill_started(self, job: PrefillJob, instance: SimPrefill) -> FollowUps:
        i = job.req_index
        self.log.num_cached_tokens[i] = self.requests[i].num_prompt_tokens - job.num_tokens
        self.log.prefill_started_at[i] = self.now
        self.log.prefill_instance[i] = instance.instance_id
        if not self.log.is_offloaded[i]:
            return []
        kv_bytes = self._kv_transfer_bytes(i)
        held_bytes = kv_bytes / self.config.num_kv_layers
        lone_prefill_s = instance.latency.t_prefill_s(job.num_tokens)
        cap = (kv_bytes - held_bytes) / lone_prefill_s if lone_prefill_s > 0 else math.inf
        site = self._site(i)
        site.link.add(self.now, i, kv_bytes, held_bytes, cap)
        dest = self.decode[self.decode_of[i]].instance_id
        self.transfers[i] = self._start_transfer(i, dest, kv_bytes, False)
        return self._link_follow_ups(site)

    def _on_prefill_finished(self, i: int, instance: SimPrefill) -> FollowUps:
        self.log.prefill_done_at[i] = self.now
        decision = self.decisions[i]
        assert decision is not None
        sent = SentKV(i, self._kv_transfer_bytes(i))
        self.prefix.on_prefilled(decision.target, instance, self.requests[i], sent)
        if self.log.failure[i]:  # given up on while it prefilled
            return self._abandon_kv(i)
        if not self.log.is_offloaded[i]:
            return self._on_kv_ready(i)
        site = self._site(i)
        if site.link.release(self.now, i):
            return self._transfer_drained(i) + self._link_follow_ups(site)
        return self._link_follow_ups(site)

    # --- transfer and decode --------------------------------------------------------------------

    def _link_follow_ups(self, site: LinkSite) -> FollowUps:
        drain_at = site.link.next_drain_at()
        if drain_at is None:
            return []
        return [(max(drain_at, self.now), LinkDrain(site.link.version, site.name))]

    def _on_kv_ready(self, i: int) -> FollowUps:
        self.log.kv_ready_at[i] = self.now
        prefill = self.prefill_by_id[self.log.prefill_instance[i]]
        self.prefix.on_sent(prefill, self.requests[i], SentKV(i, 0.0))
        num_steps = self.requests[i].num_output_tokens - 1
        if num_steps < 1:  # the imported state's first token is the whole answer
            self.log.decode_started_at[i] = self.log.first_token_at[i] = self.now
            self._finish(i)
            return []
        instance = self.decode[self.decode_of[i]]
        context_tokens = self.requests[i].num_prompt_tokens
        admitted, wake_at = instance.add(self.now, i, num_steps, context_tokens)
        return self._on_admitted(instance, admitted, wake_at)

    def _on_admitted(
        self, instance: SimDecode, admitted: Sequence[int], wake_at: float | None
    ) -> FollowUps:
        """Requests that joined `instance`'s batch now: it has imported their state and streams
        each one's first token (sampled by its prefill) at once; their first decode step, the
        second token, ends one step of the new batch later. Then its next wake, if it moved."""
        for k in admitted:
            self.log.decode_started_at[k] = self.now
            if math.isnan(self.log.first_token_at[k]):  # else streamed by its local prefill
                self.log.first_token_at[k] = self.now
            self.log.second_token_at[k] = self.now + instance.step_s
        return (
            []
            if wake_at is None
            else [(wake_at, DecodeWake(instance.instance_id, instance.version))]
        )

    def _finish(self, i: int) -> None:
        self.log.finished_at[i] = self.now
        self._leave_decode(i)

    def _leave_decode(self, i: int) -> None:
        """Request `i` is done at its decode instance: finished, or ended with an error."""
        self.num_finished += 1
        k = self.decode_of[i]
        self.decode_tokens[k] -= self.requests[i].num_output_tokens
        self.decode_requests[k] -= 1
        if self.decode[k].is_draining and self.decode_requests[k] == 0:
            self._retire_decode(k)
