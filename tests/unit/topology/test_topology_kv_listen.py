"""The topology keys that put something between KV senders and a receiver, and size its pool:
an instance's `kv_listen` (where its receiver binds when the others reach it at `kv`) and
`[transport] receive_pool_bytes` (the receiver's buffer budget), through validation, the
transport settings, the receiver a decode instance builds, and the embedded deployment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.instance.decode import make_kv_receiver
from prfaas.launch.local import EmbeddedOptions, embedded_topology, free_port
from prfaas.service.http import transport_config
from prfaas.topology import Topology, load_topology, parse_topology
from prfaas.topology.schema import (
    MAX_RECEIVE_POOL_BYTES,
    MIN_RECEIVE_POOL_BYTES,
    TopologyError,
)

SOURCE = "topology.toml"
Data = dict[str, Any]


def _valid() -> Data:
    """Router, PrfaaS prefill, PD prefill + decode (kv on 18301), token."""
    return {
        "model": {"name": "qwen3_next"},
        "router": {"http": "127.0.0.1:18000"},
        "policy": {"threshold": 64},
        "transport": {"token": "secret"},
        "clusters": [
            {
                "name": "prfaas",
                "kind": "prfaas",
                "instances": [{"name": "r0", "role": "prefill", "http": "127.0.0.1:18100"}],
            },
            {
                "name": "pd",
                "kind": "pd",
                "instances": [
                    {"name": "p0", "role": "prefill", "http": "127.0.0.1:18200"},
                    {
                        "name": "d0",
                        "role": "decode",
                        "http": "127.0.0.1:18300",
                        "kv": "127.0.0.1:18301",
                    },
                ],
            },
        ],
    }


def _decode(data: Data) -> Data:
    instance: Data = data["clusters"][1]["instances"][1]
    return instance


def _parse(data: Data) -> Topology:
    return parse_topology(data, Path("."), source=SOURCE)


def _problems(data: Data) -> tuple[str, ...]:
    with pytest.raises(TopologyError) as info:
        _parse(data)
    return info.value.problems


def _only_problem(data: Data, key: str, *fragments: str) -> None:
    problems = _problems(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SOURCE}: {key}: "), problems[0]
    for fragment in fragments:
        assert fragment in problems[0], problems[0]


# ---- kv_listen --------------------------------------------------------------------------------


def test_kv_listen_defaults_to_kv() -> None:
    decode = _parse(_valid()).instance("d0")
    assert decode.kv_listen is None
    assert decode.kv_bind_address == "127.0.0.1:18301"
    assert _parse(_valid()).instance("r0").kv_bind_address is None


@pytest.mark.parametrize("listen", ["0.0.0.0:18301", "[::]:9000", "127.0.0.1:18399", "10.1.2.3:1"])
def test_kv_listen_is_where_the_receiver_binds(listen: str) -> None:
    data = _valid()
    _decode(data)["kv"] = "203.0.113.7:18301"  # what the others send to (NAT)
    _decode(data)["kv_listen"] = listen
    decode = _parse(data).instance("d0")
    assert (decode.kv, decode.kv_listen, decode.kv_bind_address) == (
        "203.0.113.7:18301",
        listen,
        listen,
    )


def test_kv_listen_may_repeat_its_own_kv() -> None:
    data = _valid()
    _decode(data)["kv_listen"] = "127.0.0.1:18301"
    assert _parse(data).instance("d0").kv_bind_address == "127.0.0.1:18301"


@pytest.mark.parametrize("bad", ["nohost", "127.0.0.1:0", "127.0.0.1:70000", "::1:80", ":80", ""])
def test_kv_listen_must_be_an_address(bad: str) -> None:
    data = _valid()
    _decode(data)["kv_listen"] = bad
    key = "clusters[1].instances[1].kv_listen"
    _only_problem(data, key, "bad address")


@pytest.mark.parametrize("value", [18301, True, ["127.0.0.1:1"]])
def test_kv_listen_must_be_a_string(value: object) -> None:
    data = _valid()
    _decode(data)["kv_listen"] = value
    _only_problem(data, "clusters[1].instances[1].kv_listen", '"host:port"')


def test_kv_listen_needs_kv() -> None:
    data = _valid()
    data["clusters"][1]["instances"][0]["kv_listen"] = "127.0.0.1:18399"  # PD prefill, no kv
    _only_problem(data, "clusters[1].instances[0].kv_listen", "only an instance with kv")


def test_kv_listen_on_a_prfaas_instance_with_a_bad_kv_reports_kv_only() -> None:
    """A PrfaaS prefill instance may have kv (moved prefixes) and kv_listen; when its kv is
    refused, its kv_listen adds no second line."""
    data = _valid()
    data["clusters"][0]["instances"][0].update(kv="127.0.0.1:18101", kv_listen="0.0.0.0:18101")
    assert _parse(data).instance("r0").kv_bind_address == "0.0.0.0:18101"
    data["clusters"][0]["instances"][0]["kv"] = "127.0.0.1:0"
    _only_problem(data, "clusters[0].instances[0].kv", "1..65535")


def test_kv_listen_clashes_with_another_endpoint() -> None:
    data = _valid()
    _decode(data)["kv_listen"] = "127.0.0.1:18200"  # the PD prefill instance's http
    _only_problem(
        data,
        "clusters[1].instances[1].kv_listen",
        "duplicate address (also at clusters[1].instances[0].http)",
    )


def test_kv_listen_clashes_with_another_instances_kv_listen() -> None:
    data = _valid()
    data["clusters"][1]["instances"][0]["kv"] = "127.0.0.1:18201"
    data["clusters"][1]["instances"][0]["kv_listen"] = "127.0.0.1:19000"
    _decode(data)["kv_listen"] = "127.0.0.1:19000"
    _only_problem(data, "clusters[1].instances[1].kv_listen", "also at clusters[1].instances[0]")


def test_wildcard_kv_listen_on_several_instances_is_allowed() -> None:
    """0.0.0.0:P names no machine: one per host behind NAT, each reached at its own kv."""
    data = _valid()
    data["clusters"][1]["instances"][0].update(kv="10.0.0.1:9000", kv_listen="0.0.0.0:9000")
    _decode(data).update(kv="10.0.0.2:9000", kv_listen="0.0.0.0:9000")
    topology = _parse(data)
    assert {i.kv_bind_address for i in topology.instances if i.kv} == {"0.0.0.0:9000"}


# ---- receive_pool_bytes -----------------------------------------------------------------------


def test_receive_pool_bytes_default_is_the_transports() -> None:
    topology = _parse(_valid())
    assert transport_config(topology).max_buffer_bytes == topology.transport.receive_pool_bytes
    assert topology.transport.receive_pool_bytes == 8 << 30


@settings(max_examples=30, deadline=None)
@given(st.integers(MIN_RECEIVE_POOL_BYTES, MAX_RECEIVE_POOL_BYTES))
def test_receive_pool_bytes_in_bounds_reach_the_receiver(num_bytes: int) -> None:
    data = _valid()
    data["transport"]["receive_pool_bytes"] = num_bytes
    topology = _parse(data)
    assert topology.transport.receive_pool_bytes == num_bytes
    assert transport_config(topology).max_buffer_bytes == num_bytes


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (MIN_RECEIVE_POOL_BYTES - 1, f">= {MIN_RECEIVE_POOL_BYTES}"),
        (0, f">= {MIN_RECEIVE_POOL_BYTES}"),
        (-1, f">= {MIN_RECEIVE_POOL_BYTES}"),
        (MAX_RECEIVE_POOL_BYTES + 1, f"<= {MAX_RECEIVE_POOL_BYTES:,}"),
        (64.0 * (1 << 20), "an integer"),
        ("64MiB", "an integer"),
        (True, "an integer"),
    ],
)
def test_receive_pool_bytes_out_of_bounds_is_refused(value: object, fragment: str) -> None:
    data = _valid()
    data["transport"]["receive_pool_bytes"] = value
    _only_problem(data, "transport.receive_pool_bytes", fragment)


# ---- where the values go ----------------------------------------------------------------------


def test_decode_receiver_binds_kv_listen_with_the_pool_budget() -> None:
    """The receiver a decode instance builds listens on kv_listen, with the topology's pool."""
    data = _valid()
    port = free_port()
    _decode(data).update(kv="198.51.100.1:7000", kv_listen=f"127.0.0.1:{port}")
    data["transport"]["receive_pool_bytes"] = 16 << 20
    topology = _parse(data)

    async def bound_address() -> tuple[str, int]:
        receiver = make_kv_receiver(topology, topology.instance("d0"), None, None)
        await receiver.start()
        try:
            return receiver.address, receiver.pool.max_total_bytes
        finally:
            await receiver.close()

    assert asyncio.run(bound_address()) == (f"127.0.0.1:{port}", 16 << 20)


def test_embedded_topology_writes_kv_listen_and_the_pool(tmp_path: Path) -> None:
    options = EmbeddedOptions(
        router_port=free_port(),
        decode_kv="127.0.0.1:17001",
        decode_kv_listen="127.0.0.1:17002",
        receive_pool_bytes=32 << 20,
    )
    topology = load_topology(embedded_topology(tmp_path, options))
    decode = topology.instance("pd-decode-0")
    assert (decode.kv, decode.kv_listen) == ("127.0.0.1:17001", "127.0.0.1:17002")
    assert topology.transport.receive_pool_bytes == 32 << 20


def test_embedded_topology_defaults_are_unchanged(tmp_path: Path) -> None:
    topology = load_topology(embedded_topology(tmp_path, EmbeddedOptions(router_port=free_port())))
    decode = topology.instance("pd-decode-0")
    assert decode.kv is not None and decode.kv_listen is None
    assert topology.transport.receive_pool_bytes == 8 << 30
