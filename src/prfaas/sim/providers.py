"""Several prefill providers in one run: each provider's instances, link and routing policy, the
route of one request among them, and their share of the run's metrics.

A long request is routed with the same policy code the live router runs. The route rule
(`RoutePolicy.choose`) is evaluated once per provider, with that provider's cluster view and link
view (and, for the offload-delay rule, its own prefill curve). If no provider's rule says PrfaaS,
the request prefills locally. Otherwise `prfaas.policy.providers.choose_provider` picks among the
providers that said PrfaaS: the cheapest whose predicted TTFT meets the run's target, else local
prefill. A provider's offer is built as the live router builds it: the queued prefill seconds
of the instance the request would be queued on there, its link's wire capacity with the KV already
queued on it (the link view's drain time, as the route rule reads it; the request's own bytes
then cross at the link's goodput), its path, its prices and its prefill curve; the local option
is the PD-P cluster's. Like the router's, the prediction takes the link's connections as warm:
a transfer on a new or idle connection lands its handshake and slow start later than predicted.

Pure bookkeeping over the simulator's objects: the handlers (`prfaas.sim.handlers`) drive the
events, this module decides and reports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from prfaas.errors import UserError
from prfaas.policy.pick import pick_instance
from prfaas.policy.providers import (
    BYTES_PER_GB,
    LOCAL,
    LocalOption,
    ProviderChoice,
    ProviderOffer,
    choose_provider,
    compute_usd,
)
from prfaas.policy.route import (
    RouteDecision,
    RoutePolicy,
    RoutePolicyConfig,
    RouteTarget,
    make_route_policy,
)
from prfaas.policy.throughput import LatencyCurve
from prfaas.policy.views import ClusterView, LinkView
from prfaas.sim.config import DeploymentSpec, ProviderSpec, SimConfig, SimRequest
from prfaas.sim.cost import PrefillLatency
from prfaas.sim.instances import SimPrefill, prefill_cluster
from prfaas.sim.link import LinkSite
from prfaas.sim.metrics import NAN, RequestLog, distribution, waited_s
from prfaas.sim.views import cluster_view, link_view
from prfaas.types import DeploymentKind

_PROVIDER_STREAM = 7_919  # seed offset between providers' jitter RNGs


@dataclass(frozen=True, slots=True)
class ProviderEvaluation:
    """The route rule's answer for one provider, and the views it was given."""

    name: str  # the provider
    link: LinkView  # its link, as the rule saw it
    cluster: ClusterView  # its prefill instances' loads
    decision: RouteDecision  # PRFAAS: this provider may take the request


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """One request as the routing among providers sees it."""

    req_index: int  # position of the request in the workload
    at_s: float  # simulated time of the decision, seconds
    num_prompt_tokens: int
    kv_bytes: float  # KV and state the chosen provider would send to the local cluster
    ttft_target_s: float  # the TTFT a provider must be predicted to meet


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """Where one request prefills among several providers, and every input of the decision: the
    hook for parity checks against a live router (`choose_provider(offers, local, ...)` on a
    record gives its `choice` again)."""

    query: RouteQuery
    pd: ClusterView  # the PD-P cluster's loads
    local: LocalOption  # the PD-P cluster as the fallback
    evaluations: tuple[ProviderEvaluation, ...]  # the route rule, one per provider, by name
    offers: tuple[ProviderOffer, ...]  # the providers whose rule said PrfaaS, with a live link
    choice: ProviderChoice | None  # `choose_provider`'s answer; None without offers
    decision: RouteDecision  # the final decision (PRFAAS: to `provider`)
    provider: str  # the chosen provider's name; "" for local prefill

    @property
    def rule(self) -> str:
        """The deciding rule and target, as `route_reasons` counts them."""
        target = self.provider or str(RouteTarget.PD_PREFILL)
        return f"{self.decision.reason.split(':')[0]} -> {target}"


