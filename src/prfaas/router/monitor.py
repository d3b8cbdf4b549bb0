"""The router's picture of the deployment: every instance's last `InstanceStats`, whether it
answers, and the policy views built from them (`ClusterView`s and the inter-cluster `LinkView`).

The router's poller (`poller.py`) calls `poll` for each instance's `/internal/stats`; an
instance is ready after one good answer and down after `max_misses` consecutive failed polls (or
at once when a dispatch to it cannot connect). Between polls the router adds what it decided
(`unpolled_tokens`, counted by the dispatcher's decision and settled by the next answered poll)
and what it dispatched itself (`dispatched`), so a burst of requests, routed in one turn of the
event loop before any job is posted, spreads over instances instead of piling on the one that
looked idle at the last poll. The monitor alone writes an instance's state: the dispatcher
and the controller tell it what they sent (`dispatched`), what failed (`mark_down`) and what is
being converted (`mark_converting`).
The link's utilization and retransmitted share are measured over the last `LINK_WINDOW_S` of
polls (growth of the kernel's bytes-sent and bytes-retransmitted counters; the share over every
sender's connections together, `LinkWindow.pooled`), so an idle link reads
idle, and neither one transfer's burst into an otherwise quiet link nor the losses of TCP
probing a shaped bottleneck for a moment read as a busy or congested link. The link's RTT is
TCP_INFO's where a connection has measured one, else the topology's `[link] rtt_ms`. With several
prefill providers each has a link view of its own: its instances' connections, its link's
capacity and RTT (`Topology.link_of`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import aiohttp

from prfaas.messages import InstanceStats
from prfaas.policy import ClusterView, InstanceLoad, LinkView
from prfaas.policy.transfer import payload_bandwidth_bytes_per_s
from prfaas.router.vllm_metrics import VLLM_ENGINE, stats_from_metrics
from prfaas.topology import ClusterConfig, InstanceConfig, Topology
from prfaas.transport.linkstats import LinkStats, LinkWindow

log = logging.getLogger(__name__)
_IDLE = LinkWindow(0.0)  # a destination polled once: nothing measured between polls yet
LINK_WINDOW_S = 2.0  # the link's utilization and loss are averaged over this much time


@dataclass
class InstanceState:
    config: InstanceConfig
    stats: InstanceStats | None = None
    is_ready: bool = False
    num_misses: int = 0
    pending_tokens: int = 0  # dispatched by this router and not yet finished there
    pending_requests: int = 0
    converting_to: str | None = None  # the router is changing its role: route nothing to it
    # predicted prefill seconds this router sent since the instance's last answered poll began:
    # work its polled queue cannot show yet (several providers price each queue per request)
    unpolled_prefill_s: float = 0.0
    # prompt tokens to compute this router sent since the last answered poll began, counted at
    # the decision: a burst of requests routed in one event-loop turn sees each other's work
    # before any of their jobs is posted (`pending_tokens` counts from the post on)
    unpolled_tokens: int = 0
    # per KV destination: egress and retransmitted share over the last LINK_WINDOW_S, and the
    # polls' times and link snapshots since the window's start
    windows: dict[str, LinkWindow] = field(default_factory=dict)
    past_links: dict[str, deque[tuple[float, LinkStats]]] = field(default_factory=dict)

    def update_egress(self, at_s: float) -> None:
        """Each destination's window from its newest poll at least `LINK_WINDOW_S` old (the
        oldest one while fewer seconds have been polled) to this one (`LinkWindow.between`)."""
        for link in self.links():
            past = self.past_links.setdefault(link.dest, deque())
            while len(past) > 1 and past[1][0] <= at_s - LINK_WINDOW_S:
                past.popleft()
            window = None if not past else LinkWindow.between(past[0][1], link, at_s - past[0][0])
            past.append((at_s, link))
            if window is not None:
                self.windows[link.dest] = window

    def links(self) -> list[LinkStats]:
        """The KV destinations its transport reported at the last poll."""
        return [] if self.stats is None else [LinkStats(**link) for link in self.stats.links]

    @property
    def role(self) -> str:
        """The role it serves now: as its stats report it (a convertible PD instance may have
        changed), the topology's before the first poll."""
        return self.config.role if self.stats is None else self.stats.role

    @property
    def takes_work(self) -> bool:
        """Ready, and neither draining for a role change nor being converted by the router."""
        draining = self.stats is not None and self.stats.draining_to is not None
        return self.is_ready and self.converting_to is None and not draining

    def load(self) -> InstanceLoad:
        s = self.stats
        polled_tokens = 0 if s is None else s.num_queued_tokens
        return InstanceLoad(
            instance_id=self.config.name,
            num_queued_tokens=max(polled_tokens + self.unpolled_tokens, self.pending_tokens),
            num_running_requests=max(
                0 if s is None else s.num_requests_running + s.num_requests_waiting,
                self.pending_requests,
            ),
            queued_prefill_s=(0.0 if s is None else s.queued_prefill_s) + self.unpolled_prefill_s,
        )


