"""`[transport] congestion_control`: validated in the topology, checked against the kernel where a
sender starts, and set on every KV connection a sender opens."""

from __future__ import annotations

import socket

import pytest
from test_topology_kv_listen import _only_problem, _parse, _valid

from prfaas.errors import UserError
from prfaas.service.http import transport_config
from prfaas.transport.channel import check_congestion_control, tune_socket
from prfaas.transport.config import TransportConfig

needs_tcp_congestion = pytest.mark.skipif(
    not hasattr(socket, "TCP_CONGESTION"), reason="no TCP_CONGESTION on this platform"
)


def _usable() -> str:
    """An algorithm a socket here accepts: the one new sockets get."""
    with socket.socket() as sock:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return raw.split(b"\0")[0].decode()


def test_unset_keeps_the_kernel_default() -> None:
    topology = _parse(_valid())
    assert topology.transport.congestion_control is None
    assert transport_config(topology).congestion_control is None


@pytest.mark.parametrize("name", ["", "Cubic", "bbr;rm", "x" * 16, 3])
def test_a_bad_name_is_refused_with_the_key(name: object) -> None:
    data = _valid()
    data["transport"]["congestion_control"] = name
    _only_problem(data, "transport.congestion_control")


@needs_tcp_congestion
def test_the_senders_sockets_use_the_configured_algorithm() -> None:
    name = _usable()
    data = _valid()
    data["transport"]["congestion_control"] = name
    config = transport_config(_parse(data))
    assert config.congestion_control == name
    with socket.socket() as sock:
        tune_socket(sock, 0, config.congestion_control)
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    assert raw.split(b"\0")[0].decode() == name


@needs_tcp_congestion
def test_an_algorithm_the_kernel_lacks_is_a_user_error_at_start() -> None:
    data = _valid()
    data["transport"]["congestion_control"] = "nosuchalgo"
    topology = _parse(data)  # a name like any other: the kernel decides where the sender runs
    with pytest.raises(ValueError, match=r"'nosuchalgo' is not usable here .*available:"):
        check_congestion_control("nosuchalgo")
    with pytest.raises(UserError, match=r"transport\.congestion_control"):
        transport_config(topology)


def test_transport_config_refuses_a_malformed_name() -> None:
    with pytest.raises(ValueError, match="congestion_control"):
        TransportConfig(congestion_control="no spaces")


def test_senders_are_sized_to_the_topologys_link() -> None:
    data = _valid()
    data.setdefault("link", {}).update({"gbps": 25.0, "rtt_ms": 40.0})
    config = transport_config(_parse(data))
    assert config.link_gbps == 25.0 and config.size_to_link
    assert config.link_rtt_s == pytest.approx(0.040)
