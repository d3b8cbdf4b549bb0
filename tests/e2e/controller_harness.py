"""Helpers for the live controller tests: a topology of emulated instances (1 PrfaaS prefill,
PD prefill + 2 PD decode, every PD instance convertible), started as processes, and a small client
for its OpenAI and control APIs."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services_harness import get_json, launch

from prfaas.launch.local import Launcher
from prfaas.policy.controller import ControllerConfig
from prfaas.topology import PrefixCacheConfig, Topology
from topologies import Node, TopologySpec, decode, pd, prfaas

READY_TIMEOUT_S = 300.0
EMULATE = "nemotron-3-nano"  # a small hybrid KV: every request moves tens of MiB on loopback
INITIAL_THRESHOLD = 100000  # nothing offloads at first: PD prefill binds
MAX_TOKENS = 4
TOKEN = "controller-test-token"


def write_topology(
    directory: Path,
    with_controller: bool,
    period_s: float = 10.0,
    prefix_block_tokens: int | None = None,
    api_keys: tuple[str, ...] = (),
    time_scale: float = 0.0,
    link_hold_s: float = 0.0,
) -> Path:
    """The test topology; a driven `[controller]` that decides on the first tick it can.
    `time_scale` 0: the emulated engines do not sleep."""
    controller = ControllerConfig(
        period_s=period_s,
        window_s=1000,
        min_samples=10,
        persistence_ticks=1,
        threshold_persistence_ticks=1,
        cooldown_s=0,
        link_hold_s=link_hold_s,
    )
    prefix_cache = None
    if prefix_block_tokens is not None:
        prefix_cache = PrefixCacheConfig(prefix_block_tokens, 8 << 30)
    spec = TopologySpec(
        clusters=(
            prfaas(Node("prfaas-p0")),
            pd(Node("pd-p0", kv=True), decode("pd-d0"), decode("pd-d1")),
        ),
        engine="emulated",
        emulate=EMULATE,
        time_scale=time_scale,
        link_gbps=10,
        threshold=INITIAL_THRESHOLD,
        token=TOKEN,
        api_keys=api_keys,
        controller=controller if with_controller else None,
        driven=True,
        prefix_cache=prefix_cache,
    )
    return spec.write(directory)


class Live:
    """A started topology: its processes, and calls to its router and instances."""

    def __init__(self, launcher: Launcher, topology: Topology) -> None:
        self.launcher, self.topology = launcher, topology
        self.url = launcher.router_url

    def post(self, path: str, body: dict[str, Any], internal: bool = False) -> Any:
        headers = {"Content-Type": "application/json"}
        if internal:
            headers["Authorization"] = f"Bearer {TOKEN}"
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())

    def complete(self, num_tokens: int, seed: int) -> dict[str, Any]:
        rng = random.Random(seed)
        return self.complete_ids([rng.randrange(10, 250) for _ in range(num_tokens)])

    def complete_ids(self, prompt: Sequence[int]) -> dict[str, Any]:
        body = {"model": "qwen3_next", "prompt": list(prompt), "max_tokens": MAX_TOKENS}
        reply: dict[str, Any] = self.post("/v1/completions", body)
        return reply

    def control(self) -> dict[str, Any]:
        status: dict[str, Any] = get_json(
            self.url + "/internal/control", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return status

    def instance_stats(self, name: str) -> dict[str, Any]:
        http = self.topology.instance(name).http
        stats: dict[str, Any] = get_json(
            f"http://{http}/internal/stats", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return stats


def start_live(tmp: Path, with_controller: bool, **options: Any) -> Live:
    path = write_topology(tmp, with_controller, **options)
    system = launch(path, tmp / "logs", READY_TIMEOUT_S)
    return Live(system.launcher, system.topology)
