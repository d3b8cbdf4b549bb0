"""`prfaas plan`: the paper's analytical throughput model (Eqs. 3-8) and its grid search.

- `inputs`: validated planner inputs (clusters, curves, link, lengths, decode, prices);
- `presets`: flat settings, the `paper-case-study` presets, and their resolution to inputs;
- `search`: the (t, N_p) grid search for PrfaaS-PD, the homogeneous optimum, the naive split,
  TTFT and egress as the paper computes them, the equal-cost comparison;
- `cost`: the cost view: each deployment's cost per hour, request and million tokens at Λ_max,
  and the cheapest split under a TTFT SLO;
- `report`: Table 6 rows, the cost table and the `--json` object; `plot`: Figure 5 (matplotlib,
  lazy).

The equations themselves are pure and live in `prfaas.policy.throughput`, so that a live router
can re-search its threshold with the same code.
"""

from prfaas.plan.inputs import ClusterSpec, PlanInputs
from prfaas.plan.presets import PRESETS, PlanSettings, get_preset, resolve, with_overrides
from prfaas.plan.search import DeploymentPlan, PlanResult, run_plan

__all__ = [
    "PRESETS",
    "ClusterSpec",
    "DeploymentPlan",
    "PlanInputs",
    "PlanResult",
    "PlanSettings",
    "get_preset",
    "resolve",
    "run_plan",
    "with_overrides",
]
