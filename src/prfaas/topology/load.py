"""The one way into a topology: `load_topology(path)` and `parse_topology(data)` read the TOML,
check every key (`prfaas.topology.schema`), cross-check the whole (`prfaas.topology.checks`),
then resolve threshold "auto" in one named step (`resolve_auto`, Eq. 7 by
`prfaas.topology.derived`; `with_auto_threshold` for a topology built in code). Every problem is
reported, one `UserError` line per key at fault. The way back out, to TOML, is `write.py`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.topology.checks import check_topology
from prfaas.topology.config import Topology
from prfaas.topology.derived import resolve_auto_threshold
from prfaas.topology.keys import Problems, read_toml
from prfaas.topology.schema import read_sections


def load_topology(path: str | Path, *, allow_generated_token: bool = False) -> Topology:
    """Read, parse and validate a topology file; `UserError` lists every problem, one a line.

    `allow_generated_token`: a file without a `[transport]` table is accepted and its token
    stays None, for a launcher that generates a token and hands it to the services it starts.
    """
    file = Path(path)
    data = read_toml(file)
    return parse_topology(
        data, file.parent, source=str(path), allow_generated_token=allow_generated_token
    )


def parse_topology(
    data: Mapping[str, Any],
    base_dir: Path,
    *,
    source: str = "topology",
    allow_generated_token: bool = False,
) -> Topology:
    """Validate already parsed TOML; relative paths resolve against `base_dir`, and every
    problem line starts with `source`. Passes: every key, the whole, then "auto"."""
    problems = Problems(source)
    sections = read_sections(problems, data, base_dir, allow_generated_token=allow_generated_token)
    problems.raise_if_any()
    check_topology(
        problems,
        sections.router,
        sections.policy,
        sections.controller,
        sections.clusters,
        has_prefix_cache=sections.prefix_cache is not None,
        is_auto_threshold=sections.is_auto,
    )
    problems.raise_if_any()
    topology = sections.topology()
    if sections.is_auto:
        topology = resolve_auto(problems, topology)
        problems.raise_if_any()
    return topology


def with_auto_threshold(topology: Topology, *, source: str = "topology") -> Topology:
    """A topology built in code with its threshold resolved as "auto" is (Eq. 7); TopologyError,
    one line starting with `source`, when it cannot be."""
    problems = Problems(source)
    resolved = resolve_auto(problems, topology)
    problems.raise_if_any()
    return resolved


def resolve_auto(problems: Problems, topology: Topology) -> Topology:
    """Threshold "auto" resolved by Eq. 7, or a problem saying why it cannot be."""
    try:
        tokens, source = resolve_auto_threshold(topology)
    except UserError as exc:
        problems.add("policy.threshold", f'"auto": {exc}')
        return topology
    policy = dataclasses.replace(topology.policy, threshold_tokens=tokens, threshold_source=source)
    return dataclasses.replace(topology, policy=policy)
