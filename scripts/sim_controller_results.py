"""The adaptive controller's two simulator targets: docs/results.md "Adaptive controller" and
docs/img/sim_controller_*.png.

Usage: PYTHONPATH=src .venv/bin/python scripts/sim_controller_results.py [--out-md docs/results.md]

1. Link drop 100 -> 10 Gbps half-way at 90% of the planned Λ_max: static t (as planned, with and
   without the per-request rules) against the adaptive controller; egress, link backlog, TTFT p99
   and KV-ready p99 over time. The same runs are `prfaas sim` commands (printed on the page); the
   script checks that each command's summary matches its own run.
2. Traffic shift from short (log-normal mu 8.0) to the case study's long prompts (mu 9.90)
   half-way, at 1.05x the planner's Λ_max for the long mix: the deployment starts at the
   planner's answer for the short mix; throughput and N_p / N_d over time, and how many periods
   the adaptive controller takes to hold 90% of the new optimum.

Without --out-md the markdown goes to stdout; with it, the "## Adaptive controller" section of
that file is replaced (or appended when it has none), the rest of the file kept as it is. Every
run is seeded and deterministic.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sim_results import IMG, save, table  # the results page's table and figure helpers

from prfaas.cli import main as prfaas_main
from prfaas.cli._sim_setup import load_setup
from prfaas.plan import get_preset, with_overrides
from prfaas.policy.controller import ControllerConfig
from prfaas.sim.adaptive import controlled_config, simulate_controlled
from prfaas.sim.config import SimRequest
from prfaas.sim.metrics import percentile, waited_s
from prfaas.sim.presets import SimSetup, planned_split
from prfaas.sim.scenario import Scenario, build_config, make_simulator
from prfaas.sim.simulator import Simulator
from prfaas.sim.traffic import synthetic_requests
from prfaas.types import DeploymentKind

SECTION = "## Adaptive controller"
PRFAAS = DeploymentKind.PRFAAS
PERIOD_S = 30.0  # controller period, and the time series' step in static runs
WINDOW_S = 300.0  # per-arrival-window latency percentiles
CONTROLLER = ControllerConfig(period_s=PERIOD_S)

DROP_AT_S, DROP_GBPS, DROP_LOAD = 1800.0, 10.0, 0.9
SHIFT_AT_S, SHORT_MU, SHIFT_LOAD = 1800.0, 8.0, 1.05
ROLLING = 5  # periods in the rolling throughput mean of the restore criterion
RESTORE_SHARE = 0.9


# --- helpers ----------------------------------------------------------------------------------


def cli_json(*flags: str) -> dict[str, Any]:
    """`prfaas FLAGS --json`, in-process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = prfaas_main([*flags, "--json"])
    if status != 0:
        raise SystemExit(f"prfaas {shlex.join(flags)} exited with {status}")
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def windows(sim: Simulator, end_s: float) -> list[tuple[float, float, float]]:
    """(window start, TTFT p99, KV-ready p99) per arrival window. KV-ready is arrival -> the KV at
    the decode instance (prefill + transfer); one not reached by the end counts its wait so far."""
    log, out = sim.log, []
    for w in range(math.ceil(end_s / WINDOW_S)):
        lo, hi = w * WINDOW_S, (w + 1) * WINDOW_S
        idx = [i for i, t in enumerate(log.arrived_at) if lo <= t < hi]
        ttft = sorted(waited_s(log.first_token_at[i], log.arrived_at[i], sim.now) for i in idx)
        ready = sorted(waited_s(log.kv_ready_at[i], log.arrived_at[i], sim.now) for i in idx)
        out.append((lo, percentile(ttft, 99), percentile(ready, 99)))
    return out


def decisions(summary: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in summary["controller"].get("decisions", []) if d["kind"] == kind]


# --- 1. link drop -----------------------------------------------------------------------------

DROP_VARIANTS = {
    "static t": ([], False, None),
    "static t, no per-request rules": (["--static-threshold"], True, None),
    "adaptive": (["--controller", "adaptive"], False, CONTROLLER),
}
DROP_FLAGS = ["sim", "--deployment", "prfaas", "--load", str(DROP_LOAD)]
DROP_FLAGS += ["--link-drop", f"{DROP_AT_S:g}:{DROP_GBPS:g}"]


