"""What `prfaas bench system` reports about a run: the live numbers, the same workload through the
simulator and the planner's Λ_max for the same topology, side by side, and the plots.

Definitions, the same for the live run and its simulation: throughput = completed requests / (last
completion - start); steady throughput = the completion rate between the 10th and the 90th
percentile completion (in a run offered more than the deployment can serve, its capacity: the
start-up and the last stragglers left out); output tokens/s like throughput; TTFT and TPOT
percentiles (linear interpolation) over the completed requests, TTFT the moment the client has its
first token (the decode instance streams it once it has imported the KV, so an offloaded request's
TTFT holds its transfer) and the time to the second token beside it; offload ratio = share of
completed requests prefilled on the PrfaaS cluster; egress = growth of the PrfaaS instances'
transport byte counters (of the WAN qdisc's on a testbed). With several prefill providers, the
split: per provider (and "local", the PD cluster's prefill) the requests it prefilled, their share
of all, their TTFT p50/p90/p99 and the share of them whose TTFT met `[policy] ttft_target_s`
(`provider_split`, the same code for the live run and its simulation).

Units. An emulated engine sleeps `model.time_scale` x the cost model's durations and sends
`model.payload_scale` x the real KV bytes, so the live system runs the topology's model
`time_scale` times faster with payloads `payload_scale` times smaller. The simulator and the
planner work in the model's units: real bytes, modelled seconds, and the link's model rate
(`ModelConfig.model_bytes_per_s`: wire rate x time_scale / payload_scale). The simulation replays
the sent requests at `sent_at / time_scale` in model time; its times are multiplied back by
`time_scale` (rates divided by it) and its egress bytes by `payload_scale`; the planner's Λ_max
is divided by `time_scale`. With `time_scale = 0` there is nothing to compare, and torch engines
are compared with the emulated target they name.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prfaas.bench.outcome import RequestResult, RunOutcome
from prfaas.errors import UserError
from prfaas.policy.providers import LOCAL
from prfaas.sim.link import BandwidthStep
from prfaas.sim.metrics import percentile
from prfaas.topology import Topology
from prfaas.types import FAIL, RECOMPUTE

GBIT = 1e9 / 8  # bytes per Gbit


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99, max of the finite values (None when there are none)."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": round(math.fsum(ordered) / len(ordered), 6),
        "p50": round(percentile(ordered, 50), 6),
        "p90": round(percentile(ordered, 90), 6),
        "p99": round(percentile(ordered, 99), 6),
        "max": round(ordered[-1], 6),
    }


STEADY_RANGE = (0.1, 0.9)  # the share of completions steady throughput counts between


def steady_throughput_rps(finished_at_s: Sequence[float]) -> float | None:
    """Completions per second between the 10th and 90th percentile completion (None with
    fewer than 10 completions or no time between them)."""
    done = sorted(t for t in finished_at_s if math.isfinite(t))
    if len(done) < 10:
        return None
    lo, hi = (round(q * (len(done) - 1)) for q in STEADY_RANGE)
    return _per_s(hi - lo, done[hi] - done[lo])


def egress_series(samples: Sequence[tuple[float, int]]) -> list[dict[str, float]]:
    """Gbit/s between consecutive samples of a byte counter, at each interval's end."""
    series = []
    for (t0, b0), (t1, b1) in itertools.pairwise(samples):
        if t1 > t0:
            series.append(
                {"at_s": round(t1, 3), "gbps": round(max(0, b1 - b0) / GBIT / (t1 - t0), 6)}
            )
    return series


