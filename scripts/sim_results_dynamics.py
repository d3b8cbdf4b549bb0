"""The results page's sections on changing conditions and other inputs (`scripts/sim_results.py`):
4. a link drop mid-run, 5. burstiness, 6. the Mooncake conversation trace (prefix hits, and
cache-aware against length-only routing), 7. the H20 prefill curve inferred vs predicted."""

from __future__ import annotations

import math
from collections.abc import Iterable

import matplotlib.pyplot as plt
from sim_results_page import KINDS, Commands, p99_curves, q, save, section, split, table, vetoes
from sim_results_text import NOTES

LINK_DROP_TITLE = "## 4. Link drop from 100 to 10 Gbps at t = 1800 s"
BURSTINESS_TITLE = "## 5. Burstiness at 70% load"
MOONCAKE_TITLE = "## 6. Mooncake conversation trace (prefix hits)"
H20_CURVE_TITLE = "## 7. H20 prefill curve: inferred from Table 6 vs predicted by prfaas.perf"

# --- 4. bandwidth drop mid-run --------------------------------------------------------------

DROP_AT_S = 1800.0


def link_drop(cmds: Commands) -> str:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    rows = []
    for kind, static in (("prfaas", False), ("prfaas", True), ("naive", False)):
        label = f"{kind}{' (static t)' if static else ''}"
        flags = ["--deployment", kind, "--link-drop", f"{DROP_AT_S:g}:10"]
        r = cmds.run("sim", *flags, *(["--static-threshold"] if static else []))[kind]
        series = r["egress"]["series"]
        ax1.step(
            [b["start_s"] for b in series],
            [b["egress_gbps"] for b in series],
            where="post",
            label=label,
        )
        windows = r["windows"]
        ax2.plot(
            [w["start_s"] for w in windows],
            [w["ttft_p90_s"] for w in windows],
            marker=".",
            label=label,
        )
        before = [w for w in windows if w["start_s"] < DROP_AT_S]
        after = [w for w in windows if w["start_s"] >= DROP_AT_S]
        rows.append(
            [
                label,
                r["offered_rate_rps"],
                _mean(w["offload_ratio"] for w in before),
                _mean(w["offload_ratio"] for w in after),
                _mean(w["ttft_p90_s"] for w in before),
                max(w["ttft_p90_s"] for w in after if w["ttft_p90_s"] is not None),
                q(r, "tpot_s", "p99", 1e3),
                r["throughput_rps"],
                r["num_unfinished"],
                vetoes(r),
            ]
        )
    for ax in (ax1, ax2):
        ax.axvline(DROP_AT_S, color="grey", ls="--")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("egress (Gbps, 60 s bins)")
    ax2.set_ylabel("TTFT p90 (s), 5-min windows")
    ax2.set_yscale("log")
    ax2.set_xlabel("simulated time (s)")
    img = save(fig, "sim_link_drop.png")
    headers = [
        "deployment",
        "rate",
        "offload before",
        "offload after",
        "TTFT p90 before",
        "worst window TTFT p90 after",
        "TPOT p99 (ms)",
        "throughput",
        "unfinished",
        "kept local (link / PrfaaS)",
    ]
    return section(LINK_DROP_TITLE, cmds, table(headers, rows), img)


