"""Placing a topology on Ray without Ray: resource names and needs, the resolved topology built
from the addresses the actors found, port clashes, and the deployment record `status` reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas.errors import UserError
from prfaas.launch.ray_placement import (
    CLUSTER_RESOURCE_SHARE,
    ROUTER_NAME,
    Placement,
    ResourceOptions,
    addresses,
    clashing_owners,
    cluster_resource,
    deployment_record,
    duplicate_addresses,
    instance_needs,
    members_of,
    missing_resources,
    num_ports,
    read_deployment,
    resolve_topology,
    router_cluster,
    router_needs,
)
from prfaas.topology import Topology
from topologies import Node, TopologySpec, pd, prfaas

ROUTER_PORT = 18000


def _topology(engine: str = "emulated", receivers: frozenset[str] = frozenset({"d0"})) -> Topology:
    """r0 (PrfaaS prefill), p0 (PD prefill), d0 (PD decode); `receivers` have `kv`, and a
    `kv_listen` on the wildcard host when any instance besides d0 has one."""
    listen = receivers != {"d0"}

    def node(name: str, role: str, port: int) -> Node:
        kv = name in receivers
        return Node(name, role, kv=kv, kv_listen=f"0.0.0.0:{port + 1}" if kv and listen else None)

    clusters = (
        prfaas(node("r0", "prefill", 18100), name="remote"),
        pd(node("p0", "prefill", 18200), node("d0", "decode", 18300), name="local"),
    )
    spec = TopologySpec(clusters, engine=engine, token="secret-token", port_base=ROUTER_PORT)
    return spec.topology()


def _placements(topology: Topology, host: str = "10.0.0.7", base: int = 30000) -> dict:
    out = {}
    for k, inst in enumerate(topology.instances):
        ports = tuple(base + 10 * k + j for j in range(num_ports(inst)))
        out[inst.name] = Placement(f"node{k}", host, host, ports)
    out[ROUTER_NAME] = Placement("node-r", host, host, ())
    return out


def test_cluster_resources_and_needs_follow_the_engine() -> None:
    topology = _topology("torch")
    r0 = topology.instance("r0")
    options = ResourceOptions(num_cpus_torch=2.0, num_gpus_per_instance=1.0)
    needs = instance_needs(r0, options)
    assert cluster_resource("remote") == "prfaas-cluster-remote"
    assert needs.num_cpus == 2.0 and needs.num_gpus == 1.0
    assert needs.bundle() == {"CPU": 2.0, "GPU": 1.0, "prfaas-cluster-remote": 0.001}
    emulated = instance_needs(_topology("emulated").instance("d0"), ResourceOptions())
    assert emulated.bundle() == {"CPU": 0.25, "prfaas-cluster-local": CLUSTER_RESOURCE_SHARE}
    router = router_needs(router_cluster(topology), ResourceOptions())
    assert router.bundle() == {"CPU": 0.5, "prfaas-cluster-local": CLUSTER_RESOURCE_SHARE}


def test_bad_resource_options_are_refused() -> None:
    with pytest.raises(ValueError, match="num_cpus_torch must be >= 0"):
        ResourceOptions(num_cpus_torch=-1)
    with pytest.raises(ValueError, match="num_gpus_per_instance"):
        ResourceOptions(num_gpus_per_instance=float("nan"))


def test_router_runs_in_the_pd_cluster_unless_named() -> None:
    topology = _topology()
    assert router_cluster(topology).name == "local"
    assert router_cluster(topology, "remote").name == "remote"
    with pytest.raises(UserError, match="router cluster 'elsewhere' is not in the topology"):
        router_cluster(topology, "elsewhere")


def test_missing_cluster_resources_name_the_fix() -> None:
    topology = _topology()
    assert (
        missing_resources(topology, {"prfaas-cluster-remote": 1, "prfaas-cluster-local": 2}) == []
    )
    lines = missing_resources(topology, {"prfaas-cluster-local": 1, "CPU": 8})
    assert len(lines) == 1
    assert "'prfaas-cluster-remote'" in lines[0]
    assert "ray start --resources '{\"prfaas-cluster-remote\": 1}'" in lines[0]


@given(
    host=st.sampled_from(["10.1.2.3", "127.0.0.1", "fd00::5"]),
    router_host=st.sampled_from(["10.9.9.9", "127.0.0.1"]),
    base=st.integers(1024, 60000),
)
def test_resolved_topology_takes_every_address_from_its_placement(
    host: str, router_host: str, base: int
) -> None:
    template = _topology()
    placements = _placements(template, host, base)
    router = Placement("node-r", router_host, router_host, ())
    resolved = resolve_topology(template, placements, router)
    shown = f"[{host}]" if ":" in host else host
    for before, after in zip(template.instances, resolved.instances, strict=True):
        ports = placements[before.name].ports
        assert after.http == f"{shown}:{ports[0]}"
        assert (after.kv is None) == (before.kv is None)
        if after.kv is not None:
            assert after.kv == f"{shown}:{ports[1]}"
        same = ("name", "cluster", "role", "engine", "hardware", "num_gpus")
        assert all(getattr(after, f) == getattr(before, f) for f in same)
    assert resolved.router.http == f"{router_host}:{ROUTER_PORT}"
    for key in ("model", "policy", "transport", "link", "prefix_cache", "controller"):
        assert getattr(resolved, key) == getattr(template, key)
    assert resolved.router.api_keys == template.router.api_keys
    assert duplicate_addresses(resolved) == []


def test_every_kv_receiver_is_placed_and_binds_its_resolved_address() -> None:
    """A PrfaaS prefill instance's `kv` (moved prefixes) gets a port like any receiver's; the
    template's `kv_listen` is dropped, so each receiver binds the address the others reach."""
    template = _topology(receivers=frozenset({"r0", "p0", "d0"}))
    assert template.instance("r0").kv_listen == "0.0.0.0:18101"
    assert [num_ports(i) for i in template.instances] == [2, 2, 2]
    placements = _placements(template)
    resolved = resolve_topology(template, placements, placements[ROUTER_NAME])
    for name, base in (("r0", 30000), ("p0", 30010), ("d0", 30020)):
        after = resolved.instance(name)
        assert after.kv == f"10.0.0.7:{base + 1}"
        assert after.kv_listen is None and after.kv_bind_address == after.kv
    assert ("r0 kv", "10.0.0.7:30001") in addresses(resolved)
    clash = {**placements, "d0": dataclasses.replace(placements["d0"], ports=(30020, 30001))}
    assert clashing_owners(template, clash) == {"d0"}  # r0's KV port was drawn first
    record = deployment_record(resolved, placements, None, "auto")
    assert [m["kv"] for m in record["instances"]] == [
        "10.0.0.7:30001",
        "10.0.0.7:30011",
        "10.0.0.7:30021",
    ]


