"""The testbed's pure plan: scaling arithmetic, names and addresses, the generated topology."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.errors import UserError
from prfaas.testbed.layout import (
    TestbedLayout,
    TestbedScale,
    TestbedSpec,
    check_name,
    resolve_threshold,
    scaled_transfer_s,
    tbf_burst_bytes,
    topology_text,
    wan_mtu_bytes,
    wire_gbps,
)
from prfaas.topology import Topology, parse_topology

GB = 1e9


def test_wire_rate_is_nominal_times_payload_over_time_scale() -> None:
    assert TestbedScale(100.0, 1.0, 0.01).wire_gbps == pytest.approx(1.0)
    assert TestbedScale(100.0, 0.1, 0.001).wire_gbps == pytest.approx(1.0)
    assert wire_gbps(10.0, 2.0, 0.5) == pytest.approx(2.5)


@settings(max_examples=100, deadline=None)
@given(
    nominal=st.floats(1.0, 800.0),
    time_scale=st.floats(0.05, 10.0),
    payload_scale=st.floats(1e-3, 1.0),
    num_bytes=st.floats(1e6, 1e11),
)
def test_transfer_time_scales_exactly_like_compute(
    nominal: float, time_scale: float, payload_scale: float, num_bytes: float
) -> None:
    """s x (the paper's transfer time): the ratio to s x T_prefill is the paper's."""
    try:
        scale = TestbedScale(nominal, time_scale, payload_scale)
    except UserError:
        return  # wire rate outside the bounds: refused, tested below
    paper_s = num_bytes * 8 / (nominal * GB)
    assert scaled_transfer_s(num_bytes, scale) == pytest.approx(time_scale * paper_s, rel=1e-9)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((100.0, 0.0, 0.01), "time scale"),
        ((100.0, 1.0, 0.0), "payload scale"),
        ((100.0, 1.0, 1.5), "payload scale"),
        ((0.0, 1.0, 0.01), "nominal"),
        ((100.0, 0.001, 1.0), "outside"),  # 100 000 Gbps on the wire
        ((1e-3, 1.0, 1e-3), "outside"),  # 1 kbit/s
    ],
)
def test_bad_scaling_is_refused_with_its_reason(
    args: tuple[float, float, float], match: str
) -> None:
    with pytest.raises(UserError, match=match):
        TestbedScale(*args)


def test_with_nominal_keeps_the_factors() -> None:
    scale = TestbedScale(100.0, 0.5, 0.01).with_nominal(10.0)
    assert (scale.time_scale, scale.payload_scale) == (0.5, 0.01)
    assert scale.wire_gbps == pytest.approx(0.2)


def test_burst_is_two_ms_of_the_rate_with_a_floor() -> None:
    assert tbf_burst_bytes(1.0) == 250_000
    assert tbf_burst_bytes(0.001) == 64 << 10
    assert tbf_burst_bytes(10.0) == 2_500_000


def test_the_wan_mtu_is_half_a_millisecond_of_the_rate_within_ethernet_and_64000() -> None:
    """Slow scaled wires get short packets (a 64 KB packet at 0.02 Gbit/s is 26 ms on the
    wire, which sets off spurious tail loss probes); fast ones the delay line's large ones."""
    assert wan_mtu_bytes(0.02) == 1500
    assert wan_mtu_bytes(0.2) == 12_500
    assert wan_mtu_bytes(1.0) == 62_500
    assert wan_mtu_bytes(2.0) == 64_000
    for gbps in (0.02, 0.2, 1.0):  # the delay line's packet rate stays near 2,000/s
        assert gbps * 1e9 / 8 / wan_mtu_bytes(gbps) <= 2_000


@pytest.mark.parametrize("name", ["", "A", "1tb", "tb_x", "x" * 21, "tb/x"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="testbed name"):
        check_name(name)


def test_layout_names_namespaces_after_the_testbed() -> None:
    layout = TestbedLayout("tb-a")
    assert layout.namespaces == ("tb-a-prfaas", "tb-a-pd", "tb-a-client", "tb-a-wan")
    assert layout.wan_prfaas.ns == "tb-a-prfaas" and layout.wan_pd.ns == "tb-a-pd"
    assert layout.client.ns == "tb-a-client" and layout.client_pd.ns == "tb-a-pd"
    assert all(len(end.dev) <= 15 for end in (layout.wan_prfaas, layout.wan_pd, layout.client))


def _topology(spec: TestbedSpec, threshold: float = 1000.0) -> tuple[Topology, TestbedLayout]:
    layout = TestbedLayout(spec.name)
    text = topology_text(spec, layout, None, threshold, spec.scale.wire_gbps)
    return parse_topology(tomllib.loads(text), Path("."), source="testbed"), layout


def test_generated_topology_places_every_service_on_its_side_of_the_wan() -> None:
    spec = TestbedSpec(name="tb", num_prfaas_prefill=2, num_pd_prefill=1, num_pd_decode=2)
    topology, layout = _topology(spec)
    assert topology.link.gbps == pytest.approx(spec.scale.wire_gbps)  # the router sees the wire
    assert topology.model.payload_scale == 0.01 and topology.model.time_scale == 1.0
    assert topology.router.http == f"{layout.client_pd.ip}:8000"
    prfaas = topology.clusters_of_kind("prfaas")[0]
    assert [i.name for i in prfaas.instances] == ["prfaas-prefill-0", "prfaas-prefill-1"]
    assert all(i.http.startswith(layout.wan_prfaas.ip + ":") for i in prfaas.instances)
    assert all(i.hardware == "h200" and i.engine == "emulated" for i in prfaas.instances)
    pd = topology.clusters_of_kind("pd")[0]
    assert all(i.hardware == "h20" and i.http.startswith("127.0.0.1:") for i in pd.instances)
    decode = pd.by_role("decode")
    assert [i.kv for i in decode] == [f"{layout.wan_pd.ip}:9400", f"{layout.wan_pd.ip}:9401"]
    assert topology.policy.threshold_tokens == 1000.0


def test_the_topology_carries_the_delay_lines_path_to_the_router_and_the_simulator() -> None:
    """25 ms one way, 4 ms uniform jitter, 0.01% loss: the round trip is 50 ms in live seconds
    (`[link] rtt_ms`); the simulator replaying a run at time scale 0.5 takes it as 100 modelled
    ms."""
    from prfaas.testbed.delay_schedule import DelaySettings
    from prfaas.topology.derived import model_link_path

    delay = DelaySettings(delay_ms=25.0, jitter_ms=4.0, loss_pct=0.01)
    spec = TestbedSpec(name="tb", delay=delay, scale=TestbedScale(100.0, 0.5, 0.01))
    topology, _ = _topology(spec)
    link = topology.link
    assert (link.rtt_ms, link.jitter_ms, link.loss_pct) == (50.0, 4.0, 0.01)
    assert link.jitter_distribution == "uniform"
    assert link.mss_bytes == wan_mtu_bytes(spec.scale.wire_gbps) - 52  # IPv4, TCP, timestamps
    path = model_link_path(topology)
    assert path.rtt_s == pytest.approx(0.1) and path.jitter_s == pytest.approx(0.008)
    assert path.mss_bytes == link.mss_bytes * 100  # a wire segment carries 100x its real KV
    assert _topology(TestbedSpec(name="tb"))[0].link.rtt_ms == 0.0


def test_torch_topology_is_unscaled() -> None:
    spec = TestbedSpec(name="tb", engine="torch", scale=TestbedScale(1.0, 1.0, 1.0), threshold=64)
    topology, _ = _topology(spec, 64.0)
    assert topology.model.payload_scale == 1.0 and topology.link.gbps == 1.0
    assert all(i.engine == "torch" for i in topology.instances)


def test_auto_threshold_is_solved_on_the_nominal_deployment() -> None:
    """The same t whatever the scaling: Eq. 7 sees the paper's link, not the wire."""
    t_paper, source = resolve_threshold(TestbedSpec(name="tb"))
    t_scaled, _ = resolve_threshold(TestbedSpec(name="tb", scale=TestbedScale(100.0, 0.1, 0.001)))
    assert t_paper is not None and t_paper == t_scaled and t_paper > 0 and "100 Gbps" in source
    t_slow_link, _ = resolve_threshold(TestbedSpec(name="tb", scale=TestbedScale(1.0)))
    assert t_slow_link is not None and t_slow_link > t_paper  # a slower link offloads fewer
    assert resolve_threshold(TestbedSpec(name="tb", threshold=500.0)) == (500.0, "fixed")


def test_auto_threshold_counts_loss_on_the_wans_own_segments() -> None:
    """100 ms and 0.01% loss on the paper's link, scaled to 0.2 Gbit/s on the wire: a segment of
    the WAN (MTU 12,500 bytes) carries 500x its bytes of real KV, so the Mathis bound of 4
    connections is far above the link and t stays what it is without delay; counted in 1,448-byte
    segments the bound would be 57 Mbit/s and nearly nothing would offload."""
    from prfaas.testbed.delay_schedule import DelaySettings

    scale = TestbedScale(100.0, 1.0, 0.002)
    t_near, _ = resolve_threshold(TestbedSpec(name="tb", scale=scale))
    far = DelaySettings(delay_ms=50.0, jitter_ms=10.0, loss_pct=0.01)
    t_far, _ = resolve_threshold(TestbedSpec(name="tb", scale=scale, delay=far))
    assert t_near is not None and t_far == pytest.approx(t_near, rel=0.05)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"engine": "onnx"}, "engine"),
        ({"num_pd_decode": 0}, "instances"),
        ({"num_prfaas_prefill": 17}, "instances"),
        ({"engine": "torch"}, "auto"),
        ({"engine": "torch", "threshold": 64.0}, "scaling"),
        ({"deployment": "disaggregated"}, "deployment must be"),
        ({"num_prfaas_prefill": 0}, "'prfaas' needs at least one PrfaaS prefill"),
        ({"deployment": "naive", "num_prfaas_prefill": 0}, "'naive' needs at least one PrfaaS"),
        ({"deployment": "homogeneous", "num_pd_prefill": 0}, "at least one PD prefill"),
        ({"deployment": "homogeneous", "num_pd_decode": 0}, "PD decode"),
        ({"deployment": "naive", "num_pd_decode": 0}, "PD decode"),
        ({"deployment": "homogeneous", "controller": True}, "controller adapts a 'prfaas'"),
        ({"deployment": "naive", "controller": True}, "controller adapts a 'prfaas'"),
    ],
)
def test_bad_specs_are_refused(fields: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        TestbedSpec(**fields)  # type: ignore[arg-type]


def _deployed(spec: TestbedSpec) -> Topology:
    """The topology `up` would write for `spec`, its threshold resolved as `up` does."""
    return _topology_of(spec, resolve_threshold(spec)[0])


def _topology_of(spec: TestbedSpec, threshold: float | str | None) -> Topology:
    text = topology_text(spec, TestbedLayout(spec.name), None, threshold, spec.scale.wire_gbps)
    return parse_topology(tomllib.loads(text), Path("."), source="testbed")


def test_equal_hardware_homogeneous_baseline_has_no_prfaas_cluster() -> None:
    """`--deployment homogeneous --prfaas 0 --pd-prefill 10 --pd-decode 2`: 12 H20 instances."""
    spec = TestbedSpec(
        name="tb",
        deployment="homogeneous",
        num_prfaas_prefill=0,
        num_pd_prefill=10,
        num_pd_decode=2,
    )
    assert resolve_threshold(spec)[0] is None
    topology = _deployed(spec)
    assert topology.policy.deployment == "homogeneous"
    assert topology.policy.threshold_tokens == math.inf  # every prefill stays local
    assert [c.kind for c in topology.clusters] == ["pd"]
    assert len(topology.instances) == 12 and {i.hardware for i in topology.instances} == {"h20"}
    assert not topology.controller.enabled


def test_homogeneous_with_prfaas_instances_keeps_their_cluster() -> None:
    spec = TestbedSpec(name="tb", deployment="homogeneous", num_prfaas_prefill=2)
    topology = _deployed(spec)
    assert [c.kind for c in topology.clusters] == ["prfaas", "pd"]
    assert topology.policy.threshold_tokens == math.inf


def test_naive_deployment_offloads_every_prefill() -> None:
    spec = TestbedSpec(name="tb", deployment="naive", num_pd_prefill=0)
    topology = _deployed(spec)
    assert topology.policy.deployment == "naive" and topology.policy.threshold_tokens == 0.0
    assert [c.kind for c in topology.clusters] == ["prfaas", "pd"]
    assert not topology.controller.enabled


def test_prfaas_deployment_is_static_unless_the_controller_is_asked_for() -> None:
    """Equal to the homogeneous baseline above: 4 H200 + 8 H20 instances."""
    counts = {"num_prfaas_prefill": 4, "num_pd_prefill": 4, "num_pd_decode": 4}
    static = _deployed(TestbedSpec(name="tb", **counts))  # type: ignore[arg-type]
    assert static.policy.deployment == "prfaas" and not static.controller.enabled
    assert all(i.kv is None for i in static.clusters_of_kind("pd")[0].by_role("prefill"))
    adaptive = _deployed(TestbedSpec(name="tb", controller=True, **counts))  # type: ignore[arg-type]
    assert adaptive.controller.enabled and not adaptive.controller.driven
    assert adaptive.policy.threshold_tokens == static.policy.threshold_tokens > 0
    pd = adaptive.clusters_of_kind("pd")[0]
    kv = [i.kv for i in pd.instances]  # every PD instance may change role: each receives KV
    assert all(kv) and len(set(kv)) == len(kv) == 8
    assert sum(i.hardware == "h200" for i in adaptive.instances) == 4


@pytest.mark.parametrize("deployment", ["homogeneous", "naive"])
def test_a_deployment_without_threshold_writes_no_threshold_key(deployment: str) -> None:
    spec = TestbedSpec(name="tb", deployment=deployment)
    text = topology_text(spec, TestbedLayout("tb"), None, None, 1.0)
    policy = tomllib.loads(text)["policy"]
    assert policy["deployment"] == deployment and "threshold" not in policy


def _model_table(extra: str) -> str:
    spec = TestbedSpec(name="tb")
    text = topology_text(spec, TestbedLayout("tb"), None, 1000.0, 1.0)
    return text.replace("payload_scale = 0.01\n", extra)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", '"half"'])
def test_topology_refuses_a_payload_scale_outside_zero_to_one(value: str) -> None:
    data = tomllib.loads(_model_table(f"payload_scale = {value}\n"))
    with pytest.raises(UserError, match="payload_scale"):
        parse_topology(data, Path("."), source="t")


def test_topology_payload_scale_defaults_to_one() -> None:
    data = tomllib.loads(_model_table(""))
    assert parse_topology(data, Path("."), source="t").model.payload_scale == 1.0


def test_launcher_runs_each_service_under_its_command_prefix(tmp_path: Path) -> None:
    """`echo` as the prefix: the child prints the command it would have run in the namespace."""
    from prfaas.launch.local import Launcher

    topology, _ = _topology(TestbedSpec(name="tb"))
    prefixes = {"router": ["echo", "in-pd"], "prfaas-prefill-0": ["echo", "in-prfaas"]}
    launcher = Launcher(tmp_path / "t.toml", topology, tmp_path, command_prefix=prefixes)
    launcher._spawn("router", ["router"])
    launcher._spawn("prfaas-prefill-0", ["prefill", "--instance", "prfaas-prefill-0"])
    for proc in launcher.procs.values():
        proc.wait(timeout=10)
    assert (tmp_path / "router.log").read_text().startswith("in-pd ")
    log = (tmp_path / "prfaas-prefill-0.log").read_text()
    assert log.startswith("in-prfaas ") and "prefill --instance prfaas-prefill-0" in log
    launcher.restart("router")  # the same command, prefix included
    launcher.procs["router"].wait(timeout=10)
    assert (tmp_path / "router.log").read_text().count("in-pd ") == 2
