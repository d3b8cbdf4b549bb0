"""The topology loader: every validation rule names its key; the examples load; "auto" is the
planner's Eq. 7 threshold for the topology's own instance split."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.errors import UserError
from prfaas.plan.search import plan_prfaas
from prfaas.policy.throughput import evaluate
from prfaas.topology import Topology, load_topology, parse_topology
from prfaas.topology.derived import planner_inputs
from prfaas.topology.keys import parse_host_port
from prfaas.topology.schema import (
    CLUSTER_KEYS,
    CONTROLLER_KEYS,
    INSTANCE_KEYS,
    LINK_KEYS,
    MODEL_KEYS,
    POLICY_KEYS,
    PREFIX_CACHE_KEYS,
    ROUTER_KEYS,
    TOP_KEYS,
    TRANSPORT_KEYS,
    TopologyError,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.toml"))
SOURCE = "topology.toml"

Data = dict[str, Any]


def _instance(name: str, role: str, port: int, **extra: Any) -> Data:
    inst: Data = {"name": name, "role": role, "http": f"127.0.0.1:{port}", **extra}
    if role == "decode" and "kv" not in extra:
        inst["kv"] = f"127.0.0.1:{port + 1}"
    return inst


def _valid() -> Data:
    """A small valid topology: router, PrfaaS prefill, PD prefill + decode, tiny model, token."""
    return {
        "model": {"name": "qwen3_next"},
        "router": {"http": "127.0.0.1:18000"},
        "policy": {"threshold": 64},
        "transport": {"token": "secret"},
        "clusters": [
            {"name": "prfaas", "kind": "prfaas", "instances": [_instance("r0", "prefill", 18100)]},
            {
                "name": "pd",
                "kind": "pd",
                "instances": [_instance("p0", "prefill", 18200), _instance("d0", "decode", 18300)],
            },
        ],
    }


def _emulated(num_prfaas: int, num_pd_p: int, num_pd_d: int) -> Data:
    """Emulated engines with threshold "auto": PrfaaS on H200, PD on H20, 8 GPUs each."""
    prfaas = [
        _instance(f"r{i}", "prefill", 18100 + 2 * i, engine="emulated", hardware="h200")
        for i in range(num_prfaas)
    ]
    pd = [
        _instance(f"p{i}", "prefill", 18200 + 2 * i, engine="emulated", hardware="h20")
        for i in range(num_pd_p)
    ]
    pd += [
        _instance(f"d{i}", "decode", 18300 + 2 * i, engine="emulated", hardware="h20")
        for i in range(num_pd_d)
    ]
    data = _valid()
    data["policy"] = {"threshold": "auto"}
    data["clusters"] = [
        {"name": "prfaas", "kind": "prfaas", "instances": prfaas},
        {"name": "pd", "kind": "pd", "instances": pd},
    ]
    return data


def _parse(data: Data, base_dir: Path, **kwargs: Any) -> Topology:
    return parse_topology(data, base_dir, source=SOURCE, **kwargs)


def _problems(data: Data, base_dir: Path, **kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as info:
        _parse(data, base_dir, **kwargs)
    return info.value.problems


def _only_problem(data: Data, base_dir: Path, **kwargs: Any) -> str:
    problems = _problems(data, base_dir, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def _assert_names(problem: str, key: str, *fragments: str) -> None:
    assert problem.startswith(f"{SOURCE}: {key}: "), problem
    for fragment in fragments:
        assert fragment in problem, problem


def _pd_instances(data: Data) -> list[Data]:
    instances: list[Data] = data["clusters"][1]["instances"]
    return instances


# ---- valid topologies -------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    topology = load_topology(path)
    assert topology.clusters_of_kind("pd")
    assert topology.transport.token or topology.transport.tls_cert


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"local-tiny.toml", "emulated-1t.toml"} <= names


def test_local_tiny_example_values() -> None:
    topology = load_topology(REPO_ROOT / "examples" / "local-tiny.toml")
    assert topology.model.name == "qwen3_next"
    assert topology.policy.threshold_tokens == 64.0
    assert topology.policy.threshold_source == "fixed"
    assert [i.name for i in topology.instances] == ["prfaas-p0", "pd-p0", "pd-d0"]
    assert topology.instance("pd-d0").kv == "127.0.0.1:18302"
    assert topology.instance("pd-d0").cluster == "pd"


def test_example_ports_are_distinct_and_in_range() -> None:
    ports = []
    for path in EXAMPLES:
        topology = load_topology(path)
        addresses = [topology.router.http]
        addresses += [a for i in topology.instances for a in (i.http, i.kv) if a is not None]
        ports += [parse_host_port(a)[1] for a in addresses]
    assert all(18000 <= p <= 18999 for p in ports)
    assert len(ports) == len(set(ports))


def test_loading_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from prfaas.topology import load_topology\n"
        f"for path in {[str(p) for p in EXAMPLES]!r}:\n"
        "    load_topology(path)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_defaults_of_a_minimal_topology(tmp_path: Path) -> None:
    topology = _parse(_valid(), tmp_path)
    assert topology.model.dtype == "fp32"
    assert topology.model.emulate == "paper-1t"
    assert topology.link.gbps == 100.0
    assert topology.policy.failure == "recompute"
    assert topology.policy.deployment == "prfaas"
    assert topology.router.api_keys == ()
    assert topology.transport.num_connections == 2
    assert topology.instance("r0").engine == "torch"
    assert topology.instance("r0").num_gpus == 8


def test_hardware_names_are_case_insensitive(tmp_path: Path) -> None:
    data = _valid()
    data["clusters"][0]["instances"][0]["hardware"] = "H20"
    assert _parse(data, tmp_path).instance("r0").hardware == "h20"


def test_checkpoint_directory_resolves_against_the_topology_dir(tmp_path: Path) -> None:
    checkpoint = tmp_path / "models" / "my-model"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    data = _valid()
    data["model"]["name"] = "models/my-model"
    model = _parse(data, tmp_path).model
    assert model.name == str(checkpoint.resolve())
    assert model.served_name == "my-model"


def test_load_topology_resolves_against_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("from-file\n")
    path = tmp_path / "topology.toml"
    path.write_text(
        (REPO_ROOT / "examples" / "local-tiny.toml")
        .read_text()
        .replace('token = "local-tiny-example-token-replace-me"', 'token_file = "token.txt"')
    )
    assert load_topology(path).transport.token == "from-file"


# ---- reading the file -------------------------------------------------------------------------


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.toml: cannot read: No such file"):
        load_topology(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="cannot read: Is a directory"):
        load_topology(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_bytes(b'[model]\nname = "caf\xe9"\n')
    with pytest.raises(UserError, match=r"topology\.toml: line 2: not UTF-8 text"):
        load_topology(path)


@pytest.mark.parametrize(
    ("text", "line"),
    [("[model]\nname = \n", "line 2"), ("[model]\nname = 'x'\nname = 'y'\n", "line 3")],
)
def test_invalid_toml_names_the_line(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"topology\.toml: invalid TOML: .*{line}"):
        load_topology(path)


def test_invalid_toml_at_the_end_names_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_text("[model]\nname = [1,")
    with pytest.raises(UserError, match="end of document, line 2"):
        load_topology(path)


# ---- keys, types, ranges and choices ----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "key_path", "allowed"),
    [
        ((), "colour", TOP_KEYS),
        (("model",), "model.colour", MODEL_KEYS),
        (("router",), "router.colour", ROUTER_KEYS),
        (("policy",), "policy.colour", POLICY_KEYS),
        (("transport",), "transport.colour", TRANSPORT_KEYS),
        (("clusters", 1), "clusters[1].colour", CLUSTER_KEYS),
        (("clusters", 1, "instances", 1), "clusters[1].instances[1].colour", INSTANCE_KEYS),
    ],
)
def test_unknown_keys_at_every_level(
    tmp_path: Path, where: tuple[Any, ...], key_path: str, allowed: tuple[str, ...]
) -> None:
    data = _valid()
    table = data
    for step in where:
        table = table[step]
    table["colour"] = "blue"
    _assert_names(_only_problem(data, tmp_path), key_path, "unknown key", ", ".join(allowed))


def test_unknown_key_in_link(tmp_path: Path) -> None:
    data = _valid()
    data["link"] = {"gbps": 10, "latency_ms": 5}
    _assert_names(_only_problem(data, tmp_path), "link.latency_ms", ", ".join(LINK_KEYS))


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        table = data
        for step in path[:-1]:
            table = table.setdefault(step, {}) if isinstance(step, str) else table[step]
        table[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        table = data
        for step in path[:-1]:
            table = table[step]
        del table[path[-1]]

    return mutate


INSTANCE_R0 = ("clusters", 0, "instances", 0)
INSTANCE_D0 = ("clusters", 1, "instances", 1)

BAD_VALUES = [
    # wrong types (a bool is not a number)
    (_set((*INSTANCE_R0, "num_gpus"), True), "clusters[0].instances[0].num_gpus", "true (boolean)"),
    (_set((*INSTANCE_R0, "num_gpus"), 8.0), "clusters[0].instances[0].num_gpus", "8.0 (float)"),
    (_set(("model", "seed"), "1"), "model.seed", "must be an integer"),
    (_set(("link", "gbps"), True), "link.gbps", "true (boolean)"),
    (_set(("link", "gbps"), "100"), "link.gbps", "'100'"),
    (_set(("model", "name"), 3), "model.name", "must be a string"),
    (_set(("model",), "qwen3_next"), "model", "must be a table"),
    (_set(("clusters",), {"name": "x"}), "clusters", "array of tables"),
    (_set(("clusters", 1, "instances", 0), "p0"), "clusters[1].instances[0]", "must be a table"),
    (_set(("router", "http"), 18000), "router.http", '"host:port"'),
    (_set(("policy", "threshold"), True), "policy.threshold", "true (boolean)"),
    # missing required keys
    (_delete(("model",)), "model", "missing required key"),
    (_delete(("model", "name")), "model.name", "missing required key"),
    (_delete(("policy",)), "policy", "missing required key"),
    (_delete(("policy", "threshold")), "policy.threshold", "missing required key"),
    (_delete(("clusters",)), "clusters", "missing required key"),
    (_delete(("clusters", 0, "name")), "clusters[0].name", "missing required key"),
    (_delete(("clusters", 0, "kind")), "clusters[0].kind", "missing required key"),
    (_delete(("clusters", 0, "instances")), "clusters[0].instances", "missing required key"),
    (_set(("clusters", 0, "instances"), []), "clusters[0].instances", "must not be empty"),
    (_set(("clusters",), []), "clusters", "must not be empty"),
    (_delete((*INSTANCE_R0, "name")), "clusters[0].instances[0].name", "missing required"),
    (_delete((*INSTANCE_R0, "role")), "clusters[0].instances[0].role", "missing required"),
    (_delete((*INSTANCE_R0, "http")), "clusters[0].instances[0].http", "missing required"),
    # empty strings and names
    (_set(("model", "name"), " "), "model.name", "must not be empty"),
    (_set((*INSTANCE_R0, "name"), "r 0"), "clusters[0].instances[0].name", "letters, digits"),
    (_set(("clusters", 0, "name"), "-x"), "clusters[0].name", "letters, digits"),
    # choices
    (
        _set((*INSTANCE_D0, "role"), "decoder"),
        "clusters[1].instances[1].role",
        "must be prefill or decode, got 'decoder'",
    ),
    (
        _set((*INSTANCE_R0, "engine"), "sglang"),
        "clusters[0].instances[0].engine",
        "torch, emulated or vllm",
    ),
    (_set(("clusters", 1, "kind"), "local"), "clusters[1].kind", "must be prfaas or pd"),
    (_set(("policy", "failure"), "retry"), "policy.failure", "must be recompute or fail"),
    (
        _set(("policy", "deployment"), "hybrid"),
        "policy.deployment",
        "must be prfaas, homogeneous or naive",
    ),
    (_set(("model", "dtype"), "fp16"), "model.dtype", "must be fp32 or bf16"),
    # non-finite or non-positive numbers
    (_set(("link", "gbps"), 0), "link.gbps", "finite number > 0, got 0"),
    (_set(("link", "gbps"), -5.0), "link.gbps", "finite number > 0"),
    (_set(("link", "gbps"), math.inf), "link.gbps", "finite number > 0, got inf"),
    (_set(("link", "gbps"), math.nan), "link.gbps", "finite number > 0, got nan"),
    (_set(("policy", "transfer_deadline_s"), 0), "policy.transfer_deadline_s", "> 0"),
    (_set(("policy", "transfer_deadline_s"), math.inf), "policy.transfer_deadline_s", "> 0"),
    (_set((*INSTANCE_R0, "num_gpus"), 0), "clusters[0].instances[0].num_gpus", ">= 1, got 0"),
    (_set(("transport", "num_connections"), 0), "transport.num_connections", ">= 1"),
    (_set(("router", "max_body_bytes"), -1), "router.max_body_bytes", ">= 1"),
    (_set(("model", "seed"), -1), "model.seed", ">= 0"),
    # thresholds
    (_set(("policy", "threshold"), -1), "policy.threshold", "got -1"),
    (_set(("policy", "threshold"), math.nan), "policy.threshold", "got nan"),
    (_set(("policy", "threshold"), math.inf), "policy.threshold", "got inf"),
    (_set(("policy", "threshold"), "Auto"), "policy.threshold", "got 'Auto'"),
    # presets
    (_set(("model", "name"), "gpt-5"), "model.name", "missing checkpoint"),
    (_set(("model", "emulate"), "paper-2t"), "model.emulate", "unknown model preset 'paper-2t'"),
    (
        _set((*INSTANCE_R0, "hardware"), "tpu"),
        "clusters[0].instances[0].hardware",
        "unknown hardware preset 'tpu'; known: a100",
    ),
    # kv receivers
    (_delete((*INSTANCE_D0, "kv")), "clusters[1].instances[1].kv", "missing required key"),
    (
        _set((*INSTANCE_R0, "kv_listen"), "0.0.0.0:18999"),
        "clusters[0].instances[0].kv_listen",
        "only an instance with kv (a KV receiver) binds one",
    ),
    (_set((*INSTANCE_R0, "kv"), "127.0.0.1:0"), "clusters[0].instances[0].kv", "1..65535"),
    (_set((*INSTANCE_R0, "kv"), 18999), "clusters[0].instances[0].kv", "must be"),
    (_set((*INSTANCE_D0, "kv"), "127.0.0.1:0"), "clusters[1].instances[1].kv", "1..65535"),
    # router keys
    (_set(("router", "api_keys"), ["ok", ""]), "router.api_keys[1]", "without spaces"),
    (_set(("router", "api_keys"), ["ok", 7]), "router.api_keys[1]", "7 (integer)"),
    (_set(("router", "api_keys"), "sk-1"), "router.api_keys", "must be an array of strings"),
    (_set(("router", "api_keys"), ["a b"]), "router.api_keys[0]", "without spaces"),
    (_set(("router", "http"), "127.0.0.1:0"), "router.http", "in 1..65535, got 0"),
]


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"), BAD_VALUES, ids=[f"{c[1]}:{c[2]}" for c in BAD_VALUES]
)
def test_each_bad_value_is_one_problem_naming_its_key(
    tmp_path: Path, mutate: Callable[[Data], None], key: str, fragment: str
) -> None:
    data = _valid()
    mutate(data)
    _assert_names(_only_problem(data, tmp_path), key, fragment)


def test_all_problems_of_a_pass_are_reported_one_line_each(tmp_path: Path) -> None:
    data = _valid()
    data["model"]["dtype"] = "fp64"
    data["link"] = {"gbps": -1}
    data["clusters"][1]["instances"][0]["role"] = "decoder"
    with pytest.raises(UserError) as info:
        _parse(data, tmp_path)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "model.dtype",
        "link.gbps",
        "clusters[1].instances[0].role",
    ]


def test_checkpoint_directory_without_config_is_missing(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    data = _valid()
    data["model"]["name"] = "ckpt"
    _assert_names(_only_problem(data, tmp_path), "model.name", "missing checkpoint", "ckpt")


# ---- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("example.com:65535", ("example.com", 65535)),
        ("[::1]:8000", ("::1", 8000)),
        ("LOCALHOST:80", ("LOCALHOST", 80)),
    ],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:0", "1..65535"),
        ("127.0.0.1:65536", "1..65535"),
        (":8000", "host must be non-empty"),
        ("localhost", "expected host:port"),
        ("::1:8000", "IPv6"),
        ("[::1]8000", "IPv6"),
        ("[::1:8000", "IPv6"),
        ("host:8x", "must be a number"),
        ("host:", "must be a number"),
        ("host:+80", "must be a number"),
        ("host: 80", "must be a number"),
        ("ho st:80", "without spaces"),
        ("host:\u0663", "must be a number"),  # an Arabic-Indic digit
    ],
)
def test_parse_host_port_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_host_port(text)


@settings(database=None)  # nothing written outside tmp_path
@given(
    host=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    port=st.integers(min_value=-10, max_value=70_000),
)
def test_parse_host_port_round_trip(host: str, port: int) -> None:
    text = f"{host}:{port}"
    if 1 <= port <= 65535:
        assert parse_host_port(text) == (host, port)
    else:
        with pytest.raises(ValueError):
            parse_host_port(text)


def test_duplicate_address_with_the_router(tmp_path: Path) -> None:
    data = _valid()
    data["clusters"][0]["instances"][0]["http"] = "127.0.0.1:18000"
    _assert_names(
        _only_problem(data, tmp_path),
        "clusters[0].instances[0].http",
        "duplicate address (also at router.http)",
    )


def test_duplicate_address_between_kv_and_http(tmp_path: Path) -> None:
    data = _valid()
    _pd_instances(data)[1]["kv"] = "127.0.0.1:18200"
    _assert_names(
        _only_problem(data, tmp_path),
        "clusters[1].instances[1].kv",
        "also at clusters[1].instances[0].http",
    )


def test_prfaas_prefill_instance_may_have_a_kv_receiver_for_moved_prefixes(
    tmp_path: Path,
) -> None:
    """`kv` (and `kv_listen`) on a PrfaaS prefill instance: it receives moved PD prefixes."""
    data = _valid()
    data["clusters"][0]["instances"][0].update(kv="127.0.0.1:18101", kv_listen="0.0.0.0:18101")
    topology = _parse(data, tmp_path)
    r0 = topology.instance("r0")
    assert (r0.role, r0.cluster, r0.kv) == ("prefill", "prfaas", "127.0.0.1:18101")
    assert r0.kv_bind_address == "0.0.0.0:18101"
    with_controller = _valid()
    with_controller["clusters"][0]["instances"][0]["kv"] = "127.0.0.1:18101"
    for instance in _pd_instances(with_controller):
        instance.setdefault("kv", f"127.0.0.1:{int(instance['http'].rpartition(':')[2]) + 1}")
    with_controller["controller"] = {"period_s": 5}
    assert _parse(with_controller, tmp_path).instance("r0").kv == "127.0.0.1:18101"


def test_a_prfaas_kv_receiver_is_still_checked_like_any_other(tmp_path: Path) -> None:
    """Its address may not clash with another socket, and a PrfaaS decode instance stays
    refused even with `kv`."""
    data = _valid()
    data["clusters"][0]["instances"][0]["kv"] = "127.0.0.1:18301"  # d0's kv
    _assert_names(
        _only_problem(data, tmp_path),
        "clusters[1].instances[1].kv",
        "duplicate address (also at clusters[0].instances[0].kv)",
    )
    data = _valid()
    data["clusters"][0]["instances"][0].update(role="decode", kv="127.0.0.1:18101")
    _assert_names(
        _only_problem(data, tmp_path),
        "clusters[0].instances[0].role",
        "a prfaas cluster only prefills",
    )


def test_duplicate_address_ignores_host_case(tmp_path: Path) -> None:
    data = _valid()
    data["router"]["http"] = "LocalHost:18000"
    _pd_instances(data)[0]["http"] = "localhost:18000"
    _assert_names(_only_problem(data, tmp_path), "clusters[1].instances[0].http", "duplicate")


# ---- names and cluster composition ------------------------------------------------------------


def test_duplicate_instance_name_across_clusters(tmp_path: Path) -> None:
    data = _valid()
    _pd_instances(data)[0]["name"] = "r0"
    _assert_names(
        _only_problem(data, tmp_path),
        "clusters[1].instances[0].name",
        "duplicate instance name (also at clusters[0].instances[0].name)",
    )


def test_duplicate_cluster_name(tmp_path: Path) -> None:
    data = _valid()
    data["clusters"][1]["name"] = "prfaas"
    _assert_names(_only_problem(data, tmp_path), "clusters[1].name", "duplicate cluster name")


def test_pd_cluster_without_decode(tmp_path: Path) -> None:
    data = _valid()
    del _pd_instances(data)[1]
    _assert_names(_only_problem(data, tmp_path), "clusters[1].instances", "needs a decode")


def test_prfaas_cluster_with_decode(tmp_path: Path) -> None:
    data = _valid()
    data["clusters"][0]["instances"].append(_instance("r1", "decode", 18110))
    _assert_names(
        _only_problem(data, tmp_path), "clusters[0].instances[1].role", "a prfaas cluster only"
    )


def test_no_pd_cluster(tmp_path: Path) -> None:
    data = _valid()
    del data["clusters"][1]
    _assert_names(_only_problem(data, tmp_path), "clusters", "no cluster of kind 'pd'")


@pytest.mark.parametrize("deployment", ["prfaas", "naive"])
def test_remote_prefill_deployments_need_a_prfaas_cluster(tmp_path: Path, deployment: str) -> None:
    data = _valid()
    del data["clusters"][0]
    data["policy"]["deployment"] = deployment
    _assert_names(
        _only_problem(data, tmp_path), "policy.deployment", f"{deployment!r} needs a cluster"
    )


def test_homogeneous_deployment_needs_pd_prefill(tmp_path: Path) -> None:
    data = _valid()
    del _pd_instances(data)[0]
    data["policy"]["deployment"] = "homogeneous"
    _assert_names(_only_problem(data, tmp_path), "policy.deployment", "needs a prefill instance")


@pytest.mark.parametrize(("deployment", "tokens"), [("homogeneous", math.inf), ("naive", 0.0)])
def test_threshold_is_implied_outside_prfaas_deployments(
    tmp_path: Path, deployment: str, tokens: float
) -> None:
    data = _valid()
    data["policy"] = {"deployment": deployment}
    policy = _parse(data, tmp_path).policy
    assert policy.threshold_tokens == tokens
    assert policy.threshold_source == f"implied by deployment {deployment!r}"


# ---- transport security -----------------------------------------------------------------------


def test_token_and_token_file_are_exclusive(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    data = _valid()
    data["transport"]["token_file"] = "token"
    _assert_names(_only_problem(data, tmp_path), "transport.token_file", "exclusive")


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  s3cret \n")
    data = _valid()
    data["transport"] = {"token_file": "token"}
    assert _parse(data, tmp_path).transport.token == "s3cret"


@pytest.mark.parametrize(("content", "fragment"), [(None, "does not exist"), ("\n", "is empty")])
def test_token_file_must_hold_a_token(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / "token").write_text(content)
    data = _valid()
    data["transport"] = {"token_file": "token"}
    _assert_names(_only_problem(data, tmp_path), "transport.token_file", fragment)


def _tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    return {"tls_cert": "cert.pem", "tls_key": "key.pem", "tls_ca": "ca.pem"}


def test_tls_files_are_resolved(tmp_path: Path) -> None:
    data = _valid()
    data["transport"] = _tls_files(tmp_path)
    transport = _parse(data, tmp_path).transport
    assert transport.token is None
    assert transport.tls_cert == str(tmp_path.resolve() / "cert.pem")
    assert transport.tls_ca == str(tmp_path.resolve() / "ca.pem")


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key", "tls_ca"])
def test_tls_files_go_together(tmp_path: Path, missing: str) -> None:
    data = _valid()
    data["transport"] = _tls_files(tmp_path)
    del data["transport"][missing]
    _assert_names(_only_problem(data, tmp_path), f"transport.{missing}", "go together")


def test_tls_files_must_exist(tmp_path: Path) -> None:
    data = _valid()
    data["transport"] = _tls_files(tmp_path)
    (tmp_path / "key.pem").unlink()
    _assert_names(_only_problem(data, tmp_path), "transport.tls_key", "does not exist")


def test_transport_without_credentials_is_refused(tmp_path: Path) -> None:
    data = _valid()
    data["transport"] = {"num_connections": 4}
    problem = _only_problem(data, tmp_path, allow_generated_token=True)
    assert problem == f"{SOURCE}: transport: set token, token_file or tls_cert/tls_key/tls_ca"


def test_missing_transport_is_refused_by_default(tmp_path: Path) -> None:
    data = _valid()
    del data["transport"]
    _assert_names(_only_problem(data, tmp_path), "transport", "set token, token_file")


def test_missing_transport_is_allowed_for_a_generated_token(tmp_path: Path) -> None:
    data = _valid()
    del data["transport"]
    transport = _parse(data, tmp_path, allow_generated_token=True).transport
    assert transport.token is None
    assert transport.tls_cert is None


# ---- router API keys --------------------------------------------------------------------------


def test_api_keys_inline(tmp_path: Path) -> None:
    data = _valid()
    data["router"]["api_keys"] = ["sk-1", "sk-2"]
    assert _parse(data, tmp_path).router.api_keys == ("sk-1", "sk-2")


def test_api_keys_file_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("# team keys\nsk-1\n\n  sk-2  \n")
    data = _valid()
    data["router"]["api_keys_file"] = "keys.txt"
    assert _parse(data, tmp_path).router.api_keys == ("sk-1", "sk-2")


@pytest.mark.parametrize(
    ("content", "fragment"), [(None, "does not exist"), ("# none\n\n", "holds no key")]
)
def test_api_keys_file_must_hold_keys(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / "keys.txt").write_text(content)
    data = _valid()
    data["router"]["api_keys_file"] = "keys.txt"
    _assert_names(_only_problem(data, tmp_path), "router.api_keys_file", fragment)


def test_api_keys_and_file_are_exclusive(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("sk-1\n")
    data = _valid()
    data["router"].update(api_keys=["sk-2"], api_keys_file="keys.txt")
    _assert_names(_only_problem(data, tmp_path), "router.api_keys_file", "exclusive")


# ---- threshold "auto" -------------------------------------------------------------------------


def test_auto_threshold_matches_the_planner_at_its_best_split(tmp_path: Path) -> None:
    """With the planner's own best N_p, "auto" gives exactly the planner's t."""
    num_pd = 4
    some_split = _parse(_emulated(2, 1, num_pd - 1), tmp_path)
    inputs, _ = planner_inputs(some_split)
    plan, _ = plan_prfaas(inputs)
    assert plan.num_pd_p is not None
    best_split = _emulated(2, plan.num_pd_p, num_pd - plan.num_pd_p)
    policy = _parse(best_split, tmp_path).policy
    assert policy.threshold_tokens == plan.point.threshold_tokens
    assert policy.threshold_source.startswith("auto: Eq. 7 over paper-1t")
    assert f"t={plan.point.threshold_tokens:.0f} tokens" in policy.threshold_source


def test_auto_threshold_balances_the_prefill_paths(tmp_path: Path) -> None:
    """Eq. 7: at t, Θ_prfaas / p = Θ_pd-p / (1 - p)."""
    topology = _parse(_emulated(2, 1, 2), tmp_path)
    inputs, num_pd_p = planner_inputs(topology)
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    t = topology.policy.threshold_tokens
    point = evaluate(costs, inputs.lengths, t, 2, num_pd_p, 2)
    p = point.offload_fraction
    assert 0 < p < 1
    assert point.theta_prfaas_per_s / p == pytest.approx(point.theta_pd_p_per_s / (1 - p), rel=1e-3)


def test_auto_threshold_follows_the_instances(tmp_path: Path) -> None:
    """More PrfaaS instances take more prompts: the threshold falls."""
    few = _parse(_emulated(1, 1, 2), tmp_path).policy.threshold_tokens
    many = _parse(_emulated(3, 1, 2), tmp_path).policy.threshold_tokens
    assert many < few


def test_auto_threshold_needs_pd_prefill(tmp_path: Path) -> None:
    data = _emulated(1, 0, 2)
    data["policy"]["deployment"] = "naive"
    _assert_names(
        _only_problem(data, tmp_path),
        "policy.threshold",
        "\"auto\": needs a prefill instance in cluster 'pd'",
    )


def test_auto_threshold_needs_one_hardware_per_prefill_pool(tmp_path: Path) -> None:
    data = _emulated(2, 1, 1)
    data["clusters"][0]["instances"][1]["hardware"] = "b200"
    _assert_names(
        _only_problem(data, tmp_path),
        "policy.threshold",
        "needs one hardware and num_gpus",
        "8 x b200, 8 x h200",
    )


def test_auto_threshold_needs_a_single_pd_cluster(tmp_path: Path) -> None:
    data = _emulated(1, 1, 1)
    second = {"name": "pd2", "kind": "pd", "instances": [_instance("d9", "decode", 18400)]}
    data["clusters"].append(second)
    _assert_names(
        _only_problem(data, tmp_path), "policy.threshold", "exactly one cluster of kind 'pd'"
    )


# ---- documentation ----------------------------------------------------------------------------


def test_docs_describe_every_key() -> None:
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    section = text[text.index("## Topology file") :]
    assert [k for k in TOP_KEYS if f"[{k}]" not in section] == []
    keys = MODEL_KEYS + ROUTER_KEYS + LINK_KEYS + POLICY_KEYS + TRANSPORT_KEYS
    keys += CLUSTER_KEYS + INSTANCE_KEYS + PREFIX_CACHE_KEYS + CONTROLLER_KEYS
    assert [k for k in keys if f"`{k}`" not in section] == []


def test_router_concurrency_per_key_is_a_topology_key(tmp_path: Path) -> None:
    from prfaas.router.app import build_router_app
    from prfaas.service.limits import ConcurrencyLimit

    data = _valid()
    assert _parse(data, tmp_path).router.max_concurrent_per_key == 256
    data["router"]["max_concurrent_per_key"] = 3
    topology = _parse(data, tmp_path)
    assert topology.router.max_concurrent_per_key == 3
    app = build_router_app(topology)
    limits = [m.kwargs for m in app.user_middleware if m.cls is ConcurrencyLimit]
    assert limits == [{"max_concurrent": 3}]
    data["router"]["max_concurrent_per_key"] = 0
    _assert_names(_only_problem(data, tmp_path), "router.max_concurrent_per_key", ">= 1")
