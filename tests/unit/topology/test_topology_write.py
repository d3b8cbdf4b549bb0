"""The topology writer: any topology the factory builds, and every key a file can set, is written
as TOML that the loader reads back into an equal topology; "auto" is written as its number, a
threshold the deployment implies is left out, the token may go to a file of the caller's, and
strings and keys of any characters survive the writing."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.policy.controller import ControllerConfig
from prfaas.topology import (
    InstanceConfig,
    LinkConfig,
    PrefixCacheConfig,
    Topology,
    load_topology,
    parse_topology,
)
from prfaas.topology.keys import MAX_INTEGER
from prfaas.topology.write import toml_text, topology_to_dict, topology_to_toml, write_topology
from topologies import Cluster, Node, TopologySpec, decode, pd, prfaas

REPO_ROOT = Path(__file__).resolve().parents[3]
HARDWARE = ("h20", "h200", "h100", "b200")
EMULATED = ("paper-1t", "nemotron-3-nano", "gpt-oss-120b", "qwen3-next-80b")
LATENCIES = (("h20", "quadratic:0.469,1.3e-4,2.945e-10"), ("h200", "profile:paper-1t-h200"))


def _read_back(topology: Topology, base_dir: Path = Path(".")) -> Topology:
    return parse_topology(tomllib.loads(topology_to_toml(topology)), base_dir, source="written")


# ---- strategies: the factory's options and every other key -----------------------------------

_positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
_non_negative = st.one_of(st.just(0.0), _positive)
_secret = st.text(min_size=1, max_size=24).filter(lambda s: bool(s.strip()))
_api_key = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1)


@st.composite
def _nodes(draw: st.DrawFn, prefix: str, role: str, count: st.SearchStrategy[int]) -> list[Node]:
    nodes = []
    for i in range(draw(count)):
        kv = role == "decode" or draw(st.booleans())
        listen = draw(st.sampled_from([None, f"0.0.0.0:{9000 + i}"])) if kv else None
        nodes.append(
            Node(
                f"{prefix}{i}",
                role,
                hardware=draw(st.sampled_from(HARDWARE)),
                kv=kv,
                kv_listen=listen,
                num_gpus=draw(st.integers(1, 1024)),
            )
        )
    return nodes


@st.composite
def _specs(draw: st.DrawFn) -> TopologySpec:
    """A valid spec: the deployment has the clusters it needs, and a controller has every PD
    instance with a KV receiver."""
    deployment = draw(st.sampled_from(["prfaas", "homogeneous", "naive"]))
    with_controller = deployment == "prfaas" and draw(st.booleans())
    remote = draw(_nodes("r", "prefill", st.integers(0 if deployment == "homogeneous" else 1, 3)))
    local = draw(_nodes("p", "prefill", st.integers(1 if deployment == "homogeneous" else 0, 2)))
    if with_controller:
        local = [dataclasses.replace(n, kv=True) for n in local]
    local += draw(_nodes("d", "decode", st.integers(1, 2)))
    clusters: tuple[Cluster, ...] = (pd(*local, name="local"),)
    if remote:
        clusters = (prfaas(*remote, name="remote"), *clusters)
    thresholds = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
    if deployment != "prfaas":
        thresholds = st.one_of(st.none(), thresholds)
    return TopologySpec(
        clusters=clusters,
        engine=draw(st.sampled_from(["torch", "emulated"])),
        emulate=draw(st.sampled_from(EMULATED)),
        time_scale=draw(_non_negative),
        payload_scale=draw(st.floats(min_value=1e-6, max_value=1.0)),
        prefill_latency=tuple(sorted(draw(st.sets(st.sampled_from(LATENCIES))))),
        deployment=deployment,
        threshold=draw(thresholds),
        failure=draw(st.sampled_from(["recompute", "fail"])),
        transfer_deadline_s=draw(_positive),
        drain_s=draw(_positive),
        api_keys=tuple(draw(st.lists(_api_key, max_size=3))),
        link_gbps=draw(_positive),
        token=draw(_secret),
        prefix_cache=draw(
            st.one_of(
                st.none(),
                st.builds(PrefixCacheConfig, st.integers(1, 1 << 20), st.integers(0, 1 << 40)),
            )
        ),
        controller=draw(_controllers()) if with_controller else None,
        driven=draw(st.booleans()),
        port_base=20000,
    )


def _controllers() -> st.SearchStrategy[ControllerConfig]:
    return st.builds(
        ControllerConfig,
        period_s=_positive,
        window_s=_positive,
        min_samples=st.integers(1, 4096),  # <= max_samples
        persistence_ticks=st.integers(1, 100),
        threshold_persistence_ticks=st.integers(1, 100),
        cooldown_s=_non_negative,
        min_role_gain=_non_negative,
        threshold_min_gain=_non_negative,
        link_change_share=_non_negative,
    )


_prices = st.none() | st.floats(0, 1e6)  # USD; None: the key is absent


@st.composite
def _built(draw: st.DrawFn) -> Topology:
    """A factory topology, with the keys the factory leaves at their defaults drawn as well."""
    topology = draw(_specs()).in_code()
    model = dataclasses.replace(
        topology.model,
        dtype=draw(st.sampled_from(["fp32", "bf16"])),
        seed=draw(st.integers(0, MAX_INTEGER)),
    )
    router = dataclasses.replace(
        topology.router,
        max_body_bytes=draw(st.integers(1, MAX_INTEGER)),
        max_concurrent_per_key=draw(st.integers(1, 1 << 20)),
    )
    transport = dataclasses.replace(
        topology.transport,
        num_connections=draw(st.integers(1, 64)),
        receive_pool_bytes=draw(st.integers(4 << 20, 1 << 40)),
        congestion_control=draw(st.sampled_from([None, "cubic", "bbr", "reno"])),
        compression=draw(st.sampled_from(["none", "fp8", "int4-rotated", "auto"])),
    )
    link = LinkConfig(
        gbps=topology.link.gbps,
        rtt_ms=draw(st.floats(0, 1000)),
        jitter_ms=draw(st.floats(0, 1000)),
        jitter_distribution=draw(st.sampled_from(["normal", "pareto", "uniform"])),
        loss_pct=draw(st.floats(0, 99)),
        payload_efficiency=draw(st.floats(0.01, 1)),
        mss_bytes=draw(st.integers(88, 65483)),
        price_per_gb=draw(_prices),
    )
    clusters = tuple(
        dataclasses.replace(c, price_per_gpu_hour=draw(_prices)) for c in topology.clusters
    )
    topology = dataclasses.replace(
        topology, model=model, router=router, transport=transport, link=link, clusters=clusters
    )
    return draw(_with_providers(topology))


@st.composite
def _links(draw: st.DrawFn) -> LinkConfig:
    """A `[clusters.link]`: any of its keys drawn, the rest at their defaults."""
    return LinkConfig(
        gbps=draw(_positive),
        rtt_ms=draw(st.sampled_from([0.0, 25.0])),
        loss_pct=draw(st.floats(0, 99)),
        price_per_gb=draw(_prices),
    )


def _copy(instance: InstanceConfig, cluster: str, name: str, port: int) -> InstanceConfig:
    """`instance` renamed into `cluster`, on addresses of its own."""
    kv = None if instance.kv is None else f"127.0.0.2:{port + 1}"
    http = f"127.0.0.2:{port}"
    return dataclasses.replace(instance, name=name, cluster=cluster, http=http, kv=kv)


@st.composite
def _with_providers(draw: st.DrawFn, topology: Topology) -> Topology:
    """`topology` as it is, or, for a 'prfaas' deployment without a controller, with a second
    prefill provider (its own link or none), every cluster priced and a TTFT target."""
    target = st.none() | st.floats(1e-3, 86400)  # a single provider keeps (and ignores) one
    policy = dataclasses.replace(topology.policy, ttft_target_s=draw(target))
    topology = dataclasses.replace(topology, policy=policy)
    plain = topology.policy.deployment != "prfaas" or topology.controller.enabled
    if plain or not draw(st.booleans()):
        return topology
    first = dataclasses.replace(topology.providers[0], link=draw(st.none() | _links()))
    second = dataclasses.replace(
        first,
        name="second",
        instances=tuple(
            _copy(i, "second", f"s{k}", 21000 + 2 * k) for k, i in enumerate(first.instances)
        ),
        link=draw(st.none() | _links()),
    )
    prices = st.floats(0, 1e6)
    clusters = tuple(
        dataclasses.replace(
            first if c is topology.providers[0] else c, price_per_gpu_hour=draw(prices)
        )
        for c in (*topology.clusters, second)
    )
    policy = dataclasses.replace(topology.policy, ttft_target_s=draw(st.floats(1e-3, 86400)))
    return dataclasses.replace(topology, clusters=clusters, policy=policy)


# ---- the round trip -------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(topology=_built())
def test_every_written_topology_reads_back_equal(topology: Topology) -> None:
    loaded = _read_back(topology)
    assert loaded == topology
    assert loaded.transport.token == topology.transport.token  # equal, secrets included
    assert loaded.router.api_keys == topology.router.api_keys
    assert _read_back(loaded) == loaded


@settings(max_examples=20, deadline=None)
@given(spec=_specs())
def test_the_factory_topology_is_the_one_built_in_code(spec: TopologySpec) -> None:
    assert spec.topology() == spec.in_code()


def test_the_defaults_write_and_read_back(tmp_path: Path) -> None:
    spec = TopologySpec(port_base=18000)  # free ports would differ from call to call
    assert load_topology(spec.write(tmp_path)) == spec.topology()
    assert (tmp_path / "topology.toml").stat().st_mode & 0o777 == 0o600


def test_an_auto_threshold_is_written_as_its_number() -> None:
    auto = load_topology(REPO_ROOT / "examples" / "emulated-1t.toml")
    assert auto.policy.threshold_source.startswith("auto")
    written = topology_to_dict(auto)["policy"]
    assert isinstance(written, dict) and written["threshold"] == auto.policy.threshold_tokens
    loaded = _read_back(auto)
    assert loaded.policy.threshold_source == "fixed"
    assert loaded == dataclasses.replace(auto, policy=dataclasses.replace(loaded.policy))
    assert loaded.policy.threshold_tokens == auto.policy.threshold_tokens


@pytest.mark.parametrize(("deployment", "tokens"), [("homogeneous", math.inf), ("naive", 0.0)])
def test_an_implied_threshold_is_left_out(deployment: str, tokens: float) -> None:
    clusters = (prfaas(Node("r0")), pd(Node("p0"), decode("d0")))
    topology = TopologySpec(clusters, deployment=deployment, threshold=None).topology()
    assert topology.policy.threshold_tokens == tokens
    policy = topology_to_dict(topology)["policy"]
    assert isinstance(policy, dict) and "threshold" not in policy
    assert _read_back(topology) == topology


def test_the_token_may_go_to_a_file_of_the_callers(tmp_path: Path) -> None:
    topology = TopologySpec(token="kept-apart").topology()
    token_file = tmp_path / "transport.token"
    token_file.write_text("kept-apart")
    path = write_topology(tmp_path / "t.toml", topology, token_file=token_file, comment="a\nb")
    text = path.read_text()
    assert text.startswith("# a\n# b\n") and "kept-apart" not in text
    assert load_topology(path) == topology


def test_tls_files_and_a_checkpoint_directory_read_back(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    topology = TopologySpec(model="ckpt", base_dir=tmp_path).topology()
    assert topology.model.name == str(tmp_path / "ckpt")
    tls = dataclasses.replace(
        topology.transport,
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
        tls_ca=str(tmp_path / "ca.pem"),
    )
    with_tls = dataclasses.replace(topology, transport=tls)
    assert _read_back(with_tls, Path("/")) == with_tls


def test_a_controller_knob_no_key_holds_is_refused() -> None:
    spec = TopologySpec(controller=ControllerConfig(max_samples=70))
    with pytest.raises(ValueError, match="max_samples"):
        topology_to_toml(spec.in_code())


# ---- the TOML writer ------------------------------------------------------------------------


@given(key=st.text(), value=st.text())
def test_any_string_and_key_survive(key: str, value: str) -> None:
    data = {"table": {key: value, "items": [value, key]}}
    assert tomllib.loads(toml_text(data)) == data  # type: ignore[arg-type]


@given(value=st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1) | st.booleans())
def test_numbers_and_booleans_survive(value: float | int | bool) -> None:
    read = tomllib.loads(toml_text({"t": {"v": value}}))["t"]["v"]
    assert read == value and type(read) is type(value)
