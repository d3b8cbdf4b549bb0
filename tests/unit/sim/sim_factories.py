"""Factories for small simulator setups: fake cost curves with round numbers, tiny deployments.

Imported by the sim tests (pytest puts this folder on sys.path).
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.perf.latency import QuadraticLatency
from prfaas.policy.route import RoutePolicyConfig
from prfaas.sim.config import DeploymentSpec, PrefillClusterSpec, SimConfig, SimRequest
from prfaas.sim.cost import FixedDecodeStep
from prfaas.sim.link import BandwidthStep
from prfaas.types import DeploymentKind


@dataclass(frozen=True, slots=True)
class LinearKV:
    """S_kv(l) = fixed + per_token * l bytes."""

    fixed_bytes: int = 1000
    bytes_per_token: int = 10

    def kv_bytes(self, num_tokens: int) -> int:
        return self.fixed_bytes + self.bytes_per_token * num_tokens


def make_config(
    kind: DeploymentKind = DeploymentKind.PRFAAS,
    *,
    num_prfaas: int = 1,
    num_pd_p: int = 1,
    num_decode: int = 1,
    max_batch_size: int = 4,
    decode_step_s: float = 0.1,
    prefill_s: tuple[float, float, float] = (1.0, 0.001, 0.0),
    threshold_tokens: float = 1000,
    link_bytes_per_s: float = 1e4,
    bandwidth: tuple[BandwidthStep, ...] | None = None,
    num_kv_layers: int = 10,
    **knobs: object,
) -> SimConfig:
    latency = QuadraticLatency(*prefill_s)
    route = RoutePolicyConfig(threshold_tokens) if kind is DeploymentKind.PRFAAS else None
    deployment = DeploymentSpec(
        kind=kind,
        prfaas=PrefillClusterSpec(
            num_prfaas if kind is not DeploymentKind.HOMOGENEOUS else 0, latency, "fast"
        ),
        pd_prefill=PrefillClusterSpec(
            num_pd_p if kind is not DeploymentKind.NAIVE else 0, latency, "local"
        ),
        num_decode_instances=num_decode,
        max_batch_size=max_batch_size,
        decode_step=FixedDecodeStep(decode_step_s),
        route_config=route,
    )
    steps = bandwidth or (BandwidthStep(0.0, link_bytes_per_s * 8 / 1e9),)
    return SimConfig(deployment, LinearKV(), num_kv_layers, steps, **knobs)  # type: ignore[arg-type]


def requests_at(times: list[float], num_tokens: int, num_output_tokens: int) -> list[SimRequest]:
    return [SimRequest(t, num_tokens, num_output_tokens) for t in times]
