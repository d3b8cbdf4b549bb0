"""What `prfaas up` prints once the deployment is ready: the `curl` request it suggests carries
an `Authorization: Bearer` header when the router requires API keys (without one it gets 401),
and none when the router is open; an "auto" threshold reads as whole tokens."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from prfaas.cli.serve import _print_banner
from prfaas.launch.local import EmbeddedOptions, embedded_topology
from prfaas.topology import Topology, load_topology

EMULATED_1T = Path(__file__).resolve().parents[3] / "examples" / "emulated-1t.toml"


def _banner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], api_keys: tuple[str, ...] = ()
) -> str:
    options = EmbeddedOptions(router_port=8000, engine="emulated", api_keys=api_keys)
    return _banner_of(load_topology(embedded_topology(tmp_path, options)), capsys)


def _banner_of(topology: Topology, capsys: pytest.CaptureFixture[str]) -> str:
    launcher = SimpleNamespace(router_url="http://127.0.0.1:8000", procs={})
    record = Path("/run/prfaas/up-1.json")  # where `prfaas up` recorded the deployment
    _print_banner(argparse.Namespace(json=False), topology, launcher, record)
    return capsys.readouterr().out


def test_the_curl_hint_sends_a_key_when_keys_are_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _banner(tmp_path, capsys, ("sk-secret-key",))
    assert '-H "Authorization: Bearer $PRFAAS_API_KEY"' in out
    assert "sk-secret-key" not in out  # the key itself is never printed


def test_the_curl_hint_of_an_open_router_has_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "Authorization" not in _banner(tmp_path, capsys, ())


def test_an_auto_threshold_prints_as_whole_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    topology = load_topology(EMULATED_1T)
    assert topology.policy.threshold_tokens == pytest.approx(11642.45, abs=0.01)
    assert "prompts longer than t = 11642 tokens" in _banner_of(topology, capsys)