def summarize_live(outcome: RunOutcome, payload_efficiency: float | None = None) -> dict[str, Any]:
    """The live run's numbers (see the module docstring for the definitions), with the run's
    measured `payload_efficiency` (None: not measured, off a testbed)."""
    results = outcome.results
    ok = [r for r in results if r.ok]
    span_s = max((r.finished_at_s for r in ok), default=0.0)
    samples = outcome.egress_samples
    egress_bytes = samples[-1][1] - samples[0][1] if samples else 0
    series = egress_series(samples)
    return {
        "num_planned": len(results),
        "num_ok": len(ok),
        "num_errors": len(results) - len(ok),
        "errors": dict(Counter(r.error for r in results if r.error is not None).most_common()),
        "wall_s": round(outcome.wall_s, 3),
        "throughput_rps": _per_s(len(ok), span_s),
        "steady_throughput_rps": steady_throughput_rps([r.finished_at_s for r in ok]),
        "output_tokens_per_s": _per_s(sum(r.num_output_tokens for r in ok), span_s),
        "ttft_s": distribution([r.ttft_s for r in ok]),
        "second_token_s": distribution([r.second_token_s for r in ok if r.num_output_tokens > 1]),
        "tpot_s": distribution([r.tpot_s for r in ok]),
        "e2e_s": distribution([r.finished_at_s - r.sent_at_s for r in ok]),
        "send_lag_s": distribution([r.sent_at_s - r.at_s for r in results]),
        "offload_ratio": _share(sum(1 for r in ok if r.route == "prfaas"), len(ok)),
        "routes": dict(Counter(r.route or "none" for r in ok)),
        "kv_bytes_offloaded": sum(r.kv_bytes for r in ok if r.route == "prfaas"),
        "egress": {
            "total_bytes": egress_bytes,
            "mean_gbps": round(egress_bytes / GBIT / outcome.wall_s, 6) if outcome.wall_s else 0.0,
            "peak_gbps": max((p["gbps"] for p in series), default=0.0),
            "series": series,
        },
        "payload_efficiency": payload_efficiency,
    }


def provider_split(
    where_ttft_s: Sequence[tuple[str, float]], target_s: float
) -> dict[str, dict[str, Any]]:
    """Per provider name ("local" for the PD cluster's prefill): requests, share of all, TTFT
    p50/p90/p99 (s) and the share within `target_s`, from (provider, TTFT s) per request."""
    names = sorted({name for name, _ in where_ttft_s} | {LOCAL}, key=lambda n: (n == LOCAL, n))
    split = {}
    for name in names:
        ttft = [t for n, t in where_ttft_s if n == name]
        dist = distribution(ttft)
        split[name] = {
            "num_requests": len(ttft),
            "share": _share(len(ttft), len(where_ttft_s)),
            "ttft_s": {q: dist[q] for q in ("p50", "p90", "p99")},
            "ttft_target_met_share": _share(sum(t <= target_s for t in ttft), len(ttft)),
        }
    return split


def live_provider_split(results: Sequence[RequestResult], target_s: float) -> dict[str, Any]:
    """`provider_split` of the completed requests (the provider the router's answer named)."""
    return provider_split([(r.provider or LOCAL, r.ttft_s) for r in results if r.ok], target_s)


def _per_s(count: float, span_s: float) -> float | None:
    return round(count / span_s, 6) if span_s > 0 else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def meets_slo(live: dict[str, Any], ttft_slo_s: float) -> bool:
    """A sustained rate: no errors and TTFT p90 within the SLO."""
    p90 = live["ttft_s"]["p90"]
    return live["num_errors"] == 0 and p90 is not None and p90 <= ttft_slo_s


def sim_meets_slo(sim: dict[str, Any], ttft_slo_s: float) -> bool | None:
    """The simulated run by the same rule (None when there is no simulation)."""
    if "unavailable" in sim:
        return None
    p90 = sim["ttft_s"]["p90"]
    complete = sim["num_completed"] == sim["num_requests"]
    return complete and p90 is not None and p90 <= ttft_slo_s


# ---- the same workload through the simulator and the planner ----------------------------


def model_time_scale(topology: Topology) -> tuple[float | None, str | None]:
    """(time_scale, None), or (None, why the simulator and planner do not apply)."""
    scale = topology.model.time_scale
    if scale <= 0:
        return None, "model.time_scale = 0: the emulated engines do not sleep, nothing to compare"
    return scale, None


