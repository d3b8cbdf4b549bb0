"""What the planner needs to know about a deployment, validated once: plain numbers and curves."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prfaas.errors import UserError
from prfaas.policy.throughput import LatencyCurve, SizeCurve, StageCosts
from prfaas.policy.transfer import (
    LinkPath,
    effective_bandwidth_bytes_per_s,
    flow_cap_bytes_per_s,
    payload_bandwidth_bytes_per_s,
)
from prfaas.types import GBPS
from prfaas.workload import LengthDistribution


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster of one hardware type, cut into instances of `gpus_per_instance` GPUs."""

    hardware: str  # hardware name, the key of its price ("h200", "h20")
    num_gpus: int  # GPUs in the cluster
    gpus_per_instance: int  # GPUs per prefill or decode instance
    t_prefill_s: LatencyCurve  # prefill latency of one instance, tokens -> seconds
    latency_source: str  # how that curve was obtained (profile, fit, cost model)

    def __post_init__(self) -> None:
        if self.num_gpus <= 0 or self.gpus_per_instance <= 0:
            raise UserError(
                f"{self.hardware}: GPU counts must be > 0, got {self.num_gpus} GPUs, "
                f"{self.gpus_per_instance} per instance"
            )
        if self.num_gpus % self.gpus_per_instance:
            raise UserError(
                f"{self.hardware}: {self.num_gpus} GPUs do not split into instances of "
                f"{self.gpus_per_instance}"
            )

    @property
    def num_instances(self) -> int:
        return self.num_gpus // self.gpus_per_instance


@dataclass(frozen=True)
class PlanInputs:
    """Everything Eqs. 3-8 need, for the three deployments the paper compares."""

    prfaas: ClusterSpec  # the prefill-only PrfaaS cluster (also the naive deployment's prefill)
    pd: ClusterSpec  # the local PD cluster (PD-P + PD-D; the naive deployment's decode)
    homogeneous: ClusterSpec  # the baseline: one PD cluster of the local hardware
    kv_bytes: SizeCurve  # S_kv(l), bytes handed from prefill to decode per request
    kv_source: str  # where S_kv comes from (model spec, profile)
    lengths: LengthDistribution  # uncached input length L, tokens
    lengths_source: str  # e.g. "truncated log-normal mu=9.9 sigma=1 in [128, 131072]"
    link_bytes_per_s: float  # B_out, PrfaaS -> PD link bandwidth, bytes/s
    num_output_tokens: float  # L_out, mean output length, tokens
    max_batch_size: int  # BS_max per decode instance
    t_decode_step_s: float  # T_decode per decode step at BS_max (decode SLO), seconds
    prices_per_gpu: Mapping[str, float] = field(default_factory=dict)  # hardware -> price/GPU
    threshold_step_tokens: float = 100.0  # grid step of the threshold search, tokens
    link_path: LinkPath = field(default_factory=LinkPath)  # RTT, loss, payload efficiency

    def __post_init__(self) -> None:
        _positive("link bandwidth", self.link_bytes_per_s)
        _positive("output tokens", self.num_output_tokens)
        _positive("decode step time", self.t_decode_step_s)
        _positive("threshold grid step", self.threshold_step_tokens)
        if self.max_batch_size <= 0:
            raise UserError(f"BS_max must be > 0, got {self.max_batch_size}")
        for name, cluster in (("PD", self.pd), ("homogeneous PD", self.homogeneous)):
            if cluster.num_instances < 2:
                raise UserError(
                    f"the {name} cluster needs at least 2 instances (prefill + decode), has "
                    f"{cluster.num_instances}"
                )
        for hw, price in self.prices_per_gpu.items():
            _positive(f"price of {hw}", price)

    @property
    def link_gbps(self) -> float:
        return self.link_bytes_per_s * 8 / GBPS

    def stage_costs(self, prefill_remote: ClusterSpec, prefill_local: ClusterSpec) -> StageCosts:
        """Eq. 3-5 costs with the given prefill hardware; decode always runs on the PD hardware."""
        return StageCosts(
            t_prefill_prfaas_s=prefill_remote.t_prefill_s,
            t_prefill_pd_s=prefill_local.t_prefill_s,
            kv_bytes=self.kv_bytes,
            egress_bytes_per_s=payload_bandwidth_bytes_per_s(self.link_bytes_per_s, self.link_path),
            max_batch_size=self.max_batch_size,
            t_decode_step_s=self.t_decode_step_s,
            num_output_tokens=self.num_output_tokens,
            flow_cap_bytes_per_s=flow_cap_bytes_per_s(self.link_path),
        )

    def effective_link_gbps(self) -> float:
        """The link's payload bandwidth with one transfer per PrfaaS instance under loss (what
        Eq. 3's B_out is for the PrfaaS-PD split), Gbps."""
        effective = effective_bandwidth_bytes_per_s(
            self.link_bytes_per_s, self.link_path, self.prfaas.num_instances
        )
        return effective * 8 / GBPS

    def has_prices(self) -> bool:
        needed = {self.prfaas.hardware, self.pd.hardware, self.homogeneous.hardware}
        return needed <= set(self.prices_per_gpu)
