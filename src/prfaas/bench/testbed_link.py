"""What `prfaas bench system --testbed NAME` adds to a run: the running testbed's topology and
router, its WAN qdisc's byte counter as the egress (the bytes that really crossed the
inter-datacenter link), and a link drop carried out during the run (`testbed link`: the tbf and
the router's view of the capacity) and replayed through the simulator as bandwidth steps.

Rates of a drop are in the model's units, which for a testbed are its nominal Gbps (the paper's:
the wire runs at nominal x payload_scale / time_scale). Times are seconds after the run's start.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas.bench.loadgen import TimedAction
from prfaas.errors import UserError
from prfaas.sim.link import BandwidthStep
from prfaas.topology import Topology

MAX_DROP_GBPS = 1e6


@dataclass(frozen=True)
class LinkDrop:
    """The link runs at `gbps` (model units) from `at_s` for `duration_s`, then as before."""

    at_s: float
    duration_s: float
    gbps: float

    def __post_init__(self) -> None:
        values = (self.at_s, self.duration_s, self.gbps)
        if not all(math.isfinite(v) for v in values) or self.at_s < 0 or self.duration_s <= 0:
            raise UserError(
                f"a link drop needs a start >= 0 s and a duration > 0 s, got {self.at_s} s "
                f"for {self.duration_s} s"
            )
        if not 0 < self.gbps <= MAX_DROP_GBPS:
            raise UserError(f"a link drop's rate must be in (0, {MAX_DROP_GBPS:g}] Gbps")

    @staticmethod
    def parse(text: str) -> LinkDrop:
        """`AT_S:DURATION_S:GBPS`, e.g. `30:60:10`."""
        parts = text.split(":")
        try:
            at_s, duration_s, gbps = (float(p) for p in parts)
        except ValueError:
            raise UserError(
                f"--link-drop must be AT_S:DURATION_S:GBPS (numbers), got {text!r}"
            ) from None
        return LinkDrop(at_s, duration_s, gbps)

    def sim_steps(self, base_gbps: float, time_scale: float) -> list[BandwidthStep]:
        """The link as the simulator sees it (model time = run time / time_scale)."""
        start, end = self.at_s / time_scale, (self.at_s + self.duration_s) / time_scale
        return [
            BandwidthStep(0.0, base_gbps),
            BandwidthStep(start, self.gbps),
            BandwidthStep(end, base_gbps),
        ]


@dataclass(frozen=True)
class BenchTestbed:
    """A running testbed a benchmark drives: where its state is, its router and namespaces."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    state_root: Path
    topology: Topology
    router_url: str
    client_ns: str
    wan_ns: str
    wan_dev: str
    nominal_gbps: float

    def wan_bytes(self) -> int:
        """Bytes the WAN's shaped side has sent (PrfaaS -> PD), from its qdisc."""
        from prfaas.testbed import netns

        return netns.qdisc_stats(self.wan_ns, self.wan_dev).bytes_sent

    def set_nominal_gbps(self, gbps: float) -> dict[str, Any]:
        """The WAN at `gbps` nominal (scaled like at `up`), the router told its new capacity."""
        from prfaas.testbed.run import change_link

        return change_link(self.name, self.state_root, nominal_gbps=gbps)

    def drop_actions(self, drop: LinkDrop) -> list[TimedAction]:
        """The drop and the restore, as a run's timed actions."""
        base = self.nominal_gbps
        return [
            TimedAction(
                drop.at_s, f"link {drop.gbps:g} Gbps", lambda: self.set_nominal_gbps(drop.gbps)
            ),
            TimedAction(
                drop.at_s + drop.duration_s,
                f"link {base:g} Gbps",
                lambda: self.set_nominal_gbps(base),
            ),
        ]


def open_testbed(name: str, state_root: Path) -> BenchTestbed:
    """The running testbed `name`; UserError in one line when there is none."""
    from prfaas.testbed.layout import TestbedLayout
    from prfaas.testbed.network import require_netns
    from prfaas.testbed.state import read_state, run_dir_of
    from prfaas.topology import load_topology

    require_netns()
    run_dir = run_dir_of(state_root, name)
    state = read_state(run_dir)
    if state is None or state.get("phase") != "ready":
        raise UserError(f"no ready testbed {name!r} under {state_root} (prfaas testbed status)")
    layout = TestbedLayout(name)
    return BenchTestbed(
        name=name,
        state_root=state_root,
        topology=load_topology(run_dir / "topology.toml"),
        router_url=str(state["router_url"]),
        client_ns=layout.client_ns,
        wan_ns=layout.wan_prfaas.ns,
        wan_dev=layout.wan_prfaas.dev,
        nominal_gbps=float(state["scale"]["nominal_gbps"]),
    )


def topology_path(testbed: BenchTestbed) -> Path:
    from prfaas.testbed.state import run_dir_of

    return run_dir_of(testbed.state_root, testbed.name) / "topology.toml"


def in_namespace(ns: str) -> bool:
    """Whether this process runs in network namespace `ns` (`ip netns` names it)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return False
