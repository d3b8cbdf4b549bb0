"""`prfaas sim`: discrete-event simulation of the paper's deployments (flags, output, progress)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from prfaas.cli._args import (
    MAX_LENGTH_TOKENS,
    bounded_int,
    float_in,
    nonnegative_int,
    positive_float,
)
from prfaas.cli._output import add_json_flag, check_writable_dir, format_table, prepare_output_dir
from prfaas.cli._plan_inputs import add_input_flags, settings_from_args
from prfaas.cli._sim_bounds import (
    MAX_CV,
    MAX_DURATION_S,
    MAX_REQUESTS,
    MIN_CV,
    check_flags,
    check_run,
    parse_pair,
)
from prfaas.errors import UserError

DEPLOYMENTS = ("prfaas", "homogeneous", "naive")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate PrfaaS-PD, homogeneous PD and naive heterogeneous deployments",
        description="Discrete-event simulation with queueing, batching, a shared link and the "
        "real routing policy. Takes the inputs of `prfaas plan`; each deployment starts from the "
        "planner's split and threshold for its own link and workload. Without --rate each "
        "deployment runs at --load x its model Λ_max.",
    )
    add_input_flags(p)
    p.add_argument(
        "--topology",
        metavar="FILE",
        help="simulate the deployment of a topology file (its clusters, links, prices, t and "
        "TTFT target; several prfaas clusters are several providers) over the workload flags, "
        "with --rate or --trace",
    )
    p.add_argument("--deployment", default="all", choices=[*DEPLOYMENTS, "all"])
    p.add_argument(
        "--routing",
        default="cache-aware",
        choices=["cache-aware", "length-only"],
        help="PrfaaS-PD routes on the uncached length (cache-aware) or on the whole prompt "
        "(length-only; the chosen cluster still reuses its own cached prefix)",
    )
    p.add_argument(
        "--decode-step",
        default="fixed",
        choices=["fixed", "cost-model"],
        help="decode step time: the paper's fixed 25 ms, or prfaas.perf's cost model on H20",
    )
    p.add_argument("--rate", type=positive_float, help="arrival rate, requests/s")
    p.add_argument(
        "--load", type=positive_float, default=0.8, help="rate as a share of Λ_max (0.8)"
    )
    p.add_argument(
        "--duration-s", type=positive_float, help="arrival window, seconds (default 3600)"
    )
    p.add_argument(
        "--num-requests", type=bounded_int(1, MAX_REQUESTS), help="stop after this many arrivals"
    )
    p.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    p.add_argument(
        "--cv",
        type=float_in(MIN_CV, MAX_CV),
        default=2.0,
        help=f"gamma inter-arrival CV in [{MIN_CV:g}, {MAX_CV:g}] (2.0)",
    )
    p.add_argument("--link-drop", metavar="AT_S:GBPS", help="link capacity drops at AT_S")
    p.add_argument(
        "--link-fluctuation", metavar="LOW:PERIOD_S", help="capacity uniform in [LOW,1]x per period"
    )
    p.add_argument(
        "--chunk-tokens",
        type=bounded_int(1, MAX_LENGTH_TOKENS),
        help="chunked prefill budget per step (tokens)",
    )
    p.add_argument(
        "--slo-ttft-s", type=positive_float, default=10.0, help="goodput TTFT SLO (10 s)"
    )
    p.add_argument(
        "--slo-tpot-s", type=positive_float, default=0.030, help="goodput TPOT SLO (0.030 s)"
    )
    p.add_argument(
        "--drain-s",
        type=float_in(0, MAX_DURATION_S),
        default=600.0,
        help="run after last arrival (600)",
    )
    p.add_argument(
        "--static-threshold",
        action="store_true",
        help="route by t and global best prefix only (offload-delay and cache-affine rules off)",
    )
    p.add_argument(
        "--controller",
        default="static",
        choices=["static", "adaptive"],
        help="PrfaaS-PD: keep the planned t and split (static), or re-search t and convert PD "
        "roles every period, with routing hysteresis (adaptive; JSON 'controller' has the log)",
    )
    p.add_argument(
        "--controller-period-s",
        type=positive_float,
        default=30.0,
        help="with --controller adaptive: seconds between controller ticks (30)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--find-max-rate", action="store_true", help="bisect the highest stable rate")
    p.add_argument(
        "--max-ttft-p90-s",
        type=positive_float,
        help="with --find-max-rate: a stable rate also keeps the run's TTFT p90 at most this",
    )
    p.add_argument(
        "--window-s",
        type=positive_float,
        default=300.0,
        help="arrival windows of the JSON 'windows' series, seconds (300)",
    )
    p.add_argument("--plot", metavar="DIR", help="write PNG plots to DIR")
    p.add_argument(
        "--timeline", metavar="FILE", help="write a Chrome trace (Perfetto) of every request"
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise UserError(f"--rate must be > 0 requests/s, got {args.rate}")
    if args.duration_s is not None and not args.duration_s > 0:
        raise UserError(f"--duration-s must be > 0, got {args.duration_s}")
    if args.arrival == "gamma" and not (math.isfinite(args.cv) and args.cv > 0):
        raise UserError(f"--cv must be > 0, got {args.cv}")
    if not args.load > 0:
        raise UserError(f"--load must be > 0, got {args.load}")
    if args.timeline is not None and args.find_max_rate:
        raise UserError("--timeline records one run; it does not apply to --find-max-rate")
    if args.max_ttft_p90_s is not None and not args.find_max_rate:
        raise UserError("--max-ttft-p90-s is a criterion of --find-max-rate")
    if args.controller == "adaptive" and args.find_max_rate:
        raise UserError("--controller adaptive applies to single runs, not --find-max-rate")
    if not (math.isfinite(args.controller_period_s) and args.controller_period_s > 0):
        raise UserError(f"--controller-period-s must be > 0, got {args.controller_period_s}")
    if args.chunk_tokens is not None and args.chunk_tokens < 1:
        raise UserError(f"--chunk-tokens must be >= 1, got {args.chunk_tokens}")
    if args.num_requests is not None and args.num_requests < 1:
        raise UserError(f"--num-requests must be >= 1, got {args.num_requests}")
    if args.drain_s < 0:
        raise UserError(f"--drain-s must be >= 0, got {args.drain_s}")
    check_flags(args)
    if args.timeline is not None:
        check_writable_dir(os.path.dirname(args.timeline) or ".", "--timeline")


def _scenarios(args: argparse.Namespace, settings: Any) -> list[Any]:
    """One scenario per deployment; a trace is replayed whole unless limited."""
    from prfaas.plan.presets import settings_link_path
    from prfaas.sim.scenario import Scenario
    from prfaas.types import DeploymentKind

    if settings.trace is not None and args.arrival == "gamma":
        raise UserError("--arrival gamma does not apply to --trace (the trace has its own timing)")
    duration_s = args.duration_s
    if duration_s is None and args.num_requests is None and settings.trace is None:
        duration_s = 3600.0
    kinds = DEPLOYMENTS if args.deployment == "all" else (args.deployment,)
    return [
        Scenario(
            kind=DeploymentKind(kind),
            rate_per_s=args.rate,
            load_fraction=args.load,
            cv=args.cv if args.arrival == "gamma" else None,
            duration_s=duration_s,
            num_requests=args.num_requests,
            link_gbps=settings.link_gbps,
            link_drop=parse_pair(args.link_drop, "--link-drop"),
            link_fluctuation=parse_pair(args.link_fluctuation, "--link-fluctuation"),
            link_path=settings_link_path(settings),
            seed=args.seed,
            chunk_tokens=args.chunk_tokens,
            slo_ttft_s=args.slo_ttft_s,
            slo_tpot_s=args.slo_tpot_s,
            drain_s=args.drain_s,
            static_threshold=args.static_threshold,
            decode_step=args.decode_step,
            routing=args.routing,
            window_s=args.window_s,
        )
        for kind in kinds
    ]


def _progress_bar(enabled: bool, total_s: float, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=round(total_s),
        desc=label,
        unit="sim-s",
        file=sys.stderr,
        disable=not enabled,
        leave=False,
    )


def run(args: argparse.Namespace) -> int:
    from prfaas.cli._sim_setup import load_setup

    _check_args(args)
    if args.topology is not None:
        return _run_topology(args)
    settings = settings_from_args(args)
    scenarios = _scenarios(args, settings)
    if args.plot:
        prepare_output_dir(args.plot, "--plot")
    case = load_setup(settings)
    if not args.find_max_rate:
        for scenario in scenarios:
            check_run(args, case, scenario)
    show_progress = not args.json and sys.stderr.isatty()
    timeline: list[dict[str, Any]] | None = None if args.timeline is None else []
    if args.find_max_rate:
        results = _find_max_rates(case, scenarios, show_progress, args.max_ttft_p90_s)
    else:
        results = _simulate_all(case, scenarios, show_progress, timeline, _controller(args))
    if timeline is not None:
        _write_timeline(args.timeline, timeline)
    if args.plot:
        _write_plots(args, results)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2, sort_keys=True) + "\n")
    elif args.find_max_rate:
        print(_max_rate_table(results))
    else:
        print(_summary_table(results))
    return 0


def _run_topology(args: argparse.Namespace) -> int:
    """`prfaas sim --topology FILE` (`prfaas.cli._sim_topology`)."""
    from prfaas.cli._sim_topology import check_topology_flags, providers_table, simulate_topology
    from prfaas.sim.timeline import timeline_events

    check_topology_flags(args)
    settings = settings_from_args(args)
    if args.plot:
        prepare_output_dir(args.plot, "--plot")
    show_progress = not args.json and sys.stderr.isatty()
    total_s = (args.duration_s or 0.0) + args.drain_s
    with _progress_bar(show_progress, total_s, "topology") as bar:

        def progress(now: float) -> None:
            bar.update(max(0, round(now) - bar.n))

        results, (log, provider_of) = simulate_topology(args, settings, progress)
    if args.timeline is not None:
        (kind,) = results
        _write_timeline(args.timeline, timeline_events(log, kind, provider_of))
    if args.plot:
        _write_plots(args, results)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2, sort_keys=True) + "\n")
        return 0
    print(_summary_table(results))
    for summary in results.values():
        if "providers" in summary:
            print()
            print(providers_table(summary))
    return 0


def _write_plots(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from prfaas.sim.report import write_plots

    try:
        written = write_plots(results, args.plot, is_max_rate=args.find_max_rate)
    except OSError as exc:
        raise UserError(f"cannot write plots into {args.plot}: {exc.strerror or exc}") from None
    for path in written:
        print(f"wrote {path}", file=sys.stderr)


def _write_timeline(path: str, events: list[dict[str, Any]]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    except OSError as exc:
        raise UserError(f"cannot write timeline {path}: {exc.strerror}") from None
    print(f"wrote {path} ({len(events)} spans)", file=sys.stderr)


def _simulate_all(
    case: Any,
    scenarios: list[Any],
    show_progress: bool,
    timeline: list[dict[str, Any]] | None = None,
    controller: Any = None,
) -> dict[str, Any]:
    from prfaas.sim.adaptive import run_adaptive
    from prfaas.sim.scenario import run_scenario

    results = {}
    for scenario in scenarios:
        total_s = (scenario.duration_s or 0.0) + scenario.drain_s
        with _progress_bar(show_progress, total_s, str(scenario.kind)) as bar:

            def progress(now: float, bar: Any = bar) -> None:
                bar.update(max(0, round(now) - bar.n))

            if controller is None:
                results[str(scenario.kind)] = run_scenario(case, scenario, progress, timeline)
            else:
                run = run_adaptive(case, scenario, controller, progress, timeline)
                results[str(scenario.kind)] = run
    return results


def _controller(args: argparse.Namespace) -> Any:
    """The adaptive controller's config (`--controller adaptive`), or None (static)."""
    if args.controller != "adaptive":
        return None
    from prfaas.policy.controller import ControllerConfig

    return ControllerConfig(period_s=args.controller_period_s)


