"""Summarize `scripts/testbed_results.sh OUT_DIR` into the tables of docs/results.md ("The
two-datacenter testbed") and two plots, from the `prfaas bench system` JSON files it wrote.

Usage: .venv/bin/python scripts/testbed_report.py OUT_DIR [--img-dir docs/img] [--json]

Capacity is each deployment's steady throughput (completions between the 10th and 90th
percentile) when offered 1.4x its planned Λ_max; the ratios divide by homogeneous PD's. Link drop
and burst windows split the requests by send time: before the event, during it, after it. The
RTT runs (`rtt{RTT}-{LOAD}`) give TTFT live and simulated at each round trip; the link drops of
several depths and lengths (`drop{LOAD}-{GBPS}g{SECONDS}s-{static|controller}`) give the drop
window's TTFT p99 with a static threshold and with the controller, on the same requests.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from prfaas.bench.report import distribution, save_figure

DEPLOYMENTS = ("prfaas", "homogeneous", "naive")
LINK_DROP_RUNS = {  # result file -> how the run's t is set
    "linkdrop-static": "static",
    "linkdrop-controller": "controller",
    "linkdrop70-static": "static",
    "linkdrop70-controller": "controller",
}
# link-drop run -> the run of the same requests (seed, rate, count) with the controller and no drop
STEADY_RUNS = {
    "linkdrop-static": "linkdrop-steady",
    "linkdrop-controller": "linkdrop-steady",
    "linkdrop70-static": "linkdrop70-steady",
    "linkdrop70-controller": "linkdrop70-steady",
}


def _run_label(name: str, result: dict[str, Any]) -> str:
    """ "static @ 2.7 req/s" for a link-drop run's file name and result ("controller, no drop"
    for a steady run)."""
    how = LINK_DROP_RUNS.get(name, "controller, no drop")
    return f"{how} @ {result['runs'][0]['rate_rps']:g} req/s"


def load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def times(value: Any) -> str:
    """A ratio as "1.52x" ("-" when missing)."""
    text = fmt(value)
    return text if text == "-" else f"{text}x"


def ratio(a: Any, b: Any) -> float | None:
    return a / b if a is not None and b else None


def capacity_rows(out: Path, prefix: str = "") -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The saturated run of each deployment (result files `PREFIX + deployment`): live and
    simulated steady throughput, plan Λ_max."""
    found: dict[str, dict[str, Any]] = {}
    for kind in DEPLOYMENTS:
        result = load(out, prefix + kind)
        if result is None:
            continue
        run = max(result["runs"], key=lambda r: r["rate_rps"])
        found[kind] = {
            "rate": run["rate_rps"],
            "live": run["live"]["steady_throughput_rps"],
            "sim": run["sim"].get("steady_throughput_rps"),
            "plan": run["plan"].get("lambda_max_rps"),
            "offload_live": run["live"]["offload_ratio"],
            "offload_sim": run["sim"].get("offload_ratio"),
        }
    base = found.get("homogeneous", {})
    lines = [
        "| deployment | offered (req/s) | plan Λmax | sim steady | live steady | live / plan "
        "| live / sim | vs homogeneous: live | sim | plan | offload live / sim |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, c in found.items():
        lines.append(
            f"| {kind} | {fmt(c['rate'])} | {fmt(c['plan'], 3)} | {fmt(c['sim'], 3)} | "
            f"{fmt(c['live'], 3)} | {fmt(ratio(c['live'], c['plan']))} | "
            f"{fmt(ratio(c['live'], c['sim']))} | {times(ratio(c['live'], base.get('live')))} | "
            f"{times(ratio(c['sim'], base.get('sim')))} | "
            f"{times(ratio(c['plan'], base.get('plan')))} | "
            f"{fmt(c['offload_live'])} / {fmt(c['offload_sim'])} |"
        )
    return lines, found


def load_rows(out: Path, prefix: str = "") -> list[str]:
    """TTFT at each offered rate, live and simulated, for every deployment."""
    lines = [
        "| deployment | rate (req/s) | load (rate / plan Λmax) | TTFT p50 live | p90 live | "
        "p90 sim | p99 live | p99 sim | TPOT p90 live (ms) | ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in DEPLOYMENTS:
        result = load(out, prefix + kind)
        for run in [] if result is None else result["runs"]:
            live, sim, plan = run["live"], run["sim"], run["plan"]
            tpot = live["tpot_s"]["p90"]
            lines.append(
                f"| {kind} | {fmt(run['rate_rps'])} | "
                f"{fmt(ratio(run['rate_rps'], plan.get('lambda_max_rps')))} | "
                f"{fmt(live['ttft_s']['p50'])} | {fmt(live['ttft_s']['p90'])} | "
                f"{fmt(sim.get('ttft_s', {}).get('p90'))} | {fmt(live['ttft_s']['p99'])} | "
                f"{fmt(sim.get('ttft_s', {}).get('p99'))} | {fmt(tpot and tpot * 1e3, 1)} | "
                f"{live['num_ok']}/{live['num_planned']} |"
            )
    return lines


def windows(run: dict[str, Any], start_s: float, end_s: float) -> dict[str, dict[str, Any]]:
    """TTFT and offload ratio of the requests sent before, during and after [start, end)."""
    parts: dict[str, list[dict[str, Any]]] = {"before": [], "during": [], "after": []}
    for q in run["requests"]:
        if q["error"] is not None:
            continue
        key = "before" if q["at_s"] < start_s else "during" if q["at_s"] < end_s else "after"
        parts[key].append(q)
    return {
        key: {
            "ttft_s": distribution([q["ttft_s"] for q in qs]),
            "offload_ratio": ratio(sum(q["route"] == "prfaas" for q in qs), len(qs)),
            "num_requests": len(qs),
        }
        for key, qs in parts.items()
    }


def link_drop_rows(out: Path) -> tuple[list[str], dict[str, Any]]:
    """The link-drop table: each run's TTFT before, during and after the drop, and the drop
    window's p99 against the same window of the run without the drop (its steady state)."""
    lines = [
        "| run | TTFT p99 before | during drop | after | p99 during / before "
        "| same window, no drop | p99 during / no drop | TTFT p90 before | during "
        "| offload before / during / after | errors | sim TTFT p99 (whole run) "
        "| live (whole run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    found = {}
    for name in LINK_DROP_RUNS:
        result = load(out, name)
        if result is None:
            continue
        drop = result["link_drop"]
        span = (drop["at_s"], drop["at_s"] + drop["duration_s"])
        run = result["runs"][0]
        w = windows(run, *span)
        steady = load(out, STEADY_RUNS[name])
        steady_p99 = (
            windows(steady["runs"][0], *span)["during"]["ttft_s"]["p99"] if steady else None
        )
        b, d, a = (w[k] for k in ("before", "during", "after"))
        found[name] = {**w, "steady_during_ttft_p99_s": steady_p99}
        lines.append(
            f"| {_run_label(name, result)} | {fmt(b['ttft_s']['p99'])} | "
            f"{fmt(d['ttft_s']['p99'])} | "
            f"{fmt(a['ttft_s']['p99'])} | "
            f"{times(ratio(d['ttft_s']['p99'], b['ttft_s']['p99']))} | "
            f"{fmt(steady_p99)} | {times(ratio(d['ttft_s']['p99'], steady_p99))} | "
            f"{fmt(b['ttft_s']['p90'])} | {fmt(d['ttft_s']['p90'])} | "
            f"{fmt(b['offload_ratio'])} / {fmt(d['offload_ratio'])} / {fmt(a['offload_ratio'])} "
            f"| {run['live']['num_errors']} | {fmt(run['sim'].get('ttft_s', {}).get('p99'))} | "
            f"{fmt(run['live']['ttft_s']['p99'])} |"
        )
    return lines, found


RTT_LOADS = (("70", "70%"), ("90", "90%"))
DROP_RUN = re.compile(r"^drop(\d+)-([\d.]+)g(\d+)s-(static|controller)$")


def _rtts(out: Path) -> list[int]:
    """The round trips (ms) of the RTT runs in `out`, ascending."""
    found = {int(m.group(1)) for p in out.glob("rtt*-*.json")
             if (m := re.match(r"^rtt(\d+)-\d+$", p.stem))}  # fmt: skip
    return sorted(found)


def _q(block: dict[str, Any], key: str, q: str) -> Any:
    return block.get(key, {}).get(q)


def _off(a: Any, b: Any) -> str:
    """Live against simulated, as "+12%" ("-" when missing)."""
    r = ratio(a, b)
    return "-" if r is None else f"{(r - 1) * 100:+.0f}%"


def rtt_rows(out: Path) -> tuple[list[str], dict[str, Any]]:
    """TTFT live and simulated at each RTT and load: p50/p90/p99, the live/sim gap at p90 and
    p99, the time to the second token's p90 and the offload ratio."""
    lines = [
        "| RTT (ms) | load | TTFT p50 live / sim | p90 live / sim | p99 live / sim | p90 gap "
        "| p99 gap | 2nd token p90 live / sim | offload live / sim | ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    found: dict[str, Any] = {}
    for rtt in _rtts(out):
        for suffix, label in RTT_LOADS:
            result = load(out, f"rtt{rtt}-{suffix}")
            if result is None:
                continue
            run = result["runs"][0]
            live, sim = run["live"], run["sim"]
            found[f"rtt{rtt}-{suffix}"] = {"rtt_ms": rtt, "load": label, "live": live, "sim": sim}
            pair = {q: (_q(live, "ttft_s", q), _q(sim, "ttft_s", q)) for q in ("p50", "p90", "p99")}
            second = (_q(live, "second_token_s", "p90"), _q(sim, "second_token_s", "p90"))
            lines.append(
                f"| {rtt} | {label} ({fmt(run['rate_rps'], 1)} req/s) | "
                + " | ".join(f"{fmt(a)} / {fmt(b)}" for a, b in pair.values())
                + f" | {_off(*pair['p90'])} | {_off(*pair['p99'])} | "
                f"{fmt(second[0])} / {fmt(second[1])} | "
                f"{fmt(live['offload_ratio'])} / {fmt(sim.get('offload_ratio'))} | "
                f"{live['num_ok']}/{live['num_planned']} |"
            )
    return lines, found


def _both(during: dict[str, dict[str, Any]], q: str | None) -> str:
    """ "static / controller": the drop window's TTFT percentile `q` (None: offload ratio)."""
    cells = []
    for how in ("static", "controller"):
        w = during.get(how)
        value = None if w is None else w["offload_ratio"] if q is None else w["ttft_s"][q]
        cells.append(fmt(value))
    return " / ".join(cells)


def _live_sim(whole: dict[str, dict[str, Any]], how: str, q: str) -> str:
    """A run's whole-run TTFT percentile `q`, live / simulated (gap)."""
    run = whole.get(how)
    if run is None:
        return "-"
    a, b = _q(run["live"], "ttft_s", q), _q(run["sim"], "ttft_s", q)
    return f"{fmt(a)} / {fmt(b)} ({_off(a, b)})"


def simulated_window(result: dict[str, Any], how: str) -> dict[str, Any]:
    """The drop window's TTFT distribution as the simulator gives it for the run's requests (at
    their scheduled send times), on the topology `testbed_results.sh` brings up for the drop runs
    (4 PrfaaS + 4 PD prefill + 4 PD decode, with `[controller]` for the controller runs) at the
    run's measured payload efficiency: the simulator's prediction of each policy's outcome."""
    from prfaas.bench.report import with_payload_efficiency
    from prfaas.bench.testbed_link import LinkDrop
    from prfaas.sim.config import SimRequest
    from prfaas.sim.simulator import Simulator
    from prfaas.testbed.layout import (
        TestbedLayout,
        TestbedScale,
        TestbedSpec,
        resolve_threshold,
        testbed_topology,
    )
    from prfaas.topology.derived import model_link_gbps
    from prfaas.topology.sim_config import sim_config_of

    scale = TestbedScale(time_scale=result["time_scale"], payload_scale=result["payload_scale"])
    spec = TestbedSpec(
        scale=scale,
        num_prfaas_prefill=4,
        num_pd_prefill=4,
        num_pd_decode=4,
        controller=how == "controller",
    )
    threshold, _ = resolve_threshold(spec)
    topology = testbed_topology(spec, TestbedLayout(spec.name), threshold, scale.wire_gbps)
    run, drop = result["runs"][0], result["link_drop"]
    topology = with_payload_efficiency(topology, run["live"].get("payload_efficiency"))
    link = LinkDrop(drop["at_s"], drop["duration_s"], drop["gbps"])
    steps = link.sim_steps(model_link_gbps(topology), scale.time_scale)
    records = sorted(run["requests"], key=lambda q: q["at_s"])
    requests = [
        SimRequest(q["at_s"] / scale.time_scale, q["num_prompt_tokens"], q["num_output_tokens"])
        for q in records
    ]
    simulator = Simulator(sim_config_of(topology, steps), requests)
    simulator.run()
    log, start_s = simulator.log, drop["at_s"]
    ttft_s = [
        (log.first_token_at[i] - log.arrived_at[i]) * scale.time_scale
        for i, q in enumerate(records)
        if start_s <= q["at_s"] < start_s + drop["duration_s"]
        and math.isfinite(log.first_token_at[i])
    ]
    return distribution(ttft_s)


def drop_rows(out: Path) -> tuple[list[str], dict[str, Any]]:
    """Link drops of several depths and lengths: per load, depth and length, the drop window's
    TTFT p99 and p90 with the static threshold and with the controller (the same requests), the
    offload ratio during the drop, and each run's whole-run TTFT p90 and p99 live against
    simulated."""
    runs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(out.glob("drop*.json")):
        m = DROP_RUN.match(path.stem)
        if m is None:
            continue
        load_pct, gbps, seconds, how = m.groups()
        runs.setdefault((load_pct, gbps, seconds), {})[how] = json.loads(path.read_text())
    lines = [
        "| load | drop to (Gbps) | for (s) | drop-window TTFT p99 static / controller "
        "| p90 static / controller | offload during static / controller "
        "| sim drop-window p99 static / controller "
        "| whole run p90 live / sim: static | controller | p99 live / sim: static | controller |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    found: dict[str, Any] = {}
    for (load_pct, gbps, seconds), pair in sorted(runs.items(), key=lambda kv: (
            kv[0][0], -float(kv[0][1]), -int(kv[0][2]))):  # fmt: skip
        during, whole, sim_during = {}, {}, {}
        for how in ("static", "controller"):
            result = pair.get(how)
            if result is None:
                continue
            drop, run = result["link_drop"], result["runs"][0]
            during[how] = windows(run, drop["at_s"], drop["at_s"] + drop["duration_s"])["during"]
            sim_during[how] = {"ttft_s": simulated_window(result, how), "offload_ratio": None}
            whole[how] = run
        found[f"{load_pct}-{gbps}-{seconds}"] = {"during": during, "sim_during": sim_during}
        lines.append(
            f"| {load_pct}% | {gbps} | {seconds} | {_both(during, 'p99')} | "
            f"{_both(during, 'p90')} | {_both(during, None)} | {_both(sim_during, 'p99')} | "
            f"{_live_sim(whole, 'static', 'p90')} | {_live_sim(whole, 'controller', 'p90')} | "
            f"{_live_sim(whole, 'static', 'p99')} | {_live_sim(whole, 'controller', 'p99')} |"
        )
    return lines, found


def burst_rows(out: Path) -> list[str]:
    result = load(out, "burst")
    if result is None:
        return []
    burst, run = result["burst"], result["runs"][0]
    w = windows(run, burst["at_s"], burst["at_s"] + burst["duration_s"])
    lines = [
        "| requests sent | count | TTFT p50 | p90 | p99 | offload |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("before", "during", "after"):
        part = w[key]
        lines.append(
            f"| {key} the burst | {part['num_requests']} | {fmt(part['ttft_s']['p50'])} | "
            f"{fmt(part['ttft_s']['p90'])} | {fmt(part['ttft_s']['p99'])} | "
            f"{fmt(part['offload_ratio'])} |"
        )
    return lines


def side_by_side(out: Path, name: str) -> list[str]:
    """Live vs simulated for one single-run result (burst, mooncake)."""
    result = load(out, name)
    if result is None:
        return []
    run = result["runs"][0]
    live, sim = run["live"], run["sim"]
    rows = [
        ("throughput (req/s)", live["throughput_rps"], sim.get("throughput_rps")),
        ("TTFT p50 (s)", live["ttft_s"]["p50"], sim.get("ttft_s", {}).get("p50")),
        ("TTFT p90 (s)", live["ttft_s"]["p90"], sim.get("ttft_s", {}).get("p90")),
        ("TTFT p99 (s)", live["ttft_s"]["p99"], sim.get("ttft_s", {}).get("p99")),
        ("offload ratio", live["offload_ratio"], sim.get("offload_ratio")),
        ("egress (MB)", live["egress"]["total_bytes"] / 1e6, (sim.get("egress_bytes") or 0) / 1e6),
    ]
    lines = ["| | live | sim |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(a)} | {fmt(b)} |" for label, a, b in rows]
    lines.append(f"| completed | {live['num_ok']}/{live['num_planned']} | "
                 f"{sim.get('num_completed')}/{sim.get('num_requests')} |")  # fmt: skip
    return lines


def plot(out: Path, img_dir: Path, capacity: dict[str, Any], paper: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    panels = [(c, title) for c, title in ((capacity, "cost-model prefill"),
                                           (paper, "the paper's prefill curves")) if c]  # fmt: skip
    written = [_plot_capacity(img_dir, panels)] if panels else []
    if any(load(out, name) for name in LINK_DROP_RUNS):
        written.append(_plot_link_drop(out, img_dir))
    if _rtts(out):
        written.append(_plot_rtt(out, img_dir))
    return written


def _plot_rtt(out: Path, img_dir: Path) -> str:
    """TTFT p50/p90/p99 against the round trip, live (solid) and simulated (dashed), a panel per
    load."""
    import matplotlib.pyplot as plt

    rtts = _rtts(out)
    fig, axes = plt.subplots(1, len(RTT_LOADS), figsize=(6 * len(RTT_LOADS), 4), squeeze=False)
    for ax, (suffix, label) in zip(axes[0], RTT_LOADS, strict=True):
        results = {r: load(out, f"rtt{r}-{suffix}") for r in rtts}
        xs = [r for r in rtts if results[r] is not None]
        for q, color in (("p50", "C0"), ("p90", "C1"), ("p99", "C3")):
            for side, style in (("live", "-o"), ("sim", "--x")):
                ys = [_q(results[r]["runs"][0][side], "ttft_s", q) for r in xs]  # type: ignore[index]
                ax.plot(xs, ys, style, color=color, label=f"{q} {side}")
        ax.set(xlabel="round trip, ms", ylabel="TTFT, s", title=f"{label} load", ylim=(0, None))
        ax.legend(fontsize=7, ncol=3)
    fig.suptitle("TTFT against the WAN's round trip (jitter RTT/10, 0.01% loss): live, simulated")
    return save_figure(fig, img_dir / "testbed_rtt.png")


def _plot_capacity(img_dir: Path, panels: list[tuple[dict[str, Any], str]]) -> str:
    """Planned, simulated and live capacity per deployment, one panel per prefill timing."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (found, title) in zip(axes[0], panels, strict=True):
        kinds = list(found)
        xs = range(len(kinds))
        for offset, key, label in ((-0.25, "plan", "plan Λmax"), (0, "sim", "simulated"),
                                   (0.25, "live", "live (testbed)")):  # fmt: skip
            ax.bar([x + offset for x in xs], [found[k][key] or 0 for k in kinds], 0.25,
                   label=label)  # fmt: skip
        ax.set_xticks(list(xs), kinds)
        ax.set(ylabel="capacity, req/s", title=f"Equal hardware (12 x 8 GPUs), {title}")
        ax.legend()
    return save_figure(fig, img_dir / "testbed_capacity.png")


def _plot_link_drop(out: Path, img_dir: Path) -> str:
    """TTFT by send time of the 90% load link-drop runs, the drop shaded, and of the same
    requests without the drop."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in ("linkdrop-static", "linkdrop-controller", "linkdrop-steady"):  # 90% load
        result = load(out, name)
        if result is None:
            continue
        pts = [(q["at_s"], q["ttft_s"]) for q in result["runs"][0]["requests"]
               if q["ttft_s"] is not None]  # fmt: skip
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", label=_run_label(name, result))
        if result.get("link_drop"):
            drop = result["link_drop"]
            ax.axvspan(drop["at_s"], drop["at_s"] + drop["duration_s"], color="grey", alpha=0.1)
    ax.set(xlabel="send time, s", ylabel="TTFT, s",
           title="Link 100 -> 10 Gbps nominal (shaded), 90% load")  # fmt: skip
    ax.legend()
    return save_figure(fig, img_dir / "testbed_link_drop.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--img-dir", help="write the plots here")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    out = Path(args.out_dir)
    if not out.is_dir():
        print(f"testbed_report: {out} is not a directory", file=sys.stderr)
        return 2
    capacity_lines, capacity = capacity_rows(out)
    paper_lines, paper = capacity_rows(out, "paper-")
    drop_lines, drops = link_drop_rows(out)
    rtt_lines, rtts = rtt_rows(out)
    depth_lines, depths = drop_rows(out)
    if args.json:
        print(json.dumps({"capacity": capacity, "capacity_paper": paper, "link_drop": drops,
                          "rtt": rtts, "link_drops": depths}))  # fmt: skip
        return 0
    sections = [
        ("Capacity, cost-model prefill", capacity_lines),
        ("TTFT by load, cost-model prefill", load_rows(out)),
        ("Capacity, the paper's prefill curves", paper_lines),
        ("TTFT by load, the paper's prefill curves", load_rows(out, "paper-")),
        ("Link drop", drop_lines),
        ("Round trip, live vs simulated", rtt_lines),
        ("Link drops of several depths and lengths", depth_lines),
        ("Burst of long prompts", burst_rows(out)),
        ("Burst run, live vs simulated", side_by_side(out, "burst")),
        ("Mooncake conversation trace, live vs simulated", side_by_side(out, "mooncake")),
    ]
    for title, lines in sections:
        if len(lines) > 2:  # more than a table's header
            print(f"### {title}\n\n" + "\n".join(lines) + "\n")
    if args.img_dir:
        Path(args.img_dir).mkdir(parents=True, exist_ok=True)
        for path in plot(out, Path(args.img_dir), capacity, paper):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
