"""The deployment's topology: one model, the router, the clusters and their instances, the link,
the policy, the prefix cache, the controller and transport security.

    config.py      the frozen dataclasses (no loading)
    keys.py        reading the TOML file; typed key getters; `Problems`, one line per bad key
    schema.py      pass 1: every table and key on its own (schema_model, schema_transport and
                   schema_clusters read the larger tables)
    checks.py      pass 2: the topology as a whole (names, addresses, clusters, deployment)
    load.py        `load_topology` / `parse_topology`: the passes, then "auto" resolved by Eq. 7
    derived.py     values derived from a topology: "auto" t (Eq. 7), prefill curves, link units
    sim_config.py  the topology as a simulator config (live against simulated)
    write.py       a `Topology` built in code -> TOML text that `load_topology` reads back

Imports only the pure layers, the planner and the simulator's config: never HTTP, sockets or
torch. Every service package reads its configuration from here.
"""

from prfaas.topology.config import (
    ClusterConfig,
    ControllerSettings,
    InstanceConfig,
    LinkConfig,
    ModelConfig,
    PolicyConfig,
    PrefixCacheConfig,
    RouterConfig,
    SecurityConfig,
    Topology,
    threshold_of,
)
from prfaas.topology.keys import TopologyError
from prfaas.topology.load import load_topology, parse_topology, with_auto_threshold
from prfaas.topology.write import topology_to_toml, write_topology

__all__ = [
    "ClusterConfig",
    "ControllerSettings",
    "InstanceConfig",
    "LinkConfig",
    "ModelConfig",
    "PolicyConfig",
    "PrefixCacheConfig",
    "RouterConfig",
    "SecurityConfig",
    "Topology",
    "TopologyError",
    "load_topology",
    "parse_topology",
    "threshold_of",
    "topology_to_toml",
    "with_auto_threshold",
    "write_topology",
]