def _find_max_rates(
    case: Any, scenarios: list[Any], show_progress: bool, max_ttft_p90_s: float | None
) -> dict[str, Any]:
    from prfaas.sim.scenario import max_rate

    results = {}
    for scenario in scenarios:
        if show_progress:
            print(f"searching max rate: {scenario.kind}", file=sys.stderr)
        results[str(scenario.kind)] = max_rate(case, scenario, max_ttft_p90_s=max_ttft_p90_s)
    return results


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _split(split: list[int]) -> str:
    """N_prfaas / N_p / N_d, '-' for a cluster the deployment does not have."""
    return "/".join(str(n) if n else "-" for n in split)


def _summary_table(results: dict[str, Any]) -> str:
    headers = [
        "deployment", "split", "t", "rate", "Λ_max", "thru", "goodput", "TTFT p50", "p90", "p99",
        "TPOT p99 ms", "offload", "egress Gbps", "unfinished",
    ]  # fmt: skip
    rows = [
        [
            kind,
            _split(r["split"]),
            _fmt(r["threshold_tokens"], 0),
            _fmt(r["offered_rate_rps"]),
            _fmt(r["model_lambda_max_rps"]),
            _fmt(r["throughput_rps"]),
            _fmt(r["goodput_rps"]),
            _fmt(r["ttft_s"]["p50"]),
            _fmt(r["ttft_s"]["p90"]),
            _fmt(r["ttft_s"]["p99"]),
            _fmt(None if r["tpot_s"]["p99"] is None else r["tpot_s"]["p99"] * 1e3, 1),
            _fmt(r["offload_ratio"], 3),
            _fmt(r["egress"]["mean_gbps"], 1),
            r["num_unfinished"],
        ]
        for kind, r in results.items()
    ]
    return format_table(headers, rows)


def _max_rate_table(results: dict[str, Any]) -> str:
    headers = ["deployment", "split", "t", "max rate (req/s)", "model Λ_max", "sim / model"]
    headers.append("probes")
    rows = [
        [
            kind,
            _split(r["split"]),
            _fmt(r["threshold_tokens"], 0),
            _fmt(r["max_rate"], 3),
            _fmt(r["model_lambda_max"], 3),
            _fmt(r["ratio_vs_model"], 3),
            len(r["probes"]),
        ]
        for kind, r in results.items()
    ]
    return format_table(headers, rows)
