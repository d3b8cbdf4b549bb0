"""The adaptive controller in the simulator: role changes drain, retire and replace instances and
show in the decision log and the time series; runs are deterministic; nothing flaps under a
constant load; a static run records the same series without deciding."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from sim_factories import make_config

from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.policy.controller import ControllerConfig
from prfaas.sim.config import SimRequest
from prfaas.sim.link import BandwidthStep
from prfaas.sim.simulator import Simulator
from prfaas.sim.traffic import synthetic_requests
from prfaas.types import DeploymentKind
from prfaas.workload import TruncatedLogNormal

# Small and fast: 10 s periods, a 100 s window. Prompts of ~2K tokens take ~3 s to prefill (T(l) =
# 1 + 0.001 l on every instance) while a decode instance serves 4 req/s (BS 4, 0.1 s steps, 10
# output tokens): with 1 PD-P and 3 PD-D prefill binds, the best split is 3 / 1.
CTL = ControllerConfig(
    period_s=10.0,
    window_s=100.0,
    min_samples=10,
    persistence_ticks=2,
    cooldown_s=20.0,
    min_shift_samples=5,
)
LONG = TruncatedLogNormal(7.5, 0.5, 500, 4000)
SHORT = TruncatedLogNormal(5.0, 0.5, 20, 500)


def prefill_bound(num_pd_p: int = 1, duration_s: float = 300.0, **knobs: Any) -> Simulator:
    requests = synthetic_requests(LONG, 10, 0.6, seed=1, duration_s=duration_s)
    config = make_config(
        num_prfaas=1,
        num_pd_p=num_pd_p,
        num_decode=4 - num_pd_p,
        link_bytes_per_s=1e5,
        controller=CTL,
        route_hysteresis=True,
        **knobs,
    )
    return Simulator(config, requests)


def decode_bound() -> Simulator:
    """Short prompts, 400 output tokens: decode binds, the best split is 1 / 3."""
    requests = synthetic_requests(SHORT, 400, 0.3, seed=2, duration_s=300)
    config = make_config(
        num_prfaas=1, num_pd_p=3, num_decode=1, link_bytes_per_s=1e5, threshold_tokens=200,
        controller=CTL,
    )  # fmt: skip
    return Simulator(config, requests)


def test_role_change_is_logged_and_changes_the_counts() -> None:
    sim = prefill_bound()
    result = sim.run()
    control = result["controller"]
    changes = [d for d in control["decisions"] if d["kind"] == "role_change"]
    assert [(c["from_role"], c["to_role"]) for c in changes] == [("pd_decode", "pd_prefill")] * 2
    assert all(c["reason"].startswith("prefill binds:") and c["inputs"] for c in changes)
    series = control["series"]
    assert (series[0]["num_pd_p"], series[0]["num_pd_d"]) == (1, 3)
    assert (series[-1]["num_pd_p"], series[-1]["num_pd_d"]) == (3, 1)
    assert all(s["num_pd_p"] + s["num_pd_d"] + s["num_draining"] == 4 for s in series)
    assert control["metrics"]["prfaas:role_changes_total"] == 2
    assert result["num_unfinished"] == 0
    for share in result["utilization"].values():
        assert 0 < share <= 1


@pytest.mark.parametrize(
    ("link_change_share", "link_hold_s", "at_s"),
    [(0.2, 0.0, 55.0), (0.2, 2.5, 57.5), (100.0, 0, 0)],
)
def test_a_bandwidth_step_makes_the_controller_decide_between_ticks(
    link_change_share: float, link_hold_s: float, at_s: float
) -> None:
    """The link drops 50x at 55 s, between two ticks: the controller raises t at 55 s, as the
    router does when told, or once the drop held `link_hold_s` (the simulator wakes it then);
    if the drop did not count as a link change, only at a later tick."""
    ctl = replace(
        CTL, persistence_ticks=100, link_change_share=link_change_share, link_hold_s=link_hold_s
    )
    steps = (BandwidthStep(0.0, 1e5 * 8 / 1e9), BandwidthStep(55.0, 2e3 * 8 / 1e9))
    requests = synthetic_requests(LONG, 10, 0.6, seed=1, duration_s=120)
    config = make_config(num_pd_p=2, num_decode=2, bandwidth=steps, controller=ctl)
    decisions = Simulator(config, requests).run()["controller"]["decisions"]
    raised = [d for d in decisions if d["kind"] == "threshold" and d["at_s"] >= 55.0]
    assert raised and raised[0]["new_threshold_tokens"] > raised[0]["old_threshold_tokens"]
    assert raised[0]["at_s"] == at_s or (not at_s and raised[0]["at_s"] % 10 == 0)
    assert ("link capacity changed" in raised[0]["reason"]) == (link_change_share < 1)


def test_a_draining_instance_takes_no_new_work_and_finishes_what_it_holds() -> None:
    sim = prefill_bound()
    conversions = sim.run()["controller"]["conversions"]
    log = sim.log
    assert len(conversions) == 2
    for c in conversions:
        old, start, end = c["instance"], c["drain_from_s"], c["retired_at_s"]
        assert start <= end
        mine = [i for i in range(log.num_requests) if log.decode_instance[i] == old]
        assert mine and all(log.arrived_at[i] <= start for i in mine)
        assert max(log.finished_at[i] for i in mine) == pytest.approx(end)
        new = c["new_instance"]
        assert new.startswith("pd-p-")
        assert any(log.prefill_instance[i] == new for i in range(log.num_requests))
        assert all(
            log.prefill_started_at[i] >= end
            for i in range(log.num_requests)
            if log.prefill_instance[i] == new
        )


def test_prefill_instances_become_decode_instances_when_decode_binds() -> None:
    sim = decode_bound()
    result = sim.run()
    conversions = result["controller"]["conversions"]
    assert [c["from_role"] for c in conversions] == ["pd_prefill", "pd_prefill"]
    changes = [d for d in result["controller"]["decisions"] if d["kind"] == "role_change"]
    assert all(c["reason"].startswith("decode binds:") for c in changes)
    assert result["controller"]["series"][-1]["num_pd_p"] == 1
    new_decode = {c["new_instance"] for c in conversions}
    assert new_decode <= set(sim.log.decode_instance)
    for c in conversions:  # a drained prefill instance ran nothing after its retirement
        ran = [
            sim.log.prefill_done_at[i]
            for i in range(sim.log.num_requests)
            if sim.log.prefill_instance[i] == c["instance"]
        ]
        assert all(t <= c["retired_at_s"] for t in ran)


def test_controller_runs_are_deterministic() -> None:
    first = json.dumps(prefill_bound().run(), sort_keys=True)
    assert json.dumps(prefill_bound().run(), sort_keys=True) == first


def test_no_role_flapping_under_constant_load() -> None:
    """Started at the best split (3 / 1) under the same load for 15 minutes: no conversion."""
    result = prefill_bound(num_pd_p=3, duration_s=900.0).run()
    control = result["controller"]
    assert control["metrics"]["prfaas:role_changes_total"] == 0
    assert {(s["num_pd_p"], s["num_pd_d"]) for s in control["series"]} == {(3, 1)}


def test_static_series_records_without_deciding() -> None:
    requests = synthetic_requests(LONG, 10, 0.6, seed=1, duration_s=120)
    config = make_config(num_pd_p=1, num_decode=3, link_bytes_per_s=1e5, series_period_s=10.0)
    sim = Simulator(config, requests)
    result = sim.run()
    control = result["controller"]
    assert "decisions" not in control and "metrics" not in control
    assert len(control["series"]) >= 12
    assert {s["threshold_tokens"] for s in control["series"]} == {1000}
    assert {(s["num_pd_p"], s["num_pd_d"]) for s in control["series"]} == {(1, 3)}
    last_s = control["series"][-1]["at_s"]
    done = sum(1 for t in sim.log.finished_at if t <= last_s)
    assert sum(s["throughput_rps"] * 10 for s in control["series"]) == pytest.approx(done)
    assert all(s["link_backlog_s"] >= 0 and s["egress_gbps"] >= 0 for s in control["series"])
    plain = make_config(num_pd_p=1, num_decode=3, link_bytes_per_s=1e5)
    assert "controller" not in Simulator(plain, requests).run()


def test_route_hysteresis_is_counted_and_off_by_default() -> None:
    burst = [SimRequest(0.1 * k, 3000, 10) for k in range(60)]  # the PrfaaS queue builds up
    config = make_config(num_pd_p=1, num_decode=3, link_bytes_per_s=1e5, series_period_s=10.0)
    routed = replace(config, route_hysteresis=True)
    assert "route_mode_switches" in Simulator(routed, burst).run()
    assert "route_mode_switches" not in Simulator(config, burst).run()


def test_adaptive_control_needs_a_prfaas_deployment() -> None:
    with pytest.raises(UserError):
        make_config(DeploymentKind.HOMOGENEOUS, controller=CTL)
    with pytest.raises(UserError):
        make_config(DeploymentKind.NAIVE, route_hysteresis=True)
    with pytest.raises(UserError):
        make_config(series_period_s=0.0)
    with pytest.raises(UserError):
        make_config(series_period_s=math.nan)


# --- `prfaas sim --controller` -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--controller", "adaptive", "--find-max-rate"],
        ["--controller", "adaptive", "--controller-period-s", "0"],
        ["--controller", "sometimes"],
    ],
)
def test_cli_controller_bad_input_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "--deployment", "prfaas", *argv]) == 2
    assert capsys.readouterr().err.strip()


def test_cli_adaptive_run_logs_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    """Ten minutes of the case study at 90% load with the link dropping to 10 Gbps at 300 s: the
    controller raises t and converts a PD-D instance; static runs have no controller section."""
    argv = ["sim", "--deployment", "prfaas", "--duration-s", "600", "--drain-s", "60"]
    argv += ["--link-drop", "300:10", "--load", "0.9", "--json"]
    assert main([*argv, "--controller", "adaptive", "--controller-period-s", "30"]) == 0
    adaptive = json.loads(capsys.readouterr().out)["prfaas"]
    control = adaptive["controller"]
    assert control["period_s"] == 30
    kinds = [d["kind"] for d in control["decisions"] if d["at_s"] >= 300]
    assert "threshold" in kinds and "role_change" in kinds
    assert control["metrics"]["prfaas:role_changes_total"] >= 1
    assert control["metrics"]["prfaas:threshold_tokens"] > adaptive["threshold_tokens"]
    assert "route_mode_switches" in adaptive
    assert main(argv) == 0
    assert "controller" not in json.loads(capsys.readouterr().out)["prfaas"]
