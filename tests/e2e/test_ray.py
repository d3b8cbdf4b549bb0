"""`prfaas up --ray`, end to end on one machine: a local Ray instance whose node offers both
datacenters' resources, a router and three emulated instances started as Ray actors by
`RayLauncher`, every service on 127.0.0.1, driven with the `openai` client.

Instances must land where their cluster's resource is and hold its share; requests must route
and move exactly the emulated model's KV bytes; a killed actor must come back (new process,
same address), be marked down and then ready again by the router's poller, and answer as
before; `prfaas status` must list every instance on its Ray node. Skipped only when the ray
extra is not installed; Ray failing to start is a failure. Ray is always shut down and no actor
process is left behind.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services_harness import API_KEY, LONG_PROMPT, SHORT_PROMPT, get_json, wait_for

from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.launch.ray_placement import CLUSTER_RESOURCE_SHARE, ROUTER_NAME, cluster_resource
from prfaas.launch.status import router_ready
from prfaas.models import load_model_spec
from prfaas.topology import load_topology
from topologies import EMBEDDED, TopologySpec

if importlib.util.find_spec("ray") is None:  # only a missing package skips: a broken one fails
    pytest.skip("the ray extra is not installed", allow_module_level=True)
import ray

from prfaas.launch.ray_launcher import RayLauncher, RayOptions  # after the check: needs ray

pytestmark = pytest.mark.slow
EMULATE = "nemotron-3-nano"  # a small hybrid KV: tens of MiB per offloaded request on loopback
READY_TIMEOUT_S = 180.0
MAX_TOKENS = 6
CLUSTERS = ("prfaas", "pd")


def _write_topology(directory: Path) -> Path:
    """The embedded deployment's shape (router, PrfaaS prefill, PD prefill, PD decode), emulated.
    Its addresses are placeholders: the launcher replaces every one with what the actors found."""
    spec = TopologySpec(
        clusters=EMBEDDED,
        engine="emulated",
        emulate=EMULATE,
        time_scale=0,
        api_keys=(API_KEY,),
        threshold=64,
        token="ray-test-token",
    )
    return spec.write(directory)


def _start_local_ray(temp_dir: str) -> None:
    """One node offering every datacenter's resource (any error starting it fails the tests)."""
    ray.init(
        address="local",
        num_cpus=4,
        resources={cluster_resource(c): 1.0 for c in CLUSTERS},
        include_dashboard=False,
        object_store_memory=80 << 20,
        _temp_dir=temp_dir,
        log_to_driver=False,
        namespace="prfaas-test",
    )


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayLauncher]:
    tmp = tmp_path_factory.mktemp("ray")
    path = _write_topology(tmp)
    temp_dir = tempfile.mkdtemp(prefix="prfaas-ray-", dir="/tmp")  # short: Ray's socket paths
    _start_local_ray(temp_dir)
    pids: set[int] = set()
    options = RayOptions(host="127.0.0.1", max_restarts=3, log_to_driver=False)
    launcher = RayLauncher(load_topology(path), options, path)
    try:
        launcher.start()
        launcher.wait_ready(READY_TIMEOUT_S)
        pids.update(launcher.check().pids.values())
        yield launcher
        pids.update(launcher.check().pids.values())
    finally:
        launcher.stop()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    wait_for(lambda: not any(_is_running(p) for p in pids), 30, "every actor process to exit")


def _complete(launcher: RayLauncher, prompt: str, seed: int = 7) -> tuple[str, dict[str, Any]]:
    import openai

    client = openai.OpenAI(
        base_url=f"{launcher.router_url}/v1", api_key=API_KEY, max_retries=0, timeout=120.0
    )
    body = client.completions.create(
        model="qwen3_next",
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        temperature=0,
        seed=seed,
        extra_body={"ignore_eos": True},
    )
    assert body.usage is not None and body.usage.completion_tokens == MAX_TOKENS
    return body.choices[0].text, dict(body.model_extra["prfaas"])


def _node_with(resource: str) -> str:
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource)]
    assert len(nodes) == 1, nodes
    return str(nodes[0])


def test_each_actor_lands_on_its_clusters_node_with_its_share(deployment: RayLauncher) -> None:
    for inst in deployment.topology.instances:
        where = deployment.where(inst.name)
        mine, other = (
            cluster_resource(c) for c in sorted(CLUSTERS, key=lambda c: c != inst.cluster)
        )
        assert where["resources"].get(mine) == pytest.approx(CLUSTER_RESOURCE_SHARE), where
        assert other not in where["resources"], where
        assert where["resources"].get("CPU") == pytest.approx(0.25)  # emulated engine's need
        assert where["node_id"] == _node_with(mine)
        assert where["serving"] is True
    router = deployment.where(ROUTER_NAME)
    assert cluster_resource("pd") in router["resources"]
    assert cluster_resource("prfaas") not in router["resources"]


