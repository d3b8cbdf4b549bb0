"""One simulator run's state: its instances, links, prefix model, request log and event queue.

`SimState` is built from a `SimConfig` and the requests, sorted by arrival; the handlers advance
it, each kind in its own class: routing (`prfaas.sim.route_handlers`), the long-timescale
controller (`prfaas.sim.control_handlers`), and the requests' way through prefill, the link and
decode (`prfaas.sim.handlers`, whose `SimHandlers` joins them).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.policy.route import (
    RouteDecision,
    RoutePolicy,
    RouteState,
    RouteTarget,
    make_route_policy,
)
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.control import SimControl
from prfaas.sim.events import Event, EventQueue
from prfaas.sim.instances import SimDecode, SimPrefill, prefill_cluster
from prfaas.sim.link import LinkSite, SharedLink
from prfaas.sim.metrics import RequestLog
from prfaas.sim.prefix import make_prefix_model
from prfaas.sim.providers import ProviderRoute, check_provider_requests, make_sites
from prfaas.sim.views import DecisionRecord

FollowUps = list[tuple[float, Event]]
_JITTER_STREAM = 3_000_017  # offset of the jitter RNG's seed from the run's link seed


@dataclass(frozen=True, slots=True)
class Transfer:
    """A flow on the shared link and what its completion unblocks."""

    req_index: int  # the request the bytes belong to
    is_prefix_move: bool  # True: a cached prefix moved before prefill; False: the request's KV
    dest: str = ""  # where the bytes go: a decode instance, or the cluster a prefix moves to
    unhidden_s: float = 0.0  # round trips after the last byte (prfaas.sim.link.PathLatency)


class SimState:
    """State of one run of one deployment over one workload; the handlers advance it."""

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
