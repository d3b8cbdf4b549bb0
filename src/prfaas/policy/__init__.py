"""Pure decisions shared by the live router and the simulator: no clocks, sockets, torch or RNG.

- `route`: per-request routing (threshold, cache-affine / global best prefix, congestion, and the
  offload-delay rule on link backlog and both clusters' queues) and the deployment-kind factory
  `make_route_policy`.
- `pick`: least-loaded instance inside a cluster, or the one caching the longest prefix.
- `throughput`: the paper's Eqs. 2-7 and the Eq. 7 threshold search, used by the planner and by a
  router re-searching t over observed lengths.
- `compression`: the KV codec of an offloaded request (`[transport] compression`, "auto" from
  the link view).
- `transfer`: one KV transfer's cost over the inter-cluster path (payload efficiency, the loss
  cap, the RTTs it cannot hide, jitter), shared by the simulator, the planner and `route`.
- `views`: the snapshots (LinkView, InstanceLoad, ClusterView) the policy reads.
"""

from prfaas.policy.compression import CodecChoice, CompressionRule, choose_kv_codec
from prfaas.policy.pick import pick_cached_instance, pick_instance
from prfaas.policy.route import (
    PathDelays,
    RouteDecision,
    RoutePolicy,
    RoutePolicyConfig,
    RouteTarget,
    choose_route,
    make_route_policy,
    path_delays,
)
from prfaas.policy.throughput import (
    StageCosts,
    StagePoint,
    best_threshold,
    evaluate,
    lambda_max,
    theta_pd_decode,
    theta_pd_prefill,
    theta_prfaas,
)
from prfaas.policy.views import ClusterView, InstanceLoad, LinkView

__all__ = [
    "ClusterView",
    "CodecChoice",
    "CompressionRule",
    "InstanceLoad",
    "LinkView",
    "PathDelays",
    "RouteDecision",
    "RoutePolicy",
    "RoutePolicyConfig",
    "RouteTarget",
    "StageCosts",
    "StagePoint",
    "best_threshold",
    "choose_kv_codec",
    "choose_route",
    "evaluate",
    "lambda_max",
    "make_route_policy",
    "path_delays",
    "pick_cached_instance",
    "pick_instance",
    "theta_pd_decode",
    "theta_pd_prefill",
    "theta_prfaas",
]
