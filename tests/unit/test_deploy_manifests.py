"""The sample KubeRay manifest (deploy/kuberay/raycluster.yaml), at schema level, never applied:
a RayCluster of ray.io/v1 whose worker groups give each datacenter of the example topology its
custom resource (`prfaas-cluster-<name>`, the one the Ray launcher places by) and label, with
enough Ray nodes for that datacenter's instances, and the image the Dockerfile builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.launch.ray_placement import cluster_resource, router_cluster
from prfaas.topology import Topology, load_topology

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the ray extra")

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "raycluster.yaml"
EXAMPLE = REPO / "examples" / "emulated-1t.toml"
RAY_START_FLAGS = {
    "num-cpus", "num-gpus", "resources", "labels", "include-dashboard", "dashboard-host",
    "object-store-memory", "memory", "block", "temp-dir", "metrics-export-port",
}  # fmt: skip


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert len(docs) == 1
    return dict(docs[0])


@pytest.fixture(scope="module")
def example() -> Topology:
    return load_topology(EXAMPLE)


def _resources(params: dict[str, Any]) -> dict[str, float]:
    """KubeRay passes `resources` to `ray start --resources` quoted: '"{\\"name\\": 1}"'."""
    text = params.get("resources")
    if text is None:
        return {}
    assert isinstance(text, str) and text.startswith('"') and text.endswith('"'), text
    return dict(json.loads(json.loads(text)))


def _labels(params: dict[str, Any]) -> dict[str, str]:
    text = str(params.get("labels", ""))
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def test_it_is_a_raycluster_with_a_head_and_worker_groups(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert spec["rayVersion"] == "2.60.0"  # the ray extra's pin
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        params = group["rayStartParams"]
        assert set(params) <= RAY_START_FLAGS, set(params) - RAY_START_FLAGS
        assert all(isinstance(v, str) for v in params.values()), params  # KubeRay wants strings
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"].startswith("prfaas:")
        assert {"requests", "limits"} <= set(container["resources"])
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names))
    head = spec["headGroupSpec"]["rayStartParams"]
    assert not any(k.startswith("prfaas-cluster-") for k in _resources(head))


def test_each_datacenter_has_a_worker_group_with_its_resource_and_label(
    manifest: dict[str, Any], example: Topology
) -> None:
    groups = {g["groupName"]: g for g in manifest["spec"]["workerGroupSpecs"]}
    assert set(groups) == {c.name for c in example.clusters}
    for cluster in example.clusters:
        group = groups[cluster.name]
        params = group["rayStartParams"]
        assert _resources(params) == {cluster_resource(cluster.name): 1}
        assert _labels(params) == {"prfaas-cluster": cluster.name}
        selector = group["template"]["spec"]["nodeSelector"]
        assert selector == {"prfaas.io/datacenter": cluster.name}
        # one Ray node per instance of the datacenter (the launcher spreads them)
        assert group["replicas"] == group["minReplicas"] == len(cluster.instances)
        assert group["maxReplicas"] >= group["replicas"]


def test_the_router_datacenter_hosts_the_head(manifest: dict[str, Any], example: Topology) -> None:
    """The driver (`prfaas up --ray auto`) runs on the head, beside the users' datacenter."""
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"prfaas.io/datacenter": router_cluster(example).name}
    mounts = head["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/etc/prfaas" for m in mounts)


def test_the_check_catches_a_misnamed_resource(manifest: dict[str, Any]) -> None:
    """Negative control: a group whose resource names another cluster fails the comparison."""
    group = manifest["spec"]["workerGroupSpecs"][0]
    wrong = {**group["rayStartParams"], "resources": '"{\\"prfaas-cluster-typo\\": 1}"'}
    assert _resources(wrong) != {cluster_resource(group["groupName"]): 1}