def link_drop(setup: SimSetup) -> str:
    base = Scenario(PRFAAS, load_fraction=DROP_LOAD, link_drop=(DROP_AT_S, DROP_GBPS))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(7.5, 8), sharex=True)
    rows, commands = [], []
    for label, (flags, static_rules_off, controller) in DROP_VARIANTS.items():
        scenario = replace(base, static_threshold=static_rules_off)
        summary, sim = simulate_controlled(setup, scenario, controller, series_period_s=PERIOD_S)
        commands.append("prfaas " + shlex.join([*DROP_FLAGS, *flags, "--json"]))
        _check_same_run(summary, cli_json(*DROP_FLAGS, *flags))
        series = summary["controller"]["series"]
        at = [s["at_s"] for s in series]
        ax1.plot(at, [s["egress_gbps"] for s in series], label=label, lw=1)
        ax2.plot(at, [max(s["link_backlog_s"] or 0.0, 1e-2) for s in series], label=label, lw=1)
        wins = windows(sim, sim.arrivals_end_s)
        line = ax3.plot([w[0] for w in wins], [w[1] for w in wins], marker=".", label=label)[0]
        ax3.plot(
            [w[0] for w in wins],
            [w[2] for w in wins],
            ls="--",
            color=line.get_color(),
            lw=1,
        )
        rows.append(_drop_row(label, summary, series, wins))
    ax1.plot(at, [s["link_gbps"] for s in series], color="k", ls=":", label="link capacity")
    ax1.set_ylabel("egress (Gbps, 30 s mean)")
    ax2.set_ylabel("link backlog (s at capacity)")
    ax2.set_yscale("log")
    ax3.set_ylabel("p99 per 5-min window (s)\nsolid: TTFT, dashed: KV ready")
    ax3.set_yscale("log")
    ax3.set_xlabel("simulated time (s)")
    for ax in (ax1, ax2, ax3):
        ax.axvline(DROP_AT_S, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    img = save(fig, "sim_controller_link_drop.png")
    headers = [
        "run",
        "rate",
        "throughput",
        "TTFT p99 before",
        "worst window TTFT p99 after",
        "worst window KV-ready p99 after",
        "max link backlog after (s)",
        "mean egress after (Gbps)",
        "t at end",
        "N_p / N_d at end",
        "role changes",
        "t updates",
    ]
    title = f"### Link drop from 100 to {DROP_GBPS:g} Gbps at t = {DROP_AT_S:g} s"
    cmds = "```\n" + "\n".join(commands) + "\n```"
    return "\n\n".join([title, cmds, table(headers, rows), img])


def _check_same_run(mine: dict[str, Any], cli: dict[str, Any]) -> None:
    """The `prfaas sim` command reproduces this script's run (the static series only records)."""
    run = cli["prfaas"]
    for key in ("num_completed", "throughput_rps", "ttft_s", "tpot_s", "route_reasons"):
        if run[key] != mine[key]:
            raise SystemExit(f"the CLI run differs from the script's in {key}")


def _drop_row(
    label: str,
    summary: dict[str, Any],
    series: list[dict[str, Any]],
    wins: list[tuple[float, float, float]],
) -> list[Any]:
    after = [s for s in series if s["at_s"] > DROP_AT_S and s["at_s"] <= DROP_AT_S * 2]
    before_wins = [w for w in wins if w[0] < DROP_AT_S]
    after_wins = [w for w in wins if w[0] >= DROP_AT_S]
    end = series[-1]
    adaptive = "decisions" in summary["controller"]
    return [
        label,
        summary["offered_rate_rps"],
        summary["throughput_rps"],
        max(w[1] for w in before_wins),
        max(w[1] for w in after_wins),
        max(w[2] for w in after_wins),
        max(s["link_backlog_s"] for s in after),
        sum(s["egress_gbps"] for s in after) / len(after),
        round(end["threshold_tokens"]),
        f"{end['num_pd_p']} / {end['num_pd_d']}",
        len(decisions(summary, "role_change")) if adaptive else 0,
        len(decisions(summary, "threshold")) if adaptive else 0,
    ]


# --- 2. traffic shift -------------------------------------------------------------------------


def shift_requests(short: SimSetup, long: SimSetup, rate: float) -> list[SimRequest]:
    out = max(1, round(long.num_output_tokens))
    first = synthetic_requests(short.lengths, out, rate, seed=0, duration_s=SHIFT_AT_S)
    second = synthetic_requests(long.lengths, out, rate, seed=1, duration_s=SHIFT_AT_S)
    return first + [replace(r, arrived_at=r.arrived_at + SHIFT_AT_S) for r in second]


def restore_periods(series: list[dict[str, Any]], target_rps: float) -> int | None:
    """Periods after the shift until the rolling mean throughput reaches RESTORE_SHARE x target
    and stays there to the end of arrivals; None if it never does."""
    rolling = rolling_mean([s["throughput_rps"] for s in series])
    for k, point in enumerate(series):
        if point["at_s"] > SHIFT_AT_S and min(rolling[k:]) >= RESTORE_SHARE * target_rps:
            return round((float(point["at_s"]) - SHIFT_AT_S) / PERIOD_S)
    return None


def rolling_mean(values: list[float]) -> list[float]:
    """Mean of each value and the ROLLING - 1 before it (fewer at the start)."""
    return [
        sum(values[max(0, k - ROLLING + 1) : k + 1]) / min(ROLLING, k + 1)
        for k in range(len(values))
    ]


def traffic_shift(long: SimSetup, short: SimSetup) -> str:
    new_opt = planned_split(long, PRFAAS, 100.0)
    old_opt = planned_split(short, PRFAAS, 100.0)
    rate = SHIFT_LOAD * new_opt.lambda_max_per_s
    requests = shift_requests(short, long, rate)
    config = replace(build_config(short, Scenario(PRFAAS)), drain_s=0.0)
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(7.5, 7.5), sharex=True)
    rows = []
    for label, controller in (("static (planned for short)", None), ("adaptive", CONTROLLER)):
        sim = make_simulator(
            controlled_config(config, controller, PERIOD_S), requests, "cache-aware"
        )
        summary = sim.run()
        series = summary["controller"]["series"]
        at = [s["at_s"] for s in series]
        ax1.plot(at, rolling_mean([s["throughput_rps"] for s in series]), label=label)
        ax2.step(at, [s["num_pd_p"] for s in series], where="post", label=f"N_p, {label}")
        ax2.step(at, [s["num_pd_d"] for s in series], where="post", ls="--", label=f"N_d, {label}")
        ax3.step(at, [s["threshold_tokens"] for s in series], where="post", label=label)
        rows.append(_shift_row(label, summary, series, new_opt.lambda_max_per_s))
    ax1.axhline(new_opt.lambda_max_per_s, color="k", ls=":", label="planner Λ_max, long mix")
    ax1.axhline(RESTORE_SHARE * new_opt.lambda_max_per_s, color="grey", ls=":", label="90%")
    ax1.set_ylabel(f"throughput (req/s,\n{ROLLING}-period mean)")
    ax2.set_ylabel("PD instances")
    ax3.set_ylabel("threshold t (tokens)")
    ax3.set_yscale("log")
    ax3.set_xlabel("simulated time (s)")
    for ax in (ax1, ax2, ax3):
        ax.axvline(SHIFT_AT_S, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    img = save(fig, "sim_controller_shift.png")
    headers = [
        "run",
        "rate",
        "throughput, last 15 min",
        "share of new Λ_max",
        f"periods to hold {RESTORE_SHARE:.0%}",
        "N_p / N_d at end",
        "t at end",
        "role changes",
        "t updates",
    ]
    plans = (
        f"Planner (`prfaas plan --mu {SHORT_MU:g}` and `prfaas plan`): short mix "
        f"N_prfaas/N_p/N_d = {'/'.join(map(str, old_opt.split))}, t = "
        f"{old_opt.threshold_tokens:.0f}, Λ_max = {old_opt.lambda_max_per_s:.2f} req/s; long mix "
        f"{'/'.join(map(str, new_opt.split))}, t = {new_opt.threshold_tokens:.0f}, "
        f"Λ_max = {new_opt.lambda_max_per_s:.2f} req/s. Offered rate {rate:.2f} req/s "
        f"({SHIFT_LOAD:g}x the long mix's Λ_max) throughout."
    )
    title = (
        f"### Traffic shift from short (mu {SHORT_MU:g}) to long prompts at t = {SHIFT_AT_S:g} s"
    )
    return "\n\n".join([title, plans, table(headers, rows), img])


def _shift_row(
    label: str, summary: dict[str, Any], series: list[dict[str, Any]], target_rps: float
) -> list[Any]:
    last = [s for s in series if s["at_s"] > 2 * SHIFT_AT_S - 900]
    thr = sum(s["throughput_rps"] for s in last) / len(last)
    adaptive = "decisions" in summary["controller"]
    end = series[-1]
    return [
        label,
        summary["num_arrived"] / (2 * SHIFT_AT_S),
        thr,
        thr / target_rps,
        restore_periods(series, target_rps),
        f"{end['num_pd_p']} / {end['num_pd_d']}",
        round(end["threshold_tokens"]),
        len(decisions(summary, "role_change")) if adaptive else 0,
        len(decisions(summary, "threshold")) if adaptive else 0,
    ]


# --- page -------------------------------------------------------------------------------------

INTRO = """## Adaptive controller

The dual-timescale scheduler (docs/paper.md section 5) in the simulator. `prfaas sim --controller
adaptive` ticks `prfaas.policy.controller` every 30 s over a 300 s window of incremental lengths
and the measured link capacity, decode step and output length. A new t (Eq. 7) is adopted when it
raises the prefill paths' modelled capacity by at least 5% on two ticks in a row (at once after a
role change); PD instances are converted one at a time when another split's Λ_max (Eq. 6) is at
least 5% higher on three ticks in a row, at most once per 60 s, never while an instance drains,
never below one PD-P and one PD-D, never for PrfaaS. A role change drains the instance (no new
work; its prefill queue or decode batch finishes), then restarts it in the other role. Routing
gets hysteresis: diverting long requests locally starts above 1.5x and ends at 1.2x of the local
path's delay; cache-affine matching starts at 60% and ends below 50% egress utilization. The
static runs keep the planner's t and split; "no per-request rules" is `--static-threshold`. Every
decision is in the JSON's `controller.decisions` with its reason and inputs. Regenerate this
section (after `scripts/sim_results.py`, which keeps it):

```
PYTHONPATH=src .venv/bin/python scripts/sim_controller_results.py --out-md docs/results.md
```"""

NOTES = """Reading the link-drop table: TTFT is sampled at the end of prefill, so a transfer
backlog on the link does not show in it; "KV ready" (arrival to the KV at the decode instance)
does. With a static t the planned egress meets a 10x smaller link: without the per-request rules
the link backlog grows for the rest of the run; with them, long requests are diverted to the
H20 prefill instances and their queue grows instead. The controller measures the new capacity at
its next tick, raises t (fewer, longer offloads), converts a PD-D instance to PD-P (the PrfaaS
path is now link-bound, so prefill binds) and re-searches t for the new split.

Reading the shift table: the static deployment keeps the short mix's split and t, and keeps
serving the long mix at a fraction of its best capacity; the controller detects the shift (the
window's older lengths are dropped when the newest period's mean log-length is 5 standard
errors away), raises t and converts PD-D instances to PD-P one at a time. "Periods to hold 90%"
counts 30 s periods from the shift until the 5-period rolling mean throughput reaches 90% of
the planner's Λ_max for the long mix and stays there to the end of arrivals."""


def update_section(path: Path, text: str) -> None:
    """Replace the file's SECTION (up to the next '## ' heading) with `text`, or append it."""
    page = path.read_text() if path.exists() else ""
    start = page.find("\n" + SECTION + "\n")
    if start < 0:
        path.write_text(page.rstrip() + "\n\n" + text.rstrip() + "\n")
        return
    rest = page[start + 1 + len(SECTION) :]
    nxt = rest.find("\n## ")
    tail = "" if nxt < 0 else rest[nxt:]
    path.write_text(page[: start + 1] + text.rstrip() + "\n" + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-md", type=Path, help="update this page's section (else stdout)")
    args = parser.parse_args()
    long = load_setup(get_preset("paper-case-study"))
    short = load_setup(with_overrides(get_preset("paper-case-study"), mu=SHORT_MU))
    print("running link_drop", flush=True)
    drop = link_drop(long)
    print("running traffic_shift", flush=True)
    shift = traffic_shift(long, short)
    text = "\n\n".join([INTRO, drop, shift, NOTES]) + "\n"
    if args.out_md is None:
        print(text)
    else:
        update_section(args.out_md, text)
        print(f"wrote {args.out_md} ({SECTION}) and {IMG}/sim_controller_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
