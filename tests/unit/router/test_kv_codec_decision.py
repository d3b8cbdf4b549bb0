"""The router's KV codec decision, without processes: a real `Dispatcher` over a `ClusterMonitor`
whose instances are marked ready and whose link view comes from polled egress counters, as
`decide` meets them. With `[transport] compression = "auto"` an offloaded request is coded fp8
while the measured link binds and the prefill instance's reported fp8 encode rate keeps up with
the link, and travels exact otherwise; a request prefilled in the PD cluster is never coded; a
configured codec codes every offloaded request. The decision travels in the `Dispatch` (route log
line, `prfaas` field) and in the `x-prfaas-kv-codec*` headers. Where a vLLM server prefills, the
KV travels uncoded (its connector does not code) and the reason says so.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from prfaas.messages import InstanceStats
from prfaas.router.app import route_headers
from prfaas.router.dispatch import Dispatch, Dispatcher, DispatchTrace
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.topology import Topology
from prfaas.transport.linkstats import LinkStats
from topologies import Node, TopologySpec, decode, pd, prfaas

THRESHOLD = 16
LINK_GBPS = 8.0  # 1e9 bytes/s
CAPACITY_BYTES_PER_S = LINK_GBPS * 1e9 / 8


def _topology(compression: str, engine: str) -> Topology:
    clusters = (prfaas(Node("r0")), pd(Node("p0"), decode("d0")))
    spec = TopologySpec(
        clusters,
        engine=engine,
        threshold=THRESHOLD,
        link_gbps=LINK_GBPS,
        compression=compression,
        port_base=18000,
    )
    return spec.topology()


def _decide(
    compression: str,
    utilization: float,
    num_prompt_tokens: int,
    engine: str = "emulated",
    encode_rates: dict[str, float] | None = None,
) -> Dispatch:
    """Two polls of r0 1 s apart in which it sent `utilization` x capacity bytes to d0's KV
    receiver (and reported `encode_rates`, uncoded bytes/s per codec), then the router's
    decision for a prompt of `num_prompt_tokens` tokens."""
    topology = _topology(compression, engine)
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    dest = topology.instance("d0").kv
    assert dest is not None
    for at_s, sent in ((0.0, 0), (1.0, round(utilization * CAPACITY_BYTES_PER_S))):
        link = LinkStats(dest, 1, 0.001, 0.001, 1e9, 1e9, 0, 1, 0, 0, sent, 0)
        state = monitor.states["r0"]
        state.stats = InstanceStats(
            "r0", "prefill", 0, 0, 0, 0.0, links=(asdict(link),),
            kv_encode_bytes_per_s=encode_rates or {},
        )  # fmt: skip
        state.update_egress(at_s)
    prfaas_cluster, pd_cluster = topology.clusters
    view = monitor.link_view(prfaas_cluster, pd_cluster)
    assert view is not None and view.utilization == pytest.approx(utilization, abs=1e-6)
    prefixes = RouterPrefixIndex(None, topology.instances, client=None)  # type: ignore[arg-type]
    dispatcher = Dispatcher(topology, monitor, None, RouterMetrics(), prefixes)  # type: ignore[arg-type]
    return dispatcher.decide("req", list(range(num_prompt_tokens)))


def test_auto_codes_an_offloaded_request_while_the_link_binds() -> None:
    d = _decide("auto", utilization=0.9, num_prompt_tokens=THRESHOLD + 1)
    assert d.route == "prfaas"
    assert d.kv_codec == "fp8"
    assert d.kv_codec_reason == "auto-link-bound: utilization 0.90 >= 0.80"
    headers = route_headers(d)
    assert headers["x-prfaas-kv-codec"] == "fp8"
    assert headers["x-prfaas-kv-codec-reason"].startswith("auto-link-bound: ")
    assert d.log_fields()["kv_codec"] == "fp8"
    summary = DispatchTrace.of(d).summary(arrived_at=0.0)
    assert summary["kv_codec"] == "fp8" and summary["kv_codec_reason"] == d.kv_codec_reason


def test_auto_leaves_an_offloaded_request_exact_while_the_link_does_not_bind() -> None:
    d = _decide("auto", utilization=0.3, num_prompt_tokens=THRESHOLD + 1)
    assert d.route == "prfaas"
    assert d.kv_codec == "none"
    assert d.kv_codec_reason.startswith("auto-link-free: utilization 0.30 < 0.80")
    assert route_headers(d)["x-prfaas-kv-codec"] == "none"


@pytest.mark.parametrize("compression", ["auto", "int4-rotated"])
def test_a_request_prefilled_in_the_pd_cluster_is_never_coded(compression: str) -> None:
    d = _decide(compression, utilization=0.95, num_prompt_tokens=THRESHOLD)
    assert d.route == "pd_prefill"
    assert d.kv_codec == "none" and d.kv_codec_reason.startswith("local: ")


def test_a_configured_codec_codes_every_offloaded_request() -> None:
    d = _decide("int4-rotated", utilization=0.0, num_prompt_tokens=THRESHOLD + 1)
    assert (d.route, d.kv_codec) == ("prfaas", "int4-rotated")
    assert d.kv_codec_reason == "configured: [transport] compression = int4-rotated"


def test_a_vllm_prefill_instance_moves_the_kv_uncoded() -> None:
    d = _decide("fp8", utilization=0.0, num_prompt_tokens=THRESHOLD + 1, engine="vllm")
    assert (d.route, d.kv_codec) == ("prfaas", "none")
    assert d.kv_codec_reason.startswith("vllm: its KV connector moves the KV uncoded (configured")


def test_auto_leaves_the_kv_exact_where_the_prefill_instance_encodes_slower_than_the_link() -> None:
    """r0 reports fp8 at 0.5e9 bytes/s, half the link's 1e9: coding would be the bottleneck."""
    slow = {"fp8": 0.5e9, "int4-rotated": 5e9}  # only "auto"'s codec counts
    d = _decide("auto", utilization=0.9, num_prompt_tokens=THRESHOLD + 1, encode_rates=slow)
    assert (d.route, d.kv_codec) == ("prfaas", "none")
    assert d.kv_codec_reason == (
        "auto-codec-slower: fp8 encodes 0.500 GB/s < link 1.000 GB/s (utilization 0.90 >= 0.80)"
    )
    assert route_headers(d)["x-prfaas-kv-codec-reason"].startswith("auto-codec-slower: ")
    fast = _decide("auto", 0.9, THRESHOLD + 1, encode_rates={"fp8": 2e9})
    assert (fast.kv_codec, fast.kv_codec_reason) == (
        "fp8",
        "auto-link-bound: utilization 0.90 >= 0.80",
    )