def simulate_results(
    topology: Topology,
    results: Sequence[RequestResult],
    time_scale: float,
    bandwidth: Sequence[BandwidthStep] | None = None,
    prompts: Sequence[Sequence[int]] = (),
) -> dict[str, Any]:
    """The sent requests (send time, prompt length, output length) through `prfaas sim`'s
    simulator built from the topology (`sim_config_of`; `bandwidth`: the link's steps in model
    units, when it changed during the run), in live units. With a `[prefix_cache]`, each
    request's prompt (`prompts[result.index]`, the schedule's) gives its block hashes, as the
    router and the engines hash it, so the simulated pools hit where the live ones could."""
    from prfaas.sim.config import SimRequest
    from prfaas.sim.simulator import Simulator
    from prfaas.topology.sim_config import sim_config_of

    sent = sorted((r for r in results if math.isfinite(r.sent_at_s)), key=lambda r: r.sent_at_s)
    if not sent:
        return {"unavailable": "no request was sent"}
    config = sim_config_of(topology, bandwidth)
    hashes = _prompt_hashes(topology, prompts)
    requests = [
        SimRequest(
            r.sent_at_s / time_scale,
            r.num_prompt_tokens,
            r.max_tokens,
            hashes[r.index] if hashes else (),
        )
        for r in sent
    ]
    sim = Simulator(config, requests)
    sim.run()
    log = sim.log
    done = [i for i in range(len(requests)) if math.isfinite(log.finished_at[i])]
    span_s = max((log.finished_at[i] for i in done), default=0.0) * time_scale
    ttft = [(log.first_token_at[i] - log.arrived_at[i]) * time_scale for i in done]
    extra: dict[str, Any] = {}
    target_s = topology.policy.ttft_target_s
    if len(topology.providers) > 1 and target_s is not None:
        where = [(sim.provider_of[i] or LOCAL, t) for i, t in zip(done, ttft, strict=True)]
        extra["providers"] = provider_split(where, target_s)
    multi = [i for i in done if log.num_output_tokens[i] > 1]
    tpot = [
        (log.finished_at[i] - log.first_token_at[i]) / (log.num_output_tokens[i] - 1) * time_scale
        for i in multi
    ]
    second = [(log.second_token_at[i] - log.arrived_at[i]) * time_scale for i in multi]
    return {
        "num_requests": len(requests),
        "num_completed": len(done),
        # past the topology's transfer deadline (`prfaas.sim.deadline`): prefilled on the decode
        # instance, or ended with an error as live's `num_errors`
        "num_recomputed": log.failure.count(RECOMPUTE),
        "num_errors": log.failure.count(FAIL),
        "throughput_rps": _per_s(len(done), span_s),
        "steady_throughput_rps": steady_throughput_rps(
            [log.finished_at[i] * time_scale for i in done]
        ),
        "output_tokens_per_s": _per_s(sum(log.num_output_tokens[i] for i in done), span_s),
        "ttft_s": distribution(ttft),
        "second_token_s": distribution(second),
        "tpot_s": distribution(tpot),
        "offload_ratio": _share(sum(1 for i in done if log.is_offloaded[i]), len(done)),
        "egress_bytes": round(sim.total_sent_bytes * topology.model.payload_scale),
        **extra,
    }


