"""Snapshots the policy reads: plain numbers copied out of live nodes or the simulator.

The policy never holds a live object; the router and the simulator build these views, pass them in,
and throw them away. Everything here is immutable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkView:
    """The inter-cluster link from the PrfaaS cluster to the local PD cluster, as last measured."""

    bandwidth_bytes_per_s: float  # capacity of the link (or the measured achievable rate), bytes/s
    utilization: float  # share of that capacity in use now, 0..1 (may exceed 1 when oversubscribed)
    rtt_s: float = 0.0  # round-trip time, seconds
    retransmit_rate: float = 0.0  # retransmitted / sent segments over the last window, 0..1

    def __post_init__(self) -> None:
        for name in ("bandwidth_bytes_per_s", "utilization", "rtt_s", "retransmit_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LinkView.{name} must be finite and >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class InstanceLoad:
    """Load of one prefill or decode instance."""

    instance_id: str  # stable name of the instance (e.g. "pd-p-0")
    num_queued_tokens: int  # prompt tokens waiting or in flight on this instance
    num_running_requests: int = 0  # requests admitted and not finished
    free_kv_bytes: int = 0  # KV memory still free, bytes (0 when unknown)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One cluster's instances by role: a PrfaaS cluster has only prefill instances."""

    cluster_id: str  # e.g. "prfaas-0", "pd-0"
    prefill_instances: tuple[InstanceLoad, ...] = ()  # PrfaaS or PD-P instances
    decode_instances: tuple[InstanceLoad, ...] = ()  # PD-D instances
