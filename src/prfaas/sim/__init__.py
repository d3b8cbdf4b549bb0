"""Discrete-event simulator of PrfaaS deployments; routes with the real prfaas.policy code.

Module map: `events` (event types and their order), `simulator` (the loop and dispatch),
`handlers` (run state and the `on_<event>` handlers), `views` (what the policy sees, decision
records), `summary` (the metrics dict of a run), `instances` (prefill and decode instances),
`link` (the shared inter-cluster link, one per provider), `providers` (several prefill providers:
routing among them, their metrics), `cost` (latency and size seams), `metrics` (what a run
reports), `config` (a run as data), `traffic` (workloads), `presets` and `scenario` (the paper's
case study), `maxrate` (capacity search), `report` (plots, matplotlib imported lazily).
"""

from prfaas.sim.config import (
    DeploymentSpec,
    PrefillClusterSpec,
    ProviderSpec,
    SimConfig,
    SimRequest,
)
from prfaas.sim.simulator import Simulator, simulate

__all__ = [
    "DeploymentSpec",
    "PrefillClusterSpec",
    "ProviderSpec",
    "SimConfig",
    "SimRequest",
    "Simulator",
    "simulate",
]