def test_addresses_were_discovered_not_taken_from_the_file(deployment: RayLauncher) -> None:
    template = {i.name: i for i in deployment.template.instances}
    for inst in deployment.topology.instances:
        assert inst.http != template[inst.name].http  # the file's were placeholders
        assert inst.http.startswith("127.0.0.1:")
        assert (inst.kv is None) == (template[inst.name].kv is None)
    assert deployment.topology.router.http == deployment.template.router.http  # the port users know
    ready = get_json(f"{deployment.router_url}/ready")
    expected = {"ready": True, "instances": dict.fromkeys(template, True), "deployment": None}
    assert ready == expected  # no deployment id: Ray actors are not `prfaas up`'s children


def test_openai_requests_route_through_ray_placed_instances(deployment: RayLauncher) -> None:
    _, long = _complete(deployment, LONG_PROMPT)
    assert long["route"] == "prfaas"
    assert (long["prefill_instance"], long["decode_instance"]) == (
        "prfaas-prefill-0",
        "pd-decode-0",
    )
    assert long["kv_bytes"] == load_model_spec(EMULATE).kv_bytes(len(LONG_PROMPT.encode()))
    _, short = _complete(deployment, SHORT_PROMPT)
    assert (short["route"], short["prefill_instance"]) == ("pd_prefill", "pd-prefill-0")


def test_status_lists_every_instance_on_its_ray_node(
    deployment: RayLauncher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "deployment.json"
    deployment.write_deployment(record)
    assert main(["status", "--deployment", str(record), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["router"]["state"] == "ready"
    rows = {i["name"]: i for i in report["instances"]}
    assert set(rows) == {i.name for i in deployment.topology.instances}
    for name, row in rows.items():
        assert row["health"] == "ready"
        assert row["node"].endswith(f"({deployment.where(name)['node_id'][:8]})")
        assert row["queue"]["num_requests_waiting"] >= 0


def test_killed_actor_restarts_reregisters_and_answers_as_before(deployment: RayLauncher) -> None:
    name = "pd-decode-0"  # every route decodes there
    before_text, before = _complete(deployment, LONG_PROMPT, seed=11)
    old = deployment.where(name)
    address = deployment.topology.instance(name).http
    deployment.kill(name)

    def router_sees(state: bool) -> bool:
        _, instances = router_ready(deployment.router_url, timeout_s=2.0)  # 503 while one is down
        return instances.get(name) is state

    wait_for(lambda: router_sees(False), 30, "the router to mark the killed instance down")
    wait_for(lambda: router_sees(True), 90, "the restarted instance to register again")
    new = deployment.where(name)
    assert new["pid"] != old["pid"] and new["node_id"] == old["node_id"]
    assert not _is_running(old["pid"])
    assert deployment.topology.instance(name).http == address
    assert get_json(f"http://{address}/health")["instance"] == name
    after_text, after = _complete(deployment, LONG_PROMPT, seed=11)
    assert after_text == before_text
    assert (after["route"], after["kv_bytes"]) == (before["route"], before["kv_bytes"])
    _, short = _complete(deployment, SHORT_PROMPT)
    assert short["route"] == "pd_prefill"


def test_a_cluster_no_node_offers_is_refused_before_anything_starts(
    deployment: RayLauncher,
) -> None:
    renamed = dataclasses.replace(deployment.template.clusters[0], name="elsewhere")
    topology = dataclasses.replace(
        deployment.template, clusters=(renamed, *deployment.template.clusters[1:])
    )
    other = RayLauncher(topology, RayOptions(host="127.0.0.1", log_to_driver=False))
    with pytest.raises(UserError, match="no Ray node offers resource 'prfaas-cluster-elsewhere'"):
        other.start()
    assert other.actors == {} and ray.is_initialized()  # Ray was not its to stop


def test_torch_engine_in_a_ray_worker_matches_this_process(deployment: RayLauncher) -> None:
    """The cheap torch check: a task in the PrfaaS datacenter builds the tiny preset and greedily
    decodes a few tokens; weights and tokens equal this process's."""
    started = time.monotonic()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    task = ray.remote(_tiny_greedy).options(
        num_cpus=0.5, resources={cluster_resource("prfaas"): CLUSTER_RESOURCE_SHARE}
    )
    ref = task.remote()
    local = _tiny_greedy()  # meanwhile
    remote = ray.get(ref, timeout=120)
    assert remote == local
    assert len(set(remote[1])) > 1  # not a constant output
    assert time.monotonic() - started < 120


def _tiny_greedy() -> tuple[str, list[int]]:
    from prfaas.engine.loading import load_model
    from prfaas.engine.runner import Engine
    from prfaas.messages import GenerateRequest, SamplingParams

    loaded = load_model("qwen3_next")
    request = GenerateRequest("r", tuple(LONG_PROMPT.encode()[:64]), SamplingParams(max_tokens=4))
    return loaded.fingerprint, Engine(loaded).generate([request])["r"]
