"""The planner's link: payload efficiency and loss lower Eq. 3's B_out where the link binds, the
RTT is reported, and the JSON and the text say which path was used."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from prfaas.cli import main
from prfaas.plan import PlanSettings, resolve, run_plan
from prfaas.policy.throughput import evaluate
from prfaas.policy.transfer import LinkPath
from prfaas.types import DeploymentKind

LINK_BOUND = PlanSettings(link_gbps=5.0)  # the case study on a 5 Gbps link: egress binds


def test_efficiency_lowers_the_link_bound_capacity_by_its_share() -> None:
    inputs = resolve(LINK_BOUND)
    lossy = replace(inputs, link_path=LinkPath(payload_efficiency=0.9))
    t, split = 20_000.0, (4, 4, 4)
    full = evaluate(inputs.stage_costs(inputs.prfaas, inputs.pd), inputs.lengths, t, *split)
    less = evaluate(lossy.stage_costs(lossy.prfaas, lossy.pd), lossy.lengths, t, *split)
    assert full.prfaas_egress_limited and less.prfaas_egress_limited
    assert less.theta_prfaas_per_s == pytest.approx(0.9 * full.theta_prfaas_per_s)


def test_the_planned_lambda_max_follows_the_effective_bandwidth() -> None:
    inputs = resolve(LINK_BOUND)
    full = run_plan(inputs).by_kind()[DeploymentKind.PRFAAS]
    at_90 = run_plan(replace(inputs, link_path=LinkPath(payload_efficiency=0.9)))
    less = at_90.by_kind()[DeploymentKind.PRFAAS]
    assert less.point.lambda_max_per_s < full.point.lambda_max_per_s
    naive_full = run_plan(inputs).by_kind()[DeploymentKind.NAIVE].point
    naive_less = at_90.by_kind()[DeploymentKind.NAIVE].point
    assert naive_full.prfaas_egress_limited  # every request crosses: the link binds naive
    assert naive_less.lambda_max_per_s == pytest.approx(0.9 * naive_full.lambda_max_per_s)


def test_loss_caps_egress_at_one_transfer_per_prfaas_instance() -> None:
    """0.1% loss at 50 ms: 1448 / (0.05 x sqrt(0.002/3)) = 1.12 MB/s per connection, 2 per
    transfer, 4 PrfaaS instances: 8.97 MB/s = 0.0718 Gbps, far under the 5 Gbps wire."""
    inputs = replace(resolve(LINK_BOUND), link_path=LinkPath(rtt_s=0.05, loss_rate=0.001))
    assert inputs.effective_link_gbps() == pytest.approx(
        8 * 1448 / (0.05 * (0.002 / 3) ** 0.5) * 8 / 1e9
    )


def test_the_cli_reports_the_path_it_used(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--link-gbps", "5", "--rtt-ms", "50", "--link-efficiency", "0.9"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    path = out["inputs"]["link_path"]
    assert (path["rtt_ms"], path["payload_efficiency"]) == (50.0, 0.9)
    assert path["effective_gbps"] == pytest.approx(4.5)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "link path: RTT 50 ms, jitter 0 ms (normal), loss 0%, payload efficiency 0.9" in text
    assert "effective PrfaaS egress 4.5 Gbps" in text
