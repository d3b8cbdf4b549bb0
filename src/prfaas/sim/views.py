"""The views the simulator builds for `prfaas.policy`, and the record of each routing decision.

The policy never reads a simulator object: these functions copy plain numbers out of the shared
link and the prefill and decode instances into `prfaas.policy.views` snapshots.
`DecisionRecord` keeps those snapshots next to the decision they produced, for parity checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prfaas.policy.route import RouteDecision
from prfaas.policy.views import ClusterView, InstanceLoad, LinkView
from prfaas.sim.instances import SimDecode, SimPrefill
from prfaas.sim.link import SharedLink


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One routing decision and every input the policy saw. Replaying the inputs through
    `RoutePolicy.choose` (the simulator's, or a live router's) must give `decision` again: the hook
    for router/simulator parity checks."""

    req_index: int  # position of the request in the workload
    at_s: float  # simulated time of the decision, seconds
    num_prompt_tokens: int
    num_cached_tokens_pd: int  # longest cached prefix in the PD cluster
    num_cached_tokens_prfaas: int  # longest cached prefix in the PrfaaS cluster
    link: LinkView
    prfaas: ClusterView
    pd: ClusterView
    decision: RouteDecision


def link_view(link: SharedLink, now: float, window_s: float, rtt_s: float = 0.0) -> LinkView:
    """What a rate meter and the sender's queue report: utilization over the last `window_s`
    (capped at 1 right after a capacity drop), the KV bytes not delivered, and the path's base
    RTT (what TCP_INFO's smoothed RTT reads on a quiet path)."""
    capacity = link.bytes_per_s
    rate = link.mean_rate_bytes_per_s(now, window_s)
    utilization = min(1.0, rate / capacity) if capacity > 0 else 1.0
    return LinkView(capacity, utilization, link.backlog_bytes(now), rtt_s=rtt_s)


def cluster_view(name: str, instances: Sequence[SimPrefill], now: float) -> ClusterView:
    """Prefill loads of one cluster: queued tokens and seconds of queued prefill work."""
    loads = tuple(
        InstanceLoad(p.instance_id, p.num_queued_tokens, queued_prefill_s=p.remaining_work_s(now))
        for p in instances
    )
    return ClusterView(name, prefill_instances=loads)


def decode_loads(decode: Sequence[SimDecode], decode_tokens: Sequence[int]) -> list[InstanceLoad]:
    """Decode load = output tokens assigned to the instance and not yet generated."""
    return [
        InstanceLoad(d.instance_id, decode_tokens[k], d.num_assigned) for k, d in enumerate(decode)
    ]
