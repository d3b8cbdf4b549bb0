"""Discrete-event simulator of PrfaaS deployments; routes with the real prfaas.policy code.

Module map: `events` (event types and their order), `simulator` (the loop and the glue),
`instances` (prefill and decode instances), `link` (the shared inter-cluster link), `cost`
(latency and size seams), `metrics` (what a run reports), `config` (a run as data), `traffic`
(workloads), `presets` and `scenario` (the paper's case study), `maxrate` (capacity search),
`report` (plots, matplotlib imported lazily).
"""

from prfaas.sim.config import DeploymentSpec, PrefillClusterSpec, SimConfig, SimRequest
from prfaas.sim.simulator import Simulator, simulate

__all__ = [
    "DeploymentSpec",
    "PrefillClusterSpec",
    "SimConfig",
    "SimRequest",
    "Simulator",
    "simulate",
]
