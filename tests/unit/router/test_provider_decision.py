"""The router's choice among several prefill providers, without processes: a real `Dispatcher`
over a `ClusterMonitor` whose instances are marked ready and whose prefill queues are set as a
poll would set them. Providers "cheap" (1 $/GPU-h, 1 ms per token) and "fast" (3 $/GPU-h,
0.5 ms per token), 8 GPUs each, a PD cluster at 4 ms per token, a 2 s TTFT target: a long
request goes to cheap while cheap's predicted TTFT meets the target, to fast once cheap's queue
pushes it past, and stays local when neither meets it; the reason names every cost. Each
provider's link view has its own capacity and RTT; each prefill instance's transport is sized to
its own cluster's link."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from prfaas.instance.engines import build_engine
from prfaas.instance.prefill import PrefillService
from prfaas.messages import InstanceStats
from prfaas.router.app import build_router_app, route_record
from prfaas.router.decision import Dispatch, DispatchTrace
from prfaas.router.dispatch import Dispatcher
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.service.auth import TOKEN_ENV
from prfaas.service.http import transport_config
from prfaas.topology import LinkConfig, Topology
from topologies import TopologySpec, two_providers

THRESHOLD = 16
TTFT_TARGET_S = 2.0
NUM_LONG = 1000  # tokens: cheap 1 s, fast 0.5 s, PD 4 s of prefill
LATENCIES = (
    ("b200", "quadratic:0,5e-4,0"),  # fast
    ("h100", "quadratic:0,1e-3,0"),  # cheap
    ("h20", "quadratic:0,4e-3,0"),  # PD
)
CHEAP_LINK = LinkConfig(gbps=40, rtt_ms=30)


def _topology(
    ttft_target_s: float = TTFT_TARGET_S, cheap_link: LinkConfig = CHEAP_LINK
) -> Topology:
    spec = TopologySpec(
        two_providers(cheap_link),
        engine="emulated",
        threshold=THRESHOLD,
        ttft_target_s=ttft_target_s,
        prefill_latency=LATENCIES,
        payload_scale=1e-3,
        port_base=18000,
    )
    return spec.topology()


def _dispatcher(topology: Topology, queued_s: dict[str, float]) -> Dispatcher:
    """Every instance ready, each prefill instance polled with `queued_s` seconds queued."""
    monitor = ClusterMonitor(topology, client=None)  # type: ignore[arg-type]  # never polls
    for name, state in monitor.states.items():
        state.is_ready = True
        queued = queued_s.get(name, 0.0)
        state.stats = InstanceStats(name, state.config.role, 0, 0, 0, queued)
    prefixes = RouterPrefixIndex(None, topology.instances, client=None)  # type: ignore[arg-type]
    return Dispatcher(topology, monitor, None, RouterMetrics(), prefixes)  # type: ignore[arg-type]


def _decide(queued_s: dict[str, float], num_tokens: int = NUM_LONG, **kwargs: float) -> Dispatch:
    return _dispatcher(_topology(**kwargs), queued_s).decide("req", list(range(num_tokens)))


def _where(d: Dispatch) -> tuple[str, str | None, str | None]:
    """(route, provider, prefill instance) of a decision."""
    return d.route, d.provider, d.prefill.config.name if d.prefill else None


def test_an_idle_cheap_provider_takes_a_long_request() -> None:
    d = _decide({})
    assert _where(d) == (
        "prfaas",
        "cheap",
        "cheap-p0",
    )
    # cheap: 1 s x 8 GPUs x 1 $/h; fast: 0.5 s x 8 x 3 $/h
    assert d.reason.startswith(
        "cheapest: provider cheap $0.0022 (ttft 1.03 s <= 2 s) vs fast $0.0033"
    )
    assert d.rule == "cheapest" and d.reason.endswith(f"l={NUM_LONG} > t={THRESHOLD}")
    assert d.log_fields()["provider"] == "cheap"
    assert DispatchTrace.of(d).summary(0.0)["provider"] == "cheap"
    assert route_record(d, 0.0).provider == "cheap"


def test_a_queued_cheap_provider_gives_way_to_the_fast_one() -> None:
    d = _decide({"cheap-p0": 1.5})  # cheap's TTFT: 1.5 + 1 s > 2 s
    assert _where(d) == (
        "prfaas",
        "fast",
        "fast-p0",
    )
    assert d.reason.startswith(
        "cheapest: provider fast $0.0033 (ttft 0.5 s <= 2 s) vs cheap $0.0022 (ttft 2.53 s > 2 s)"
    )


def test_a_burst_within_one_poll_sees_the_queue_it_sends() -> None:
    """No poll between two long requests: the first's predicted 1 s on cheap counts in cheap's
    queue for the second (1 + 1 s + the link's drain > 2 s), which goes to fast; a poll
    answering afterwards reports the instance's own queue and clears the router's prediction."""
    dispatcher = _dispatcher(_topology(), {})
    first = dispatcher.decide("a", list(range(NUM_LONG)))
    second = dispatcher.decide("b", list(range(NUM_LONG)))
    assert (first.provider, second.provider) == ("cheap", "fast")
    cheap = dispatcher.monitor.states["cheap-p0"]
    assert cheap.load().queued_prefill_s == pytest.approx(1.0)


def test_an_answered_poll_clears_the_predicted_queue() -> None:
    """The poll's answer includes what was sent before it began: the prediction (seconds and
    tokens) goes."""

    class Reply:
        async def __aenter__(self) -> Reply:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def raise_for_status(self) -> None:
            return None

        async def json(self) -> dict[str, object]:
            return InstanceStats("cheap-p0", "prefill", 0, 0, 0, 0.25).to_dict()

    class Client:
        def get(self, url: str, timeout: object) -> Reply:
            return Reply()

    dispatcher = _dispatcher(_topology(), {})
    dispatcher.decide("a", list(range(NUM_LONG)))
    monitor = dispatcher.monitor
    monitor.client = Client()  # type: ignore[assignment]
    cheap = monitor.states["cheap-p0"]
    assert cheap.load().num_queued_tokens == NUM_LONG  # counted at the decision
    assert asyncio.run(monitor.poll(cheap, 1.0))
    assert cheap.load().queued_prefill_s == pytest.approx(0.25)
    assert cheap.unpolled_tokens == 0 and cheap.load().num_queued_tokens == 0


def test_nothing_meeting_the_target_goes_where_the_first_token_is_predicted_soonest() -> None:
    """Cheap 2.53 s, fast 2.3 s, local 4 s against a 2 s target: fast, the soonest."""
    d = _decide({"cheap-p0": 1.5, "fast-p0": 1.8})
    assert _where(d) == (
        "prfaas",
        "fast",
        "fast-p0",
    )
    assert d.rule == "fastest"
    assert "no provider meets ttft 2 s" in d.reason and "nor local $0.0178 (ttft 4 s)" in d.reason
    assert "fast $0.0033 (ttft 2.3 s)" in d.reason and "cheap $0.0022 (ttft 2.53 s)" in d.reason
    assert d.log_fields()["provider"] == "fast"


def test_a_local_prefill_meeting_the_target_keeps_the_request_local() -> None:
    """Both providers queued past the target, the PD prefill idle with a target it meets."""
    d = _decide({"cheap-p0": 30.0, "fast-p0": 30.0}, ttft_target_s=5.0)
    assert _where(d) == (
        "pd_prefill",
        None,
        "pd-p0",
    )
    assert d.rule == "local" and "local $0.0178 (ttft 4 s)" in d.reason


def test_a_huge_target_sends_everything_to_the_cheap_provider() -> None:
    d = _decide({"cheap-p0": 60.0, "fast-p0": 0.0}, ttft_target_s=86400)
    assert (d.route, d.provider) == ("prfaas", "cheap")


def test_a_short_request_stays_local_by_the_route_rule() -> None:
    d = _decide({}, num_tokens=THRESHOLD)
    assert (d.route, d.provider) == ("pd_prefill", None)
    assert d.reason.endswith(f"l={THRESHOLD} <= t={THRESHOLD}") and "$" not in d.reason


def test_a_provider_without_a_ready_instance_is_not_offered() -> None:
    topology = _topology()
    dispatcher = _dispatcher(topology, {})
    dispatcher.monitor.states["cheap-p0"].is_ready = False
    d = dispatcher.decide("req", list(range(NUM_LONG)))
    assert (d.route, d.provider) == ("prfaas", "fast")
    assert "vs" not in d.reason.split(";")[0]  # fast was the only offer


def test_each_provider_has_its_own_link_view() -> None:
    topology = _topology()
    monitor = _dispatcher(topology, {}).monitor
    cheap, fast, pd_cluster = topology.clusters
    cheap_view = monitor.link_view(cheap, pd_cluster)
    fast_view = monitor.link_view(fast, pd_cluster)
    assert cheap_view is not None and fast_view is not None
    assert cheap_view.bandwidth_bytes_per_s == pytest.approx(40e9 / 8)
    assert cheap_view.rtt_s == pytest.approx(0.03)
    assert fast_view.bandwidth_bytes_per_s == pytest.approx(topology.link.bytes_per_s)
    assert fast_view.rtt_s == 0.0


def test_each_prefill_instance_sizes_its_transport_to_its_cluster_link() -> None:
    topology = _topology()
    assert transport_config(topology, cluster="cheap").link_gbps == 40
    assert transport_config(topology, cluster="fast").link_gbps == topology.link.gbps

    async def sender_link_gbps(name: str) -> float:
        instance = topology.instance(name)
        service = PrefillService(topology, instance, build_engine(topology, instance))
        try:
            return service.sender.config.link_gbps
        finally:
            await service.close()

    assert asyncio.run(sender_link_gbps("cheap-p0")) == 40
    assert asyncio.run(sender_link_gbps("fast-p0")) == topology.link.gbps


def test_a_reported_link_capacity_is_refused_with_several_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    topology = _topology()
    headers = {"Authorization": f"Bearer {topology.transport.token}"}
    with TestClient(build_router_app(topology)) as client:
        reply = client.post("/internal/control/link", json={"gbps": 1}, headers=headers)
        assert reply.status_code == 409, reply.text
        assert "2 prefill providers" in reply.json()["error"]["message"]
        state = client.app.state.service.monitor  # type: ignore[attr-defined]
        assert state.link_capacity_of(topology.clusters[0]) == pytest.approx(40e9 / 8)


def test_a_link_view_drains_at_the_payload_rate_and_an_offer_prices_the_wire() -> None:
    """Cheap's link carries payload at half its wire rate (payload_efficiency 0.5): its view's
    capacity is the payload rate, as the simulator's is, while its offer keeps the 40 Gbps wire
    rate (the offer's path takes the efficiency off once, as choose_provider computes goodput)."""
    topology = _topology(cheap_link=LinkConfig(gbps=40, rtt_ms=30, payload_efficiency=0.5))
    dispatcher = _dispatcher(topology, {})
    cheap, _, pd_cluster = topology.clusters
    view = dispatcher.monitor.link_view(cheap, pd_cluster)
    assert view is not None and view.bandwidth_bytes_per_s == pytest.approx(40e9 / 8 * 0.5)
    quoter = dispatcher.quoter
    assert quoter is not None
    offer = quoter.offer(cheap, cheap.instances[0], 0.0, view)
    model = topology.model
    assert offer.link_bytes_per_s == pytest.approx(model.model_bytes_per_s(40e9 / 8))
    assert offer.path.payload_efficiency == 0.5