@dataclass
class ClusterMonitor:
    """Every instance's polled state; answers which are ready and what the policy should see."""

    topology: Topology
    client: aiohttp.ClientSession
    max_misses: int = 3
    states: dict[str, InstanceState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = {i.name: InstanceState(i) for i in self.topology.instances}
        # the PrfaaS -> PD link's capacity: the topology's, until an operator reports a change
        self.link_capacity_bytes_per_s = self.topology.link.bytes_per_s
        # several providers: each one's link (`Topology.link_of`), as the topology gives it
        self.provider_capacities = {
            p.name: self.topology.link_of(p.name).bytes_per_s for p in self.topology.providers
        }

    async def poll(self, state: InstanceState, timeout_s: float) -> bool:
        """Read the instance's stats; whether it answered."""
        is_vllm = state.config.engine == VLLM_ENGINE  # vLLM's own Prometheus exposition
        url = f"http://{state.config.http}/{'metrics' if is_vllm else 'internal/stats'}"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        unpolled_s = state.unpolled_prefill_s  # what this poll's answer will include
        unpolled_tokens = state.unpolled_tokens
        try:
            async with self.client.get(url, timeout=timeout) as reply:
                reply.raise_for_status()
                if is_vllm:
                    state.stats = stats_from_metrics(state.config, await reply.text())
                else:
                    state.stats = InstanceStats.from_dict(await reply.json())
                state.update_egress(time.monotonic())
                state.unpolled_prefill_s = max(0.0, state.unpolled_prefill_s - unpolled_s)
                state.unpolled_tokens = max(0, state.unpolled_tokens - unpolled_tokens)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            state.num_misses += 1
            if state.is_ready and state.num_misses >= self.max_misses:
                state.is_ready = False
                log.warning("instance %s is down: %s", state.config.name, exc)
            return False
        if not state.is_ready:
            log.info("instance %s is ready", state.config.name)
        state.is_ready, state.num_misses = True, 0
        return True

    def mark_down(self, name: str, reason: str) -> None:
        state = self.states[name]
        if state.is_ready:
            log.warning("instance %s is down: %s", name, reason)
        state.is_ready = False

    @contextlib.contextmanager
    def dispatched(self, name: str, num_tokens: int) -> Iterator[None]:
        """Count one request of `num_tokens` prompt tokens this router sent to `name` as
        pending there until the block ends (its answer came, or the router stopped waiting)."""
        state = self.states[name]
        state.pending_requests += 1
        state.pending_tokens += num_tokens
        try:
            yield
        finally:
            state.pending_requests -= 1
            state.pending_tokens -= num_tokens

    def mark_converting(self, name: str, role: str | None) -> None:
        """The router is changing `name` to `role` (route nothing to it); None: done or given up."""
        self.states[name].converting_to = role

    # ---- views -----------------------------------------------------------------------------
    def ready(self, cluster: ClusterConfig, role: str) -> list[InstanceState]:
        """The instances of `cluster` serving `role` now that can take work, in topology order."""
        states = (self.states[i.name] for i in cluster.instances)
        return [s for s in states if s.role == role and s.takes_work]

    def in_role(self, cluster: ClusterConfig, role: str) -> list[InstanceState]:
        """The instances of `cluster` in `role` (a converting one counts in its new role)."""
        states = (self.states[i.name] for i in cluster.instances)
        return [s for s in states if (s.converting_to or s.role) == role]

    def is_ready(self) -> bool:
        """Every cluster has a ready instance of each role it has (a PD cluster with prefill and
        decode instances needs one of each; a PrfaaS cluster a prefill instance)."""
        return all(
            bool(self.ready(c, role))
            for c in self.topology.clusters
            for role in {i.role for i in c.instances}
        )

    def cluster_view(self, cluster: ClusterConfig | None) -> ClusterView | None:
        if cluster is None:
            return None
        return ClusterView(
            cluster.name,
            tuple(s.load() for s in self.ready(cluster, "prefill")),
            tuple(s.load() for s in self.ready(cluster, "decode")),
        )

    def link_view(self, prfaas: ClusterConfig | None, pd: ClusterConfig | None) -> LinkView | None:
        """The PrfaaS -> PD link as the PrfaaS prefill instances' transports measured it; an
        idle link of the known capacity while none has sent anything yet (None: no ready PrfaaS
        instance, so no link to judge). Its capacity is the payload the wire carries (the wire
        rate x the link's `payload_efficiency`), as the simulator's link view has it: the
        backlog is payload bytes, so it drains at that rate."""
        if prfaas is None or pd is None:
            return None
        path = self.topology.link_path_of(prfaas.name)
        capacity = payload_bandwidth_bytes_per_s(self.link_capacity_of(prfaas), path)
        senders = self.ready(prfaas, "prefill")
        connections = self.link_connections(prfaas, pd)
        windows = [state.windows.get(link.dest, _IDLE) for state, link in connections]
        views = [
            link.to_link_view(capacity, window)
            for (_, link), window in zip(connections, windows, strict=True)
        ]
        rtt_s = path.rtt_s
        if senders and not views:
            return LinkView(capacity, utilization=0.0, backlog_bytes=0.0, rtt_s=rtt_s)
        retransmit_rate = LinkWindow.pooled(windows).retransmit_rate
        return with_known_rtt(combine_link_views(views, capacity, retransmit_rate), rtt_s)

    def link_capacity_of(self, prfaas: ClusterConfig) -> float:
        """The capacity of `prfaas`'s link to the PD cluster, bytes/s: with one provider the
        topology's `[link]` or the last one reported (`link_capacity_bytes_per_s`); with
        several, its own link's."""
        if len(self.provider_capacities) > 1:
            return self.provider_capacities[prfaas.name]
        return self.link_capacity_bytes_per_s

    def link_connections(
        self, prfaas: ClusterConfig, pd: ClusterConfig
    ) -> list[tuple[InstanceState, LinkStats]]:
        """Each ready PrfaaS prefill instance's measured connections to the PD cluster's KV
        receivers, as its last poll reported them (empty: nothing sent over the link yet)."""
        dests = {i.kv for i in pd.instances if i.kv is not None}
        return [
            (state, link)
            for state in self.ready(prfaas, "prefill")
            for link in state.links()
            if link.dest in dests
        ]


def with_known_rtt(view: LinkView | None, topology_rtt_s: float) -> LinkView | None:
    """`view` with the topology's `[link] rtt_ms` where TCP_INFO has measured no RTT yet (0)."""
    if view is None or view.rtt_s > 0:
        return view
    return replace(view, rtt_s=topology_rtt_s)


def combine_link_views(
    views: list[LinkView], capacity_bytes_per_s: float, retransmit_rate: float
) -> LinkView | None:
    """Several senders share one link: backlogs and rates add up, RTT takes the worst, and the
    retransmitted share is the link's, which the caller measured on all of them together (the
    worst of the parts would read one connection's single lost segment as the link's loss)."""
    if not views:
        return None
    return LinkView(
        bandwidth_bytes_per_s=capacity_bytes_per_s,
        utilization=min(1.0, sum(v.utilization for v in views)),
        backlog_bytes=sum(v.backlog_bytes for v in views),
        rtt_s=max(v.rtt_s for v in views),
        retransmit_rate=retransmit_rate,
    )
