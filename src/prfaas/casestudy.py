"""The paper's case study (its section 4; docs/paper.md) as one frozen record of its *inputs*.

Both `prfaas.plan` (preset `paper-case-study`) and `prfaas.sim` (preset `paper-case-study`) read the
deployment, workload and decode parameters from `PAPER_CASE_STUDY`, so the two cannot drift apart.
Results (t, splits, Λ_max) are not here: the planner computes them. Standard library only; sits
beside `prfaas.workload` in the import layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.perf.latency import QuadraticLatency
from prfaas.workload import TruncatedLogNormal


@dataclass(frozen=True, slots=True)
class CaseStudySpec:
    """Inputs of one PrfaaS-PD case study: hardware, cluster sizes, link, workload, decode."""

    model: str  # model preset for S_kv(l) (prfaas.models)
    prfaas_hardware: str  # PrfaaS cluster accelerator (prfaas.perf hardware name)
    pd_hardware: str  # local PD cluster accelerator
    prfaas_profile: str  # measured prefill profile of one PrfaaS instance (prfaas.perf)
    pd_latency: QuadraticLatency  # prefill latency of one PD instance
    pd_latency_note: str  # where `pd_latency` comes from, shown in reports
    prfaas_gpus: int  # GPUs in the PrfaaS cluster
    pd_gpus: int  # GPUs in the local PD cluster
    gpus_per_instance: int  # GPUs per prefill or decode instance
    link_gbps: float  # inter-cluster link, Gbps
    length_mu: float  # log-normal mu of the uncached prompt length (ln tokens)
    length_sigma: float  # log-normal sigma
    min_tokens: int  # truncation of the length distribution, tokens
    max_tokens: int
    output_tokens: int  # output length of every request, tokens
    max_batch_size: int  # BS_max per decode instance
    t_decode_step_s: float  # T_decode, seconds per decode step

    def lengths(self) -> TruncatedLogNormal:
        """The uncached-length distribution."""
        return TruncatedLogNormal(
            mu=self.length_mu,
            sigma=self.length_sigma,
            min_tokens=self.min_tokens,
            max_tokens=self.max_tokens,
        )


# 8xH20 prefill of the paper's 1T model, back-solved from Table 6 (docs/paper.md): an inference.
H20_INFERRED_LATENCY = QuadraticLatency(0.469, 1.300e-4, 2.945e-10)

PAPER_CASE_STUDY = CaseStudySpec(
    model="paper-1t",
    prfaas_hardware="h200",
    pd_hardware="h20",
    prfaas_profile="paper-1t-h200",
    pd_latency=H20_INFERRED_LATENCY,
    pd_latency_note="inferred from the paper's Table 6, see docs/paper.md",
    prfaas_gpus=32,
    pd_gpus=64,
    gpus_per_instance=8,
    link_gbps=100.0,
    length_mu=9.90,
    length_sigma=1.00,
    min_tokens=128,
    max_tokens=131_072,
    output_tokens=1024,
    max_batch_size=20,
    t_decode_step_s=0.025,
)
