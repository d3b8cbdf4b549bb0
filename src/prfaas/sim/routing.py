"""Routing variants the simulator compares, all deciding with the one shared `prfaas.policy` code.

- **cache-aware** (the policy as it is): the routed length is l = prompt minus the best usable
  cached prefix (the policy's rule 1: each cluster's own prefix when bandwidth is scarce, the
  global best prefix, moved to the chosen cluster, when it is abundant).
- **length-only**: the policy decides on the whole prompt. It is called with zero cached tokens in
  both clusters, so its threshold and offload-delay rules see l = prompt. The chosen cluster then
  reuses the prefix it caches itself (a prefix that exists is not recomputed); no prefix moves
  between clusters, since the decision did not ask for one.

Length-only wraps the policy instead of adding a mode to it, so `prfaas.policy.route` stays as
the router runs it. A `DecisionRecord` of a length-only run holds the real cached counts next to
the wrapped decision: replay such records through `LengthOnlyPolicy`, not `RoutePolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prfaas.policy.route import RouteDecision, RoutePolicy, RouteTarget


@dataclass(frozen=True, slots=True)
class LengthOnlyPolicy(RoutePolicy):
    """`RoutePolicy` that routes on the whole prompt; the target reuses its own cached prefix."""

    def choose(
        self,
        num_prompt_tokens: int,
        num_cached_tokens_pd: int,
        num_cached_tokens_prfaas: int,
        *args: Any,
        **kwargs: Any,
    ) -> RouteDecision:
        """As `RoutePolicy.choose` (same arguments after the cached counts), deciding with no
        cached tokens; the decision's hit is then the chosen cluster's own cached prefix."""
        decision = RoutePolicy.choose(self, num_prompt_tokens, 0, 0, *args, **kwargs)
        hit = (
            num_cached_tokens_prfaas
            if decision.target is RouteTarget.PRFAAS
            else num_cached_tokens_pd
        )
        if not 0 <= hit <= num_prompt_tokens:
            raise ValueError(f"cached tokens must be in [0, prompt], got {hit}")
        return replace(
            decision,
            num_incremental_tokens=num_prompt_tokens - hit,
            num_prefix_hit_tokens=hit,
            num_prefix_transfer_tokens=0,
        )


def routing_policy(policy: RoutePolicy, routing: str) -> RoutePolicy:
    """`policy` for "cache-aware"; the same deployment and config routed length-only otherwise."""
    if routing == "cache-aware":
        return policy
    if routing == "length-only":
        return LengthOnlyPolicy(policy.kind, policy.config)
    raise ValueError(f"unknown routing {routing!r}; known: cache-aware, length-only")
