"""The simulator's routing: the views the policy sees, and the decision it takes per request.

One PrfaaS cluster: `RoutePolicy.choose` between it and PD-P on the prefix model's candidates, the
link view and both cluster views (`prfaas.sim.views`), the controller told the routed length.
Several providers: the route rule per provider, then the cheapest meeting the TTFT target
(`prfaas.sim.providers.route_among`). Either way the decode instance is picked here, and the
request's log row starts.
"""

from __future__ import annotations

from prfaas.policy.pick import pick_instance
from prfaas.policy.route import RouteDecision, RouteTarget
from prfaas.policy.views import ClusterView, InstanceLoad, LinkView
from prfaas.sim.config import SimRequest
from prfaas.sim.prefix import Candidate, place
from prfaas.sim.providers import RouteQuery, local_option, route_among
from prfaas.sim.state import SimState
from prfaas.sim.views import DecisionRecord, cluster_view, decode_loads, link_view


class RouteHandlers(SimState):
    """Routing decisions on a run's state (mixed into `prfaas.sim.handlers.SimHandlers`)."""

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

    def _kv_transfer_bytes(self, i: int) -> float:
        """KV crossing the link: the whole request's, minus the prefix already cached at PD."""
        kv = self.config.kv_size
        total = kv.kv_bytes(self.requests[i].num_prompt_tokens)
        cached_pd = self._candidate(RouteTarget.PD_PREFILL, self.requests[i]).num_cached_tokens
        if cached_pd == 0:
            return float(total)
        return float(total - kv.kv_bytes(cached_pd) + kv.kv_bytes(0))