def _mean(values: Iterable[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


# --- 5. burstiness --------------------------------------------------------------------------

CVS = (1, 2, 4)


def burstiness(cmds: Commands) -> str:
    runs = {
        cv: cmds.run("sim", "--arrival", "gamma", "--cv", str(cv), "--load", "0.7") for cv in CVS
    }
    rows, curves = [], {}
    for kind in KINDS:
        for cv in CVS:
            r = runs[cv][kind]
            curves.setdefault(kind, []).append(q(r, "ttft_s", "p99"))
            rows.append(
                [
                    kind,
                    cv,
                    r["offered_rate_rps"],
                    q(r, "ttft_s", "p50"),
                    q(r, "ttft_s", "p90"),
                    q(r, "ttft_s", "p99"),
                    q(r, "tpot_s", "p99", 1e3),
                    r["goodput_rps"],
                    r["num_unfinished"],
                ]
            )
    xlabel = "inter-arrival CV (Gamma; 1 = Poisson)"
    img = p99_curves(CVS, curves, xlabel, "sim_burstiness.png", log_x=False)
    headers = [
        "deployment",
        "CV",
        "rate",
        "TTFT p50",
        "p90",
        "p99",
        "TPOT p99 (ms)",
        "goodput",
        "unfinished",
    ]
    return section(BURSTINESS_TITLE, cmds, table(headers, rows), img)


# --- 6. Mooncake conversation trace ---------------------------------------------------------

TRACE_SPEEDS = (1.0, 1.5)
TTFT_P90_LIMITS_S = (3, 5)  # TTFT p90 at which the two routings' throughputs are compared


def mooncake(cmds: Commands) -> str:
    rows = []
    native_rate = None
    for speed in TRACE_SPEEDS:
        rate_flags = [] if speed == 1.0 else ["--rate", f"{speed * native_rate:.4f}"]
        results = cmds.run("sim", "--trace", "TRACE", *rate_flags)
        if native_rate is None:
            native_rate = results["prfaas"]["offered_rate_rps"]
        for kind in KINDS:
            r = results[kind]
            rows.append(
                [
                    kind,
                    f"{speed:g}x",
                    split(r),
                    r["offered_rate_rps"],
                    r["model_lambda_max_rps"],
                    r["threshold_tokens"],
                    r["prefix_hit_ratio"],
                    r["offload_ratio"],
                    r["egress"]["mean_gbps"],
                    q(r, "ttft_s", "p50"),
                    q(r, "ttft_s", "p99"),
                    q(r, "tpot_s", "p99", 1e3),
                    r["throughput_rps"],
                    r["num_unfinished"],
                ]
            )
    headers = [
        "deployment",
        "speed",
        "split",
        "rate",
        "model Λ_max",
        "t",
        "prefix hit",
        "offload",
        "egress Gbps",
        "TTFT p50",
        "TTFT p99",
        "TPOT p99 (ms)",
        "throughput",
        "unfinished",
    ]
    main_part = section(MOONCAKE_TITLE, cmds, table(headers, rows), NOTES["mooncake"])
    return "\n\n".join([main_part, routing_comparison(cmds)])


def routing_comparison(cmds: Commands) -> str:
    rows = []
    for limit in TTFT_P90_LIMITS_S:
        for routing in ("cache-aware", "length-only"):
            flags = ["sim", "--trace", "TRACE", "--deployment", "prfaas", "--routing", routing]
            found = cmds.run(*flags, "--find-max-rate", "--max-ttft-p90-s", str(limit))["prfaas"]
            r = cmds.run(*flags, "--rate", f"{found['max_rate']}")["prfaas"]
            hits = r["prefix_hits"]
            pd, prfaas = hits["pd_prefill"], hits["prfaas"]
            rows.append(
                [
                    limit,
                    routing,
                    found["max_rate"],
                    r["throughput_rps"],
                    q(r, "ttft_s", "p50"),
                    q(r, "ttft_s", "p90"),
                    r["offload_ratio"],
                    r["egress"]["mean_gbps"],
                    f"{pd['hit_tokens'] / 1e6:.1f}M / {pd['prompt_tokens'] / 1e6:.1f}M",
                    f"{prfaas['hit_tokens'] / 1e6:.1f}M / {prfaas['prompt_tokens'] / 1e6:.1f}M",
                    f"{(pd['moved_tokens'] + prfaas['moved_tokens']) / 1e6:.1f}M",
                    r["num_unfinished"],
                ]
            )
    headers = [
        "TTFT p90 limit (s)",
        "routing",
        "max rate",
        "throughput",
        "TTFT p50",
        "TTFT p90",
        "offload",
        "egress Gbps",
        "PD-P hit / prompt tokens",
        "PrfaaS hit / prompt tokens",
        "prefix moved",
        "unfinished",
    ]
    title = "### Cache-aware vs length-only routing (PrfaaS-PD, same deployment)"
    return section(title, cmds, table(headers, rows), NOTES["routing"])


# --- 7. H20 curve: inferred vs predicted ----------------------------------------------------


def h20_curve(cmds: Commands) -> str:
    rows = []
    for curve, flags in (("inferred", []), ("predicted", ["--pd-latency", "cost-model"])):
        found = cmds.run("sim", *flags, "--find-max-rate")
        runs = cmds.run("sim", *flags, "--load", "0.8")
        for kind in KINDS:
            r = runs[kind]
            rows.append(
                [
                    curve,
                    kind,
                    split(r),
                    r["threshold_tokens"],
                    found[kind]["model_lambda_max"],
                    found[kind]["max_rate"],
                    r["offload_ratio"],
                    q(r, "ttft_s", "p50"),
                    q(r, "ttft_s", "p90"),
                ]
            )
    headers = [
        "H20 curve",
        "deployment",
        "split",
        "t",
        "model Λ_max",
        "sim max rate",
        "offload at 80%",
        "TTFT p50 at 80%",
        "TTFT p90 at 80%",
    ]
    return section(H20_CURVE_TITLE, cmds, table(headers, rows))
