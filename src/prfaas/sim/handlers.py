"""The simulator's state and its per-event handlers: one `on_<event>` method per event type.

Each handler updates the instances, the shared link and the request log at the current simulated
time and returns its follow-up events; the loop in `prfaas.sim.simulator` schedules them. A request
goes: arrival -> route -> prefill queue -> prefill steps -> (KV over the shared link | intra-cluster
handover, taken as instantaneous) -> decode slot (the first token streams) -> decode steps ->
finished. Every routing decision
comes from `prfaas.policy` (`RoutePolicy.choose`, `pick_instance`, `pick_cached_instance`) on views
built by `prfaas.sim.views`; what is cached where, and which prefill instance takes a request, is
the prefix model's (`prfaas.sim.prefix`: one block set per cluster, or every instance's own pool).

With `config.controller`, a `ControllerTick` every period asks the long-timescale controller
(`prfaas.sim.control`) for decisions and carries them out: a new t replaces the routing policy's; a
role change drains PD instances (no new work, finish what they hold), then retires each and starts
an instance of the other role in its place. PrfaaS instances keep their role.

With several prefill providers (`DeploymentSpec.providers`), each has its own instances and its
own link (`prfaas.sim.link.LinkSite`, one max-min fair `SharedLink` each); a request's transfer
crosses its provider's link, and `prfaas.sim.providers` routes it among them. A run with one
PrfaaS cluster has one link, named "".

With `config.transfer_deadline_s`, a request whose KV has not landed by its deadline is given up
on, and its decode instance recomputes it or it fails (`prfaas.sim.deadline`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prfaas.errors import UserError
from prfaas.policy.controller import ControlDecision, PdRole, RoleChange
from prfaas.policy.pick import pick_instance
from prfaas.policy.route import (
    RouteDecision,
    RoutePolicy,
    RouteState,
    RouteTarget,
    make_route_policy,
)
from prfaas.policy.views import ClusterView, InstanceLoad, LinkView
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.control import SimControl, TickState
from prfaas.sim.deadline import deadline_follow_up, drop_flow, local_prefill
from prfaas.sim.events import (
    Arrival,
    BandwidthChange,
    ControllerTick,
    ControllerWake,
    DecodeWake,
    Event,
    EventQueue,
    LinkDrain,
    PrefillStepDone,
    TransferDeadline,
    TransferLanded,
)
from prfaas.sim.instances import PrefillJob, SimDecode, SimPrefill, prefill_cluster
from prfaas.sim.link import LinkSite, SharedLink, gbps_to_bytes_per_s
from prfaas.sim.metrics import RequestLog
from prfaas.sim.prefix import Candidate, SentKV, least_loaded, make_prefix_model, place
from prfaas.sim.providers import (
    ProviderRoute,
    RouteQuery,
    check_provider_requests,
    local_option,
    make_sites,
    route_among,
)
from prfaas.sim.views import DecisionRecord, cluster_view, decode_loads, link_view
from prfaas.types import RECOMPUTE

FollowUps = list[tuple[float, Event]]
_JITTER_STREAM = 3_000_017  # offset of the jitter RNG's seed from the run's link seed


@dataclass(frozen=True, slots=True)
class Transfer:
    """A flow on the shared link and what its completion unblocks."""

    req_index: int  # the request the bytes belong to
    is_prefix_move: bool  # True: a cached prefix moved before prefill; False: the request's KV
    dest: str = ""  # where the bytes go: a decode instance, or the cluster a prefix moves to
    unhidden_s: float = 0.0  # round trips after the last byte (prfaas.sim.link.PathLatency)


class SimHandlers:
    """State of one run of one deployment over one workload, and the handlers that advance it."""

    def __init__(self, config: SimConfig, requests: Sequence[SimRequest]) -> None:
        if any(b.arrived_at < a.arrived_at for a, b in itertools.pairwise(requests)):
            raise UserError("requests must be sorted by arrival time")
        dep = config.deployment
        self.config = config
        self.requests = requests
        self.policy: RoutePolicy = make_route_policy(dep.kind, dep.route_config)
        self.clusters: dict[RouteTarget, list[SimPrefill]] = {
            RouteTarget.PRFAAS: prefill_cluster("prfaas", dep.prfaas, config.chunk_tokens),
            RouteTarget.PD_PREFILL: prefill_cluster("pd-p", dep.pd_prefill, config.chunk_tokens),
        }
        jitter_seed = config.link_seed + _JITTER_STREAM
        self.provider_sites = make_sites(config, jitter_seed) if config.has_providers else {}
        self.sites: dict[str, LinkSite] = {
            name: site.link for name, site in self.provider_sites.items()
        } or {"": LinkSite("", config.bandwidth, config.path, random.Random(jitter_seed))}
        if self.provider_sites:
            check_provider_requests(requests)
            self.clusters[RouteTarget.PRFAAS] = [
                p for site in self.provider_sites.values() for p in site.instances
            ]
        self.decode = [
            SimDecode(f"pd-d-{i}", dep.max_batch_size, dep.decode_step)
            for i in range(dep.num_decode_instances)
        ]
        self.prefill_by_id = {p.instance_id: p for ps in self.clusters.values() for p in ps}
        self.decode_by_id = {d.instance_id: d for d in self.decode}
        self.decode_tokens = [0] * len(self.decode)  # output tokens assigned and not finished
        self.prefix = make_prefix_model(config)
        self.prefill_of: list[SimPrefill | None] = [None] * len(requests)  # chosen at routing
        self.moved_tokens = [0] * len(requests)  # a cached prefix moved before its prefill
        self.transfers: dict[int, Transfer] = {}
        self.decisions: list[RouteDecision | None] = [None] * len(requests)
        self.decode_of = [0] * len(requests)
        self.log = RequestLog(len(requests))
        self.queue = EventQueue()
        self.now = 0.0
        self.num_finished = 0  # requests done: finished, or ended with an error
        self.num_events = 0
        self.route_reasons: dict[str, int] = {}  # "<policy rule> -> <target>" -> decisions
        self.decision_log: list[DecisionRecord] = []  # filled when config.record_decisions
        self.route_state = RouteState() if config.route_hysteresis else None
        self.control = None if config.tick_period_s is None else SimControl(config)
        self.num_route_flips = 0  # consecutive requests with l > t routed to different targets
        self._last_long_target: RouteTarget | None = None
        self.pd_prefill_all = list(self.clusters[RouteTarget.PD_PREFILL])  # retired ones too
        self.decode_requests = [0] * len(self.decode)  # requests assigned and not finished
        self.provider_of = [""] * len(requests)  # the provider that prefills it; "" otherwise
        self.provider_routes: list[ProviderRoute] = []  # filled when config.record_decisions

    @property
    def link(self) -> SharedLink:
        """The run's one inter-cluster link (several providers have one each: `sites`)."""
        if self.provider_sites:
            raise RuntimeError("a run with several providers has one link each: use .sites")
        return self.sites[""].link

    @property
    def total_sent_bytes(self) -> float:
        """KV payload bytes every link of the run carried."""
        return sum(site.link.total_sent_bytes for site in self.sites.values())

    def _site(self, i: int) -> LinkSite:
        """The link request `i`'s bytes cross: its provider's, or the run's one link."""
        return self.sites[self.provider_of[i]]

    @property
    def arrivals_end_s(self) -> float:
        return self.requests[-1].arrived_at if self.requests else 0.0

    # --- handlers -------------------------------------------------------------------------------

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

    # --- routing: views in, the policy's decision out ------------------------------------------

    def route(self, i: int, req: SimRequest) -> RouteDecision:
        if self.provider_sites:
            decision = self._route_to_provider(i, req)
        else:
            decision = self._route_one_cluster(i, req)
        self.decode_of[i] = self._pick_decode()
        self.decode_tokens[self.decode_of[i]] += req.num_output_tokens
        self.decode_requests[self.decode_of[i]] += 1
        log = self.log
        log.arrived_at[i] = req.arrived_at
        log.is_offloaded[i] = decision.target is RouteTarget.PRFAAS
        log.num_prompt_tokens[i] = req.num_prompt_tokens
        log.num_cached_tokens[i] = decision.num_prefix_hit_tokens
        log.num_output_tokens[i] = req.num_output_tokens
        log.decode_instance[i] = self.decode[self.decode_of[i]].instance_id
        return decision

    def _route_to_provider(self, i: int, req: SimRequest) -> RouteDecision:
        """The route rule per provider, then the cheapest provider meeting the TTFT target
        (`prfaas.sim.providers.route_among`)."""
        pd = self.cluster_view(RouteTarget.PD_PREFILL)
        target_s = self.config.ttft_target_s
        assert target_s is not None  # SimConfig requires it with providers
        query = RouteQuery(i, self.now, req.num_prompt_tokens, self._kv_transfer_bytes(i), target_s)
        local = local_option(self.config.deployment, pd)
        sites = list(self.provider_sites.values())
        route = route_among(sites, local, pd, query, self.config.link_window_s)
        self.provider_of[i] = route.provider
        if self.config.record_decisions:
            self.provider_routes.append(route)
        self.route_reasons[route.rule] = self.route_reasons.get(route.rule, 0) + 1
        return route.decision

    def _route_one_cluster(self, i: int, req: SimRequest) -> RouteDecision:
        """The route rule between the one PrfaaS cluster and PD-P."""
        pd_best = self._candidate(RouteTarget.PD_PREFILL, req)
        prfaas_best = self._candidate(RouteTarget.PRFAAS, req)
        cached_pd, cached_prfaas = pd_best.num_cached_tokens, prfaas_best.num_cached_tokens
        link = self.link_view()
        prfaas = self.cluster_view(RouteTarget.PRFAAS)
        pd = self.cluster_view(RouteTarget.PD_PREFILL)
        total = req.num_prompt_tokens
        decision = self.policy.choose(
            total, cached_pd, cached_prfaas, link, prfaas, pd, state=self.route_state
        )
        self.prefill_of[i], self.moved_tokens[i] = place(
            self.prefix, decision, pd_best, prfaas_best
        )
        if self.control is not None:
            best_prefix = max(cached_pd, cached_prfaas)
            self.control.observe(self.now, total - best_prefix, req.num_output_tokens)
        if self.config.record_decisions:
            record = DecisionRecord(
                i, self.now, total, cached_pd, cached_prfaas, link, prfaas, pd, decision
            )
            self.decision_log.append(record)
        self._count_flip(decision, total - max(cached_pd, cached_prfaas))
        rule = f"{decision.reason.split(':')[0]} -> {decision.target}"
        self.route_reasons[rule] = self.route_reasons.get(rule, 0) + 1
        return decision

    def _count_flip(self, decision: RouteDecision, num_incremental_tokens: int) -> None:
        """Count a flip when a request the threshold would offload goes elsewhere than the
        previous such request (the offload-delay rule switching on or off)."""
        config = self.policy.config
        if config is None or num_incremental_tokens <= config.threshold_tokens:
            return
        if self._last_long_target not in (None, decision.target):
            self.num_route_flips += 1
        self._last_long_target = decision.target

    def link_view(self) -> LinkView:
        """The shared link as the policy sees it now (see `prfaas.sim.views.link_view`)."""
        config = self.config
        return link_view(self.link, self.now, config.link_window_s, config.path.rtt_s)

    def cluster_view(self, target: RouteTarget) -> ClusterView:
        """Prefill loads of one cluster: queued tokens and seconds of queued prefill work."""
        return cluster_view(str(target), self.clusters[target], self.now)

    def decode_loads(self) -> list[InstanceLoad]:
        """Decode load = output tokens assigned to the instance and not yet generated."""
        return decode_loads(self.decode, self.decode_tokens)

    def _pick_decode(self) -> int:
        """Position in `self.decode` of the least-loaded decode instance taking new work."""
        active = [k for k, d in enumerate(self.decode) if d.takes_work]
        loads = self.decode_loads()
        return active[pick_instance([loads[k] for k in active])]

    def _candidate(self, target: RouteTarget, req: SimRequest) -> Candidate:
        """Where `req` would prefill in a cluster, and the cached prefix the route rule counts."""
        return self.prefix.candidate(target, self.clusters[target], req)

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

    def _kv_transfer_bytes(self, i: int) -> float:
        """KV crossing the link: the whole request's, minus the prefix already cached at PD."""
        kv = self.config.kv_size
        total = kv.kv_bytes(self.requests[i].num_prompt_tokens)
        cached_pd = self._candidate(RouteTarget.PD_PREFILL, self.requests[i]).num_cached_tokens
        if cached_pd == 0:
            return float(total)
        return float(total - kv.kv_bytes(cached_pd) + kv.kv_bytes(0))

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

    # --- the long-timescale controller ----------------------------------------------------------

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
