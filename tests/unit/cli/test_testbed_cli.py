"""`prfaas testbed`: one line and exit status 2 where namespaces are unavailable or flags are bad
(no namespace is made in these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.cli import main
from prfaas.testbed.layout import TestbedSpec


@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "prfaas.testbed.netns.netns_unavailable_reason", lambda: "network namespaces need root"
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
        (["--prefill-latency", "h20"], "HW=SPEC"),
        (["--prefill-latency", "h20=linear:1"], "bad latency spec"),
        (["--prefill-latency", "h20=cost-model"], "default"),
        (["--prefill-latency", "h20=quadratic:1,x,2"], "three numbers"),
        (["--prefill-latency", "a100=quadratic:1,0,0"], "h200 or h20"),
        (["--prefill-latency", "h200=profile:no-such"], "unknown profile"),
        (["--prefill-latency", "h20=quadratic:1,0,0"] * 2, "given twice"),
        (["--engine", "torch", "--paper-curves"], "emulated engine only"),
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
    assert "--gbps, --down, --up or a delay line flag" in capsys.readouterr().err


_BAD_DELAY_FLAGS = [
    (["--delay-ms", "-1"], "--delay-ms: must be >= 0"),
    (["--delay-ms", "nan"], "--delay-ms: expected a finite number"),
    (["--delay-ms", "inf"], "--delay-ms: expected a finite number"),
    (["--delay-ms", "20000"], "--delay-ms: must be <= 10,000"),
    (["--jitter-ms", "-0.5"], "--jitter-ms: must be >= 0"),
    (["--jitter-ms", "NaN"], "--jitter-ms: expected a finite number"),
    (["--loss-pct", "100"], "--loss-pct: must be < 100"),
    (["--loss-pct", "-1"], "--loss-pct: must be >= 0"),
    (["--loss-pct", "inf"], "--loss-pct: expected a finite number"),
    (["--jitter-distribution", "pareto"], "invalid choice"),
]


@pytest.mark.parametrize(("flags", "match"), _BAD_DELAY_FLAGS)
@pytest.mark.parametrize("action", ["up", "link"])
def test_bad_delay_line_flags_are_refused_in_one_line(
    action: str, flags: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["testbed", action, "--state-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "prfaas-tb").exists()


@pytest.mark.parametrize(
    ("action", "flags"),
    [
        ("up", ["--gbps", "400", "--payload-scale", "0.01"]),  # 4 Gbit/s on the wire
        ("up", ["--engine", "torch", "--gbps", "2.5", "--threshold", "64"]),
        ("link", ["--gbps", "300"]),  # the default scaling: 3 Gbit/s on the wire
    ],
)
def test_a_wire_rate_the_delay_line_cannot_carry_is_refused(
    action: str,
    flags: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`link` reads the running testbed's scaling from its state: a state file is written."""
    from prfaas.testbed import run as testbed_run
    from prfaas.testbed.layout import TestbedScale
    from prfaas.testbed.state import write_state

    (tmp_path / "prfaas-tb").mkdir()
    write_state(tmp_path / "prfaas-tb", {"scale": vars(TestbedScale()), "delay": {}})
    monkeypatch.setattr(testbed_run, "existing_namespaces", lambda layout: list(layout.namespaces))
    monkeypatch.setattr(testbed_run, "require_netns", lambda: None)
    assert main(["testbed", action, "--state-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the WAN's delay line carries faithfully" in err, err


def test_delay_line_flags_reach_the_spec() -> None:
    spec = _up_spec("--delay-ms", "25", "--jitter-ms", "2", "--jitter-distribution", "normal",
                    "--loss-pct", "0.5", "--reorder", "--delay-seed", "7")  # fmt: skip
    assert spec.delay.to_dict() == {
        "delay_ms": 25.0,
        "jitter_ms": 2.0,
        "jitter_distribution": "normal",
        "loss_pct": 0.5,
        "reorder": True,
    }
    assert spec.delay_seed == 7
    assert _up_spec().delay.to_dict()["delay_ms"] == 0.0


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
    from prfaas.testbed.network import post_link

    told = post_link("http://127.0.0.1:1/internal/control/link", "token", 1.0)
    assert told["router_informed"] is False and told["router_link_bytes_per_s"] is None
    assert "did not answer" in told["router_reason"]


def test_paper_curves_reach_the_topology_and_parse_back() -> None:
    import tomllib

    from prfaas.testbed.layout import PAPER_CURVES, TestbedLayout, topology_text
    from prfaas.topology import parse_topology
    from prfaas.topology.derived import planner_inputs

    spec = _up_spec("--paper-curves")
    assert spec.prefill_latency == tuple(sorted(PAPER_CURVES))
    text = topology_text(spec, TestbedLayout(spec.name), None, 1000.0, spec.scale.wire_gbps)
    topology = parse_topology(tomllib.loads(text), Path("."), source="testbed")
    assert topology.model.prefill_latency_spec("h20") == "quadratic:0.469,0.00013,2.945e-10"
    assert topology.model.prefill_latency_spec("h200") == "profile:paper-1t-h200"
    inputs, _ = planner_inputs(topology)
    assert inputs.pd.t_prefill_s(32768) == pytest.approx(
        0.469 + 1.3e-4 * 32768 + 2.945e-10 * 32768**2
    )
    assert inputs.prfaas.t_prefill_s(32768) == pytest.approx(1.8431)  # the profile's row


def test_prefill_latency_overrides_one_paper_curve_and_auto_sees_it() -> None:
    from prfaas.testbed.layout import resolve_threshold

    spec = _up_spec("--paper-curves", "--prefill-latency", "H20=quadratic:0.1,1e-6,0")
    assert spec.prefill_latency == (
        ("h20", "quadratic:0.1,1e-6,0"),
        ("h200", "profile:paper-1t-h200"),
    )
    fast_pd, _ = resolve_threshold(spec)
    paper, _ = resolve_threshold(_up_spec("--paper-curves"))
    assert fast_pd is not None and paper is not None and fast_pd > paper


def test_a_relative_profile_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = '[{"tokens": 1000, "t_prefill_s": 1.0}, {"tokens": 2000, "t_prefill_s": 1.5}]'
    (tmp_path / "h20.json").write_text(rows)
    monkeypatch.chdir(tmp_path)
    spec = _up_spec("--prefill-latency", "h20=profile:h20.json")
    assert spec.prefill_latency == (("h20", f"profile:{tmp_path / 'h20.json'}"),)
