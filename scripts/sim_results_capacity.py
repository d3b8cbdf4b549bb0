"""The results page's capacity sections (`scripts/sim_results.py`): 1. the fluid limit against
the model, 2. queueing at 10% / 70% / 90% of capacity, 3. link bandwidth 10 / 25 / 100 Gbps."""

from __future__ import annotations

import matplotlib.pyplot as plt
from sim_results_page import (
    KINDS,
    Commands,
    bar_chart,
    p99_curves,
    q,
    section,
    split,
    table,
    vetoes,
)

FLUID_LIMIT_TITLE = "## 1. Fluid limit: simulated capacity vs the model"
QUEUEING_TITLE = "## 2. Queueing: TTFT at 10%, 70% and 90% of capacity"
BANDWIDTH_TITLE = "## 3. Link bandwidth 10 / 25 / 100 Gbps"
PAPER_LAMBDA = {"prfaas": 3.24, "homogeneous": 2.11, "naive": 2.45}  # paper's Table 6
PAPER_TTFT = {"prfaas": "2.22 / 3.51", "homogeneous": "4.44 / 9.73", "naive": "1.74 / 3.51"}


# --- 1. fluid limit -------------------------------------------------------------------------


def fluid_limit(cmds: Commands) -> str:
    results = cmds.run("sim", "--find-max-rate")
    rows = [
        [
            k,
            split(r),
            PAPER_LAMBDA[k],
            r["model_lambda_max"],
            r["max_rate"],
            r["upper_rate"],
            f"{r['ratio_vs_model']:.3f}",
            len(r["probes"]),
        ]
        for k, r in results.items()
    ]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[3] for r in rows], 0.4, label="model Λ_max (Eq. 6)")
    ax.bar([x + 0.2 for x in xs], [r[4] for r in rows], 0.4, label="simulated max stable rate")
    ax.set_xticks(list(xs), [r[0] for r in rows])
    headers = [
        "deployment",
        "split",
        "paper Λ_max",
        "model Λ_max",
        "sim max rate",
        "first unstable",
        "sim / model",
        "runs",
    ]
    img = bar_chart(fig, ax, "requests/s", "sim_max_rate.png")
    return section(FLUID_LIMIT_TITLE, cmds, table(headers, rows), img)


# --- 2. queueing at 10% / 70% / 90% of capacity ---------------------------------------------

LOADS = (0.1, 0.7, 0.9)


def queueing(cmds: Commands) -> str:
    runs = {}
    for f in LOADS:
        for k, r in cmds.run("sim", "--load", f"{f:g}").items():
            runs[(k, f)] = r
    runs = {(k, f): runs[(k, f)] for k in KINDS for f in LOADS}
    rows = [
        [
            k,
            f"{f:.0%}",
            r["offered_rate_rps"],
            q(r, "ttft_s", "mean"),
            q(r, "ttft_s", "p50"),
            q(r, "ttft_s", "p90"),
            q(r, "ttft_s", "p99"),
            q(r, "prefill_queue_s", "p99"),
            q(r, "tpot_s", "p99", 1e3),
            r["goodput_rps"],
            r["num_unfinished"],
            PAPER_TTFT[k] if f == LOADS[0] else "",
        ]
        for (k, f), r in runs.items()
    ]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    labels = [f"{k}\n{f:.0%}" for k, f in runs]
    for j, stat in enumerate(("p50", "p90", "p99")):
        ax.bar(
            [i + (j - 1) * 0.27 for i in range(len(labels))],
            [r["ttft_s"][stat] for r in runs.values()],
            0.27,
            label=f"TTFT {stat}",
        )
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    headers = [
        "deployment",
        "load",
        "rate",
        "TTFT mean",
        "p50",
        "p90",
        "p99",
        "prefill queue p99",
        "TPOT p99 (ms)",
        "goodput",
        "unfinished",
        "paper TTFT mean / P90 (no queueing)",
    ]
    img = bar_chart(fig, ax, "seconds", "sim_ttft_load.png")
    return section(QUEUEING_TITLE, cmds, table(headers, rows), img)


# --- 3. link bandwidth ----------------------------------------------------------------------

GBPS = (10, 25, 100)


def planned_rate(cmds: Commands, kind: str, load: float = 0.8) -> str:
    """`load` x the planner's Λ_max at 100 Gbps, rounded to the 4 decimals the page prints."""
    plan = cmds.run("plan")
    cmds.shown.pop()  # an input of the commands below, not a command of the table
    return f"{load * plan[kind]['lambda_max']:.4f}"


def bandwidth(cmds: Commands) -> str:
    rows, curves = [], {}
    for kind in ("prfaas", "naive"):
        rate = planned_rate(cmds, kind)
        for static in (False, True) if kind == "prfaas" else (False,):
            label = f"{kind}{' (static t)' if static else ''}"
            for gbps in GBPS:
                flags = ["--deployment", kind, "--rate", rate, "--link-gbps", str(gbps)]
                r = cmds.run("sim", *flags, *(["--static-threshold"] if static else []))[kind]
                curves.setdefault(label, []).append(q(r, "ttft_s", "p99"))
                rows.append(
                    [
                        label,
                        gbps,
                        split(r),
                        r["threshold_tokens"],
                        r["model_lambda_max_rps"],
                        r["offered_rate_rps"],
                        r["throughput_rps"],
                        r["offload_ratio"],
                        r["egress"]["mean_gbps"],
                        q(r, "ttft_s", "p50"),
                        q(r, "ttft_s", "p99"),
                        q(r, "tpot_s", "p99", 1e3),
                        r["num_unfinished"],
                        vetoes(r),
                    ]
                )
    img = p99_curves(GBPS, curves, "link bandwidth (Gbps)", "sim_bandwidth.png", log_x=True)
    headers = [
        "deployment",
        "Gbps",
        "split",
        "t",
        "model Λ_max",
        "rate",
        "throughput",
        "offload",
        "egress Gbps",
        "TTFT p50",
        "TTFT p99",
        "TPOT p99 (ms)",
        "unfinished",
        "kept local (link / PrfaaS)",
    ]
    return section(BANDWIDTH_TITLE, cmds, table(headers, rows), img)
