"""`prfaas testbed`: one line and exit status 2 where namespaces are unavailable or flags are bad
(no namespace is made in these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.cli import main
from prfaas.nodes.testbed import TestbedSpec


@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "prfaas.transport.netns.netns_unavailable_reason", lambda: "network namespaces need root"
    )


@pytest.mark.parametrize("action", [["up"], ["down"], ["status"], ["link", "--gbps", "10"]])
def test_without_namespaces_every_action_says_so_in_one_line(
    no_namespaces: None, action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["testbed", *action, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need root" in err and err.startswith("prfaas testbed: error:")
    assert not (tmp_path / "prfaas-tb").exists()  # nothing written before the check


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--payload-scale", "2"], "must be <= 1"),
        (["--time-scale", "0"], "must be > 0"),
        (["--time-scale", "0.0001"], "wire rate"),
        (["--engine", "torch", "--payload-scale", "0.5"], "emulated only"),
        (["--threshold", "lots"], "auto"),
        (["--name", "Bad_Name"], "testbed name"),
        (["--pd-decode", "0"], "PD decode"),
        (["--prfaas", "0"], "PrfaaS prefill"),
        (["--deployment", "homogeneous", "--pd-prefill", "0"], "PD prefill"),
        (["--deployment", "homogeneous", "--controller"], "controller adapts"),
        (["--deployment", "naive", "--threshold", "100"], "--threshold applies"),
        (["--deployment", "mixed"], "invalid choice"),
    ],
)
def test_bad_up_flags_are_refused_with_their_reason(
    flags: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["testbed", "up", "--state-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err
    assert not (tmp_path / "prfaas-tb").exists()


def test_link_needs_a_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["testbed", "link", "--state-dir", str(tmp_path)]) == 2
    assert "--gbps, --down or --up" in capsys.readouterr().err


def _up_spec(*flags: str) -> TestbedSpec:
    """The `TestbedSpec` that `prfaas testbed up FLAGS` would build (nothing is made)."""
    from prfaas.cli import build_parser
    from prfaas.cli.testbed import spec_from_args

    return spec_from_args(build_parser().parse_args(["testbed", "up", *flags]))


def test_up_defaults_to_a_static_prfaas_deployment() -> None:
    spec = _up_spec()
    assert (spec.deployment, spec.controller, spec.threshold) == ("prfaas", False, "auto")


def test_up_flags_choose_the_deployment_and_the_controller() -> None:
    spec = _up_spec("--deployment", "homogeneous", "--prfaas", "0", "--pd-prefill", "10",
                    "--pd-decode", "2")  # fmt: skip
    assert spec.deployment == "homogeneous" and not spec.controller
    counts = (spec.num_prfaas_prefill, spec.num_pd_prefill, spec.num_pd_decode)
    assert counts == (0, 10, 2)
    assert _up_spec("--controller").controller


def test_a_router_that_cannot_be_told_is_reported_not_raised() -> None:
    """`link --gbps` reports a router that does not answer (nothing listens on port 1)."""
    from prfaas.nodes.testbed_run import post_link

    told = post_link("http://127.0.0.1:1/internal/control/link", "token", 1.0)
    assert told["router_informed"] is False and told["router_link_bytes_per_s"] is None
    assert "did not answer" in told["router_reason"]
