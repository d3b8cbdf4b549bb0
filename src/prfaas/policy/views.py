"""Snapshots the policy reads: plain numbers copied out of live nodes or the simulator.

The policy never holds a live object; the router and the simulator build these views, pass them in,
and throw them away. Everything here is immutable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkView:
    """The inter-cluster link from the PrfaaS cluster to the local PD cluster, as last measured.

    `utilization` is the achieved sending rate over the last measuring window divided by
    `bandwidth_bytes_per_s`: it is at most 1, and reads close to 1 both on a link that keeps up
    at its planned operating point and on one that falls behind. What tells the two apart is
    `backlog_bytes`, the KV accepted for sending and not yet delivered.
    """

    bandwidth_bytes_per_s: float  # capacity of the link (or the measured achievable rate), bytes/s
    utilization: float  # achieved rate / capacity over the last window, 0..1
    backlog_bytes: float = 0.0  # KV bytes queued or in flight on the link (accepted, not delivered)
    rtt_s: float = 0.0  # round-trip time, seconds
    retransmit_rate: float = 0.0  # retransmitted / sent segments over the last window, 0..1

    def __post_init__(self) -> None:
        for name in ("bandwidth_bytes_per_s", "backlog_bytes", "rtt_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"LinkView.{name} must be finite and >= 0, got {value}")
        for name in ("utilization", "retransmit_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"LinkView.{name} must be in [0, 1], got {value}")

    def drain_s(self, extra_bytes: float = 0.0) -> float:
        """Seconds to deliver the backlog plus `extra_bytes` at full capacity less the share
        spent on retransmissions, what a lossy link delivers (inf: dead link)."""
        total = self.backlog_bytes + extra_bytes
        if total <= 0:
            return 0.0
        rate_bytes_per_s = self.bandwidth_bytes_per_s * (1.0 - self.retransmit_rate)
        if rate_bytes_per_s <= 0:
            return math.inf
        return total / rate_bytes_per_s


@dataclass(frozen=True, slots=True)
class InstanceLoad:
    """Load of one prefill or decode instance."""

    instance_id: str  # stable name of the instance (e.g. "pd-p-0")
    num_queued_tokens: int  # prompt tokens waiting or in flight on this instance
    num_running_requests: int = 0  # requests admitted and not finished
    free_kv_bytes: int = 0  # KV memory still free, bytes (0 when unknown)
    queued_prefill_s: float = 0.0  # expected seconds to finish the prefill work queued here


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One cluster's instances by role: a PrfaaS cluster has only prefill instances."""

    cluster_id: str  # e.g. "prfaas-0", "pd-0"
    prefill_instances: tuple[InstanceLoad, ...] = ()  # PrfaaS or PD-P instances
    decode_instances: tuple[InstanceLoad, ...] = ()  # PD-D instances

    def prefill_wait_s(self) -> float:
        """Queueing delay a new prefill sees: least-loaded instance's queued work (inf: none)."""
        return min((i.queued_prefill_s for i in self.prefill_instances), default=math.inf)
