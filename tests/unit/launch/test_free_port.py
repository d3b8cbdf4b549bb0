"""free_port: never a port it handed out before in this process, nor one the caller avoids.

The kernel may hand a just-released ephemeral port out again; `prfaas up` once wrote a topology
whose decode KV port was the router port it had been given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prfaas.launch import local as launcher
from prfaas.launch.local import EmbeddedOptions, embedded_topology, free_port
from prfaas.topology import load_topology


class _ScriptedSocket:
    """A socket whose bound port is the next of a script (what the kernel would have chosen)."""

    def __init__(self, ports: Iterator[int]) -> None:
        self._ports = ports
        self._port = 0

    def __enter__(self) -> _ScriptedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self._port = next(self._ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)


def _script_kernel(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> None:
    it = iter(ports)

    def make_socket(*args: Any) -> _ScriptedSocket:
        return _ScriptedSocket(it)

    monkeypatch.setattr(launcher, "_handed_out_ports", set())
    monkeypatch.setattr(launcher.socket, "socket", make_socket)


def test_a_port_handed_out_before_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    _script_kernel(monkeypatch, [5000, 5000, 5001])
    assert [free_port(), free_port()] == [5000, 5001]


def test_an_avoided_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    _script_kernel(monkeypatch, [8000, 5002])
    assert free_port(avoid={8000}) == 5002


def test_no_free_port_is_an_error_not_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    _script_kernel(monkeypatch, [8000] * 1000)
    with pytest.raises(OSError, match="no free port"):
        free_port(avoid={8000})


def test_embedded_topology_never_reuses_the_router_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel offers the router's port (given, not yet bound) for every instance first."""
    _script_kernel(monkeypatch, [8000, 9001, 8000, 9002, 8000, 9003, 8000, 9004])
    topology = load_topology(embedded_topology(tmp_path, EmbeddedOptions(router_port=8000)))
    addresses = [i.http for i in topology.instances] + [
        i.kv for i in topology.instances if i.kv is not None
    ]
    assert sorted(addresses) == [f"127.0.0.1:{p}" for p in (9001, 9002, 9003, 9004)]