def test_a_configured_codec_is_kept_whatever_its_rate() -> None:
    d = _decide("fp8", utilization=0.9, num_prompt_tokens=THRESHOLD + 1, encode_rates={"fp8": 1e6})
    assert (d.kv_codec, d.kv_codec_reason) == ("fp8", "configured: [transport] compression = fp8")


def test_a_burst_routed_before_any_poll_spreads_over_the_prefill_instances() -> None:
    """Three short requests decided in a row, with no poll and no job posted between them (one
    turn of the router's event loop): each sees the ones before it, so 10, 8 and 5 tokens go to
    p0, p1 (8 < 10) and p1 again (8 < 10); without the count all three go to p0."""
    clusters = (prfaas(Node("r0")), pd(Node("p0"), Node("p1"), decode("d0")))
    spec = TopologySpec(clusters, threshold=THRESHOLD, link_gbps=LINK_GBPS, port_base=18000)
    topology = spec.topology()
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    prefixes = RouterPrefixIndex(None, topology.instances, client=None)  # type: ignore[arg-type]
    dispatcher = Dispatcher(topology, monitor, None, RouterMetrics(), prefixes)  # type: ignore[arg-type]
    picks = [dispatcher.decide(f"r{k}", list(range(n))) for k, n in enumerate((10, 8, 5))]
    assert [d.route for d in picks] == ["pd_prefill"] * 3
    assert [d.prefill.config.name for d in picks if d.prefill] == ["p0", "p1", "p1"]
    assert monitor.states["p1"].load().num_queued_tokens == 13
    assert monitor.states["p0"].unpolled_tokens == 10