def test_resolving_refuses_missing_placements_and_shared_addresses() -> None:
    template = _topology()
    placements = _placements(template)
    router = placements[ROUTER_NAME]
    partial = {k: v for k, v in placements.items() if k != "d0"}
    with pytest.raises(ValueError, match="no placement for instance 'd0'"):
        resolve_topology(template, partial, router)
    short = {**placements, "d0": dataclasses.replace(placements["d0"], ports=(31000,))}
    with pytest.raises(ValueError, match="d0: needs 2 ports"):
        resolve_topology(template, short, router)
    clash = {
        **placements,
        "p0": dataclasses.replace(placements["p0"], ports=placements["r0"].ports),
    }
    with pytest.raises(ValueError, match=r"services share addresses: 10\.0\.0\.7:30000"):
        resolve_topology(template, clash, router)


def test_clashing_ports_are_asked_again_but_not_the_first_owner() -> None:
    template = _topology()
    placements = _placements(template)
    assert clashing_owners(template, placements) == set()
    clash = {**placements, "d0": dataclasses.replace(placements["d0"], ports=(30000, 30021))}
    assert clashing_owners(template, clash) == {"d0"}  # r0 drew 30000 first
    other_host = {**clash, "d0": dataclasses.replace(clash["d0"], host="10.0.0.8")}
    assert clashing_owners(template, other_host) == set()  # same port, another host: fine
    on_router = {**placements, "p0": dataclasses.replace(placements["p0"], ports=(ROUTER_PORT,))}
    assert clashing_owners(template, on_router) == {"p0"}


def test_deployment_record_round_trips_without_the_token(tmp_path: Path) -> None:
    template = _topology()
    placements = _placements(template)
    resolved = resolve_topology(template, placements, placements[ROUTER_NAME])
    record = deployment_record(resolved, placements, tmp_path / "t.toml", "10.0.0.1:6379")
    text = json.dumps(record)
    assert "secret-token" not in text
    path = tmp_path / "deployment.json"
    path.write_text(text)
    back = read_deployment(path)
    assert back.router_url == f"http://10.0.0.7:{ROUTER_PORT}"
    assert back.config_path == str(tmp_path / "t.toml")
    assert [m.name for m in back.members] == ["r0", "p0", "d0"]
    assert back.members[2].kv == "10.0.0.7:30021"
    assert back.members[0].node == "10.0.0.7 (node0)"
    assert tuple(members_of(resolved, placements)) == back.members


def test_members_outside_ray_are_on_the_host_of_their_address() -> None:
    members = members_of(_topology())
    assert [(m.name, m.node, m.role) for m in members] == [
        ("r0", "127.0.0.1", "prefill"),
        ("p0", "127.0.0.1", "prefill"),
        ("d0", "127.0.0.1", "decode"),
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not a prfaas deployment record"),
        ('{"format": 99, "instances": []}', "format 99, expected 1"),
        ('{"format": 1, "router": {"url": "x"}}', "'instances'"),
        ('{"format": 1, "router": {"url": "x"}, "instances": [{"name": "a"}]}', "'cluster'"),
    ],
)
def test_bad_deployment_records_are_user_errors(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(UserError, match=reason):
        read_deployment(path)