def _prompt_hashes(topology: Topology, prompts: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each prompt's chained block hashes at the topology's block size ([] without a
    `[prefix_cache]`, where the instances cache nothing, and with several providers, whose
    simulation does not model prefix caching)."""
    from prfaas.prefix_cache import block_hashes

    cache = topology.prefix_cache
    if cache is None or len(topology.providers) > 1:
        return []
    return [tuple(block_hashes(p, cache.block_tokens)) for p in prompts]


def plan_point(
    topology: Topology, prompt_lengths: Sequence[int], output_tokens: float, time_scale: float
) -> dict[str, Any]:
    """The planner's Eqs. 3-6 for this topology's instances and deployment, over the run's own
    prompt lengths and mean output length: Λ_max (live units) and the offload share."""
    from prfaas.policy.throughput import evaluate
    from prfaas.topology.derived import num_prfaas_prefill, planner_inputs
    from prfaas.workload import EmpiricalLengths

    inputs, num_pd_p = planner_inputs(topology)
    inputs = replace(inputs, num_output_tokens=float(output_tokens))
    costs = inputs.stage_costs(inputs.prfaas, inputs.pd)
    num_prfaas = num_prfaas_prefill(topology)
    num_pd_d = inputs.pd.num_instances - num_pd_p
    kind = topology.policy.deployment
    threshold, counts = {
        "prfaas": (topology.policy.threshold_tokens, (num_prfaas, num_pd_p)),
        "homogeneous": (math.inf, (0, num_pd_p)),
        "naive": (0.0, (num_prfaas, 0)),
    }[kind]
    point = evaluate(costs, EmpiricalLengths(prompt_lengths), threshold, *counts, num_pd_d)
    return {
        "lambda_max_rps": round(point.lambda_max_per_s / time_scale, 6),
        "offload_ratio": round(point.offload_fraction, 6),
        "threshold_tokens": None if math.isinf(threshold) else threshold,
        "egress_limited": point.prfaas_egress_limited,
    }


def measured_payload_efficiency(outcome: RunOutcome) -> float | None:
    """KV payload bytes per wire byte of a run on a testbed: the offloaded requests' KV over what
    the WAN's qdisc carried towards the PD cluster (TCP/IP and frame headers and the PrfaaS
    instances' HTTP answers share that direction). None without egress or offloaded KV, or
    outside (0, 1]."""
    samples = outcome.egress_samples
    wire_bytes = samples[-1][1] - samples[0][1] if samples else 0
    payload_bytes = sum(r.kv_bytes for r in outcome.results if r.ok and r.route == "prfaas")
    if wire_bytes <= 0 or payload_bytes <= 0 or payload_bytes > wire_bytes:
        return None
    return payload_bytes / wire_bytes


def with_payload_efficiency(topology: Topology, efficiency: float | None) -> Topology:
    """`topology` whose `[link] payload_efficiency` is `efficiency` (unchanged for None, or
    with several providers, each with its own link)."""
    if efficiency is None or len(topology.providers) > 1:
        return topology
    return replace(topology, link=replace(topology.link, payload_efficiency=efficiency))


def compare(
    topology: Topology,
    outcome: RunOutcome,
    bandwidth: Sequence[BandwidthStep] | None = None,
    prompts: Sequence[Sequence[int]] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sim, plan) for a run, `prompts` the schedule's; each is {"unavailable": reason} when it
    does not apply. The simulated summary names the payload efficiency it replayed at."""
    scale, why = model_time_scale(topology)
    if scale is None:
        return {"unavailable": why}, {"unavailable": why}
    results = outcome.results
    try:
        sim = simulate_results(topology, results, scale, bandwidth, prompts)
    except UserError as exc:
        sim = {"unavailable": f"simulator: {exc}"}
    if "unavailable" not in sim:
        sim["payload_efficiency"] = topology.link.payload_efficiency
    try:
        lengths = [r.num_prompt_tokens for r in results]
        mean_out = sum(r.max_tokens for r in results) / len(results)
        plan = plan_point(topology, lengths, mean_out, scale)
    except UserError as exc:
        plan = {"unavailable": f"planner: {exc}"}
    return sim, plan


# ---- the table and the plots ---------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p90(block: dict[str, Any]) -> Any:
    return block.get("ttft_s", {}).get("p90")


def table_rows(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per run: live | sim | plan for throughput, TTFT p90 and offload ratio."""
    rows = []
    for run in runs:
        live, sim, plan = run["live"], run["sim"], run["plan"]
        rows.append(
            [
                run["deployment"],
                _fmt(run["rate_rps"], 2) if run["rate_rps"] is not None else "trace",
                f"{live['num_ok']}/{live['num_planned']}",
                _fmt(live["throughput_rps"]),
                _fmt(sim.get("throughput_rps")),
                _fmt(live["steady_throughput_rps"]),
                _fmt(sim.get("steady_throughput_rps")),
                _fmt(plan.get("lambda_max_rps")),
                _fmt(_p90(live)),
                _fmt(_p90(sim)),
                _fmt(live["tpot_s"]["p90"] and live["tpot_s"]["p90"] * 1e3, 1),
                _fmt(live["offload_ratio"], 2),
                _fmt(sim.get("offload_ratio"), 2),
                _fmt(plan.get("offload_ratio"), 2),
                _fmt(live["egress"]["mean_gbps"], 3),
            ]
        )
    return rows


def provider_rows(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """With several providers: per run and provider, live | sim for requests, TTFT p90/p99 and
    the share within the TTFT target (no rows for runs without a provider split)."""
    rows = []
    for run in runs:
        live = run["live"].get("providers", {})
        sim = run["sim"].get("providers", {})
        for name in list(live) + [n for n in sim if n not in live]:
            one, other = live.get(name, {}), sim.get(name, {})
            rows.append(
                [
                    run["deployment"],
                    _fmt(run["rate_rps"], 2) if run["rate_rps"] is not None else "trace",
                    name,
                    str(one.get("num_requests", "-")),
                    str(other.get("num_requests", "-")),
                    *(
                        _fmt(block.get("ttft_s", {}).get(q))
                        for q in ("p90", "p99")
                        for block in (one, other)
                    ),
                    _fmt(one.get("ttft_target_met_share"), 2),
                    _fmt(other.get("ttft_target_met_share"), 2),
                ]
            )
    return rows


PROVIDER_HEADERS = [
    "deployment", "rate", "provider", "requests live", "sim", "TTFT p90 live", "sim",
    "p99 live", "sim", "within target live", "sim",
]  # fmt: skip

TABLE_HEADERS = [
    "deployment", "rate", "ok", "thru live", "sim", "steady live", "sim", "plan Λmax",
    "TTFT p90 live", "sim",
    "TPOT p90 ms", "offload live", "sim", "plan", "egress Gbps",
]  # fmt: skip


def write_plots(result: dict[str, Any], directory: str) -> list[str]:
    """TTFT over time, egress over time and (with several rates) throughput vs rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    runs = result["runs"]
    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        pts = [(q["at_s"], q["ttft_s"]) for q in run["requests"] if q["ttft_s"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", label=_label(run))
    ax.set(xlabel="send time, s", ylabel="TTFT, s", title="TTFT over time")
    ax.legend(fontsize=8)
    written.append(save_figure(fig, out / "ttft_over_time.png"))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        series = run["live"]["egress"]["series"]
        ax.plot([p["at_s"] for p in series], [p["gbps"] for p in series], label=_label(run))
    ax.set(xlabel="time, s", ylabel="PrfaaS egress, Gbit/s", title="egress over time")
    ax.legend(fontsize=8)
    written.append(save_figure(fig, out / "egress_over_time.png"))
    if len({r["rate_rps"] for r in runs}) > 1:
        written.append(_throughput_plot(plt, runs, out / "throughput_vs_rate.png"))
    return written


def _throughput_plot(plt: Any, runs: Sequence[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind in sorted({r["deployment"] for r in runs}):
        mine = sorted((r for r in runs if r["deployment"] == kind), key=lambda r: r["rate_rps"])
        rates = [r["rate_rps"] for r in mine]
        ax.plot(rates, [r["live"]["throughput_rps"] for r in mine], "o-", label=f"{kind} live")
        sim = [r["sim"].get("throughput_rps") for r in mine]
        if any(v is not None for v in sim):
            ax.plot(rates, sim, "x--", label=f"{kind} sim")
    top = max(r["rate_rps"] for r in runs)
    ax.plot([0, top], [0, top], ":", color="grey", label="offered")
    ax.set(xlabel="offered rate, req/s", ylabel="throughput, req/s", title="throughput vs rate")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _label(run: dict[str, Any]) -> str:
    rate = run["rate_rps"]
    return f"{run['deployment']} @ {'trace' if rate is None else f'{rate:g} req/s'}"


def save_figure(fig: Any, path: Path) -> str:
    """Lay the figure out, write it to `path` as a PNG and close it; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