class ProviderSite:
    """One provider during a run: its spec, prefill instances, link and routing policy."""

    def __init__(
        self,
        spec: ProviderSpec,
        route_config: RoutePolicyConfig | None,
        chunk_tokens: int | None,
        rng: random.Random,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.instances = prefill_cluster(spec.name, spec.cluster, chunk_tokens)
        self.link = LinkSite(spec.name, spec.bandwidth, spec.path, rng)
        self.policy: RoutePolicy = make_route_policy(
            DeploymentKind.PRFAAS, _own_costs(route_config, spec)
        )

    def evaluate(
        self, num_prompt_tokens: int, pd: ClusterView, now: float, window_s: float
    ) -> ProviderEvaluation:
        """The route rule for this provider alone (no cached prefix: refused with providers)."""
        link = link_view(self.link.link, now, window_s, self.spec.path.rtt_s)
        cluster = cluster_view(self.name, self.instances, now)
        decision = self.policy.choose(num_prompt_tokens, 0, 0, link, cluster, pd)
        return ProviderEvaluation(self.name, link, cluster, decision)

    def offer(self, evaluation: ProviderEvaluation) -> ProviderOffer | None:
        """This provider's offer for the request; None while its link carries nothing."""
        link = self.link
        if link.wire_bytes_per_s <= 0:
            return None
        return ProviderOffer(
            name=self.name,
            price_per_gpu_hour=self.spec.price_per_gpu_hour,
            gpus_per_instance=self.spec.gpus_per_instance,
            t_prefill_s=latency_curve(self.spec.cluster.latency),
            queue_s=picked_queue_s(evaluation.cluster),
            link_bytes_per_s=link.wire_bytes_per_s,
            path=self.spec.path,
            price_per_gb=self.spec.price_per_gb,
            link_backlog_s=evaluation.link.drain_s(),
        )


def picked_queue_s(cluster: ClusterView) -> float:
    """Queued prefill seconds on the instance a request would be queued on (`pick_instance`,
    as the handlers enqueue it)."""
    loads = cluster.prefill_instances
    return loads[pick_instance(loads)].queued_prefill_s


def latency_curve(latency: PrefillLatency) -> LatencyCurve:
    """A simulator prefill latency as the policy's curve (called with whole token counts)."""

    def curve(num_tokens: float) -> float:
        return latency.t_prefill_s(int(num_tokens))

    return curve


def _own_costs(config: RoutePolicyConfig | None, spec: ProviderSpec) -> RoutePolicyConfig | None:
    """The deployment's route config with this provider's prefill curve in its offload-delay
    costs (the rule compares this provider's path with the local one)."""
    if config is None or config.costs is None:
        return config
    costs = replace(config.costs, t_prefill_prfaas_s=latency_curve(spec.cluster.latency))
    return replace(config, costs=costs)


def check_provider_requests(requests: Sequence[SimRequest]) -> None:
    """Several providers: no prefix caching (its moves between clusters are not simulated)."""
    if any(r.block_hashes for r in requests):
        raise UserError(
            "prefix caching (requests with block hashes) is not simulated with several providers"
        )


def make_sites(config: SimConfig, jitter_seed: int) -> dict[str, ProviderSite]:
    """One site per provider, in order of name; each link draws its jitter from its own RNG,
    seeded `jitter_seed` plus an offset per provider."""
    dep = config.deployment
    return {
        spec.name: ProviderSite(
            spec,
            dep.route_config,
            config.chunk_tokens,
            random.Random(jitter_seed + _PROVIDER_STREAM * (k + 1)),
        )
        for k, spec in enumerate(sorted(dep.providers, key=lambda p: p.name))
    }


def local_option(dep: DeploymentSpec, pd: ClusterView) -> LocalOption:
    """The PD-P cluster as `choose_provider`'s fallback."""
    return LocalOption(
        price_per_gpu_hour=dep.pd_price_per_gpu_hour,
        gpus_per_instance=dep.pd_gpus_per_instance,
        t_prefill_s=latency_curve(dep.pd_prefill.latency),
        queue_s=picked_queue_s(pd),
    )


def route_among(
    sites: Sequence[ProviderSite],
    local: LocalOption,
    pd: ClusterView,
    query: RouteQuery,
    window_s: float,
) -> ProviderRoute:
    """The route rule per provider (link views averaged over `window_s`), then
    `choose_provider` among the providers whose rule said PrfaaS."""
    now = query.at_s
    evaluations = tuple(s.evaluate(query.num_prompt_tokens, pd, now, window_s) for s in sites)
    offers = tuple(
        offer
        for site, e in zip(sites, evaluations, strict=True)
        if e.decision.target is RouteTarget.PRFAAS and (offer := site.offer(e)) is not None
    )
    route = ProviderRoute(query, pd, local, evaluations, offers, None, _no_offer(evaluations), "")
    if not offers:
        return route
    num_tokens = next(
        e.decision.num_incremental_tokens for e in evaluations if e.name == offers[0].name
    )
    choice = choose_provider(offers, local, num_tokens, query.kv_bytes, query.ttft_target_s)
    # the reason starts with the choice's and keeps the rule's, as the router's does
    via_name = offers[0].name if choice.target == LOCAL else choice.target
    via = next(e for e in evaluations if e.name == via_name)
    reason = f"{choice.reason}; {via.decision.reason}"
    if choice.target == LOCAL:
        total = query.num_prompt_tokens
        local_decision = RouteDecision(RouteTarget.PD_PREFILL, total, 0, reason)
        return replace(route, choice=choice, decision=local_decision)
    decision = replace(via.decision, reason=reason)
    return replace(route, choice=choice, decision=decision, provider=choice.target)


def _no_offer(evaluations: Sequence[ProviderEvaluation]) -> RouteDecision:
    """The decision without offers: the first local one (the same for every provider when the
    threshold decided), else local prefill, when a dead link was all that said PrfaaS."""
    for e in evaluations:
        if e.decision.target is RouteTarget.PD_PREFILL:
            return e.decision
    total = evaluations[0].decision.num_incremental_tokens
    total += evaluations[0].decision.num_prefix_hit_tokens
    return RouteDecision(RouteTarget.PD_PREFILL, total, 0, "no-link: every provider's link is down")


# --- metrics --------------------------------------------------------------------------------


def _ttft_s(log: RequestLog, i: int, end_s: float) -> float:
    return waited_s(log.first_token_at[i], log.arrived_at[i], end_s)


def _met(log: RequestLog, i: int, target_s: float) -> bool:
    """Request `i` had its first token within `target_s` of arriving."""
    first = log.first_token_at[i]
    return not math.isnan(first) and first - log.arrived_at[i] <= target_s


def _share(part: int, whole: int) -> float:
    return part / whole if whole else NAN


def _row(
    log: RequestLog,
    requests: Sequence[int],
    num_arrived: int,
    end_s: float,
    target_s: float,
    compute: float,
    transfer: float,
) -> dict[str, Any]:
    ttft = distribution([_ttft_s(log, i, end_s) for i in requests])
    return {
        "num_requests": len(requests),
        "share": _share(len(requests), num_arrived),
        "compute_usd": compute,
        "transfer_usd": transfer,
        "ttft_s": {q: ttft[q] for q in ("p50", "p90", "p99")},
        "ttft_target_met_share": _share(
            sum(_met(log, i, target_s) for i in requests), len(requests)
        ),
    }


def providers_summary(
    dep: DeploymentSpec,
    sites: Sequence[ProviderSite],
    pd_prefill: Sequence[SimPrefill],
    log: RequestLog,
    provider_of: Sequence[str],
    end_s: float,
    target_s: float,
) -> dict[str, Any]:
    """Per provider (and "local"): requests and their share of all (a provider's also of the
    offloaded ones), compute and transfer USD, TTFT p50/p90/p99 of its requests and the share of
    them within the target; the run's totals.

    Compute is the prefill seconds its instances ran x GPUs per instance x price per GPU-hour
    / 3600 (`prfaas.policy.providers.compute_usd`); transfer is the payload bytes its link
    carried / 1e9 x its price per GB. Local prefill is priced at the PD price."""
    arrived = [i for i in range(log.num_requests) if not math.isnan(log.arrived_at[i])]
    num_offloaded = sum(1 for i in arrived if provider_of[i])
    rows: dict[str, dict[str, Any]] = {}
    for site in sites:
        spec = site.spec
        busy_s = sum(p.busy_s for p in site.instances)
        sent_bytes = site.link.link.total_sent_bytes
        rows[site.name] = _row(
            log,
            [i for i in arrived if provider_of[i] == site.name],
            len(arrived),
            end_s,
            target_s,
            compute_usd(busy_s, spec.gpus_per_instance, spec.price_per_gpu_hour),
            sent_bytes / BYTES_PER_GB * spec.price_per_gb,
        )
        rows[site.name].update(
            offload_share=_share(rows[site.name]["num_requests"], num_offloaded),
            egress_gbps=sent_bytes * 8 / 1e9 / end_s if end_s > 0 else 0.0,
            hardware=spec.cluster.hardware,
            num_instances=spec.cluster.num_instances,
        )
    local_busy_s = sum(p.busy_s for p in pd_prefill)
    rows[LOCAL] = _row(
        log,
        [i for i in arrived if not provider_of[i]],
        len(arrived),
        end_s,
        target_s,
        compute_usd(local_busy_s, dep.pd_gpus_per_instance, dep.pd_price_per_gpu_hour),
        0.0,
    )
    met = sum(_met(log, i, target_s) for i in arrived)
    return {
        "providers": rows,
        "ttft_target_s": target_s,
        "ttft_target_met_share": _share(met, len(arrived)),
        "compute_usd": sum(r["compute_usd"] for r in rows.values()),
        "transfer_usd": sum(r["transfer_usd"] for r in rows.values()),
    }
