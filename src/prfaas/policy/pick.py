"""Instance picking inside a cluster: least-loaded, or the one caching the longest prefix."""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.policy.views import InstanceLoad


def pick_instance(loads: Sequence[InstanceLoad]) -> int:
    """Position in `loads` of the instance with the fewest queued tokens; ties go to the lowest.

    Raises ValueError on an empty sequence.
    """
    if not loads:
        raise ValueError("pick_instance needs at least one instance")
    return min(range(len(loads)), key=lambda i: (loads[i].num_queued_tokens, i))


def pick_cached_instance(loads: Sequence[InstanceLoad], num_cached_tokens: Sequence[int]) -> int:
    """Cache-affine placement: the instance caching the most prompt tokens, least loaded among
    equals (so with no cache hit anywhere this is `pick_instance`).

    `num_cached_tokens[i]` is the usable cached prefix of the request on `loads[i]`. Raises
    ValueError on an empty sequence or mismatched lengths.
    """
    if len(loads) != len(num_cached_tokens):
        raise ValueError(
            f"{len(loads)} loads but {len(num_cached_tokens)} cached-token counts for them"
        )
    if not loads:
        raise ValueError("pick_cached_instance needs at least one instance")
    return min(
        range(len(loads)),
        key=lambda i: (-num_cached_tokens[i], loads[i].num_queued_tokens, i),
    )
