"""Instance picking inside a cluster: the least-loaded instance by queued tokens."""

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
