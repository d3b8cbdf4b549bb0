"""A PrfaaS prefill instance times "auto"'s codec at start and the router's rule reads the rate.

In process, on the real prefill app with its lifespan (the tiny torch qwen3_next engine loads,
the service starts): the instance's `/internal/stats` carries the fp8 encode rate its engine
thread measured on the model's K shape, the rate survives the stats' JSON, and the router's
"auto" decision over a binding link leaves the KV exact when the link's goodput is above that
rate and codes fp8 when it is below. An emulated engine, which does not code, reports no rate
(unlimited). A configured codec slower than `[link] gbps` is kept, with a warning at start.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prfaas.instance.prefill import build_prefill_app, codec_to_measure, slow_codec_warning
from prfaas.messages import InstanceStats
from prfaas.policy import LinkView, choose_kv_codec
from prfaas.router.dispatch import auto_encode_bytes_per_s
from prfaas.router.monitor import InstanceState
from prfaas.topology import Topology
from topologies import Node, TopologySpec, decode, pd, prfaas

CLUSTERS = (prfaas(Node("r0")), pd(Node("p0"), decode("d0")))


def _topology(compression: str, engine: str = "torch", link_gbps: float = 100.0) -> Topology:
    spec = TopologySpec(CLUSTERS, engine=engine, compression=compression, link_gbps=link_gbps)
    return spec.topology()


def _stats_of(topology: Topology, name: str) -> dict[str, Any]:
    """`/internal/stats` of instance `name`, started in process (engine load, service start)."""
    auth = {"Authorization": f"Bearer {topology.transport.token}"}
    with TestClient(build_prefill_app(topology, topology.instance(name))) as client:
        reply = client.get("/internal/stats", headers=auth)
    assert reply.status_code == 200
    stats: dict[str, Any] = reply.json()
    return stats


def _auto_choice(topology: Topology, stats: dict[str, Any], link_bytes_per_s: float) -> str:
    """The router's "auto" codec for r0 with these stats over a binding link of that goodput."""
    state = InstanceState(topology.instance("r0"), InstanceStats.from_dict(stats))
    rate = auto_encode_bytes_per_s(state)
    link = LinkView(link_bytes_per_s, utilization=0.95)
    choice = choose_kv_codec("auto", True, link, auto_encode_bytes_per_s=rate)
    return f"{choice.kv_codec} {choice.reason}"


def test_the_measured_fp8_rate_reaches_the_routers_auto_rule() -> None:
    topology = _topology("auto")
    stats = _stats_of(topology, "r0")
    rate = stats["kv_encode_bytes_per_s"]["fp8"]
    assert set(stats["kv_encode_bytes_per_s"]) == {"fp8"}
    assert 0 < rate < math.inf
    slower = _auto_choice(topology, stats, link_bytes_per_s=2 * rate)
    assert slower.startswith("none auto-codec-slower: fp8 encodes ")
    assert _auto_choice(topology, stats, link_bytes_per_s=rate / 2).startswith(
        "fp8 auto-link-bound"
    )


def test_an_emulated_engine_reports_no_rate_and_counts_as_unlimited() -> None:
    topology = _topology("auto", engine="emulated")
    stats = _stats_of(topology, "r0")
    assert stats["kv_encode_bytes_per_s"] == {}
    assert _auto_choice(topology, stats, link_bytes_per_s=1e15).startswith("fp8 auto-link-bound")


def test_a_configured_codec_slower_than_the_link_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = _topology("int4-rotated", link_gbps=1e5)  # 12.5 TB/s: no CPU codes that fast
    with caplog.at_level(logging.WARNING, logger="prfaas.instance.prefill"):
        stats = _stats_of(topology, "r0")
    rate = stats["kv_encode_bytes_per_s"]["int4-rotated"]
    warning = slow_codec_warning(topology, "int4-rotated", rate)
    assert warning is not None and warning.startswith(
        "[transport] compression = int4-rotated encodes "
    )
    assert f"r0: {warning}" in caplog.messages


def test_which_codec_an_instance_times() -> None:
    auto, fp8, none = _topology("auto"), _topology("fp8"), _topology("none")
    assert codec_to_measure(auto, auto.instance("r0")) == "fp8"
    assert codec_to_measure(fp8, fp8.instance("r0")) == "fp8"
    assert codec_to_measure(none, none.instance("r0")) is None
    assert codec_to_measure(auto, auto.instance("p0")) is None  # its KV never crosses the link
    slow_link = _topology("fp8", link_gbps=8.0)  # 1e9 bytes/s
    assert slow_codec_warning(slow_link, "fp8", 1e9) is None
    assert slow_codec_warning(slow_link, "fp8", 0.5e9) == (
        "[transport] compression = fp8 encodes 0.500 GB/s on this instance, below the link's "
        "1.000 GB/s ([link] gbps = 8): coding, not the link, bounds each offloaded transfer"
    )
    assert slow_codec_warning(_topology("auto", link_gbps=8.0), "fp8", 0.5e9) is None
