"""`prfaas plan`: the paper's throughput model and grid search for PrfaaS-PD, homogeneous PD and
naive heterogeneous deployments (Table 6 and Figure 5 of the paper, for any inputs)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from prfaas.cli._args import finite_float, positive_float, positive_int
from prfaas.cli._output import add_json_flag, format_table, prepare_output_dir, print_json
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.plan import PlanSettings
    from prfaas.plan.inputs import PlanInputs

PRESET_NAMES = ("paper-case-study", "paper-case-study-costmodel")
MAX_THRESHOLD_GRID_POINTS = 100_000


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("clusters")
    g.add_argument("--prfaas-hardware", help="PrfaaS cluster GPU type (preset: h200)")
    g.add_argument("--pd-hardware", help="local PD cluster GPU type (preset: h20)")
    g.add_argument(
        "--prfaas-latency",
        metavar="SPEC",
        help="PrfaaS prefill latency: profile:NAME|PATH, quadratic:a,b,c (seconds) "
        "(preset: profile:paper-1t-h200)",
    )
    g.add_argument(
        "--pd-latency",
        metavar="SPEC",
        help="PD prefill latency: profile:NAME|PATH, quadratic:a,b,c or cost-model "
        "(the perf cost model calibrated on the PrfaaS profile only)",
    )
    g.add_argument(
        "--prfaas-gpus", type=positive_int, help="GPUs in the PrfaaS cluster (preset: 32)"
    )
    g.add_argument("--pd-gpus", type=positive_int, help="GPUs in the local PD cluster (preset: 64)")
    g.add_argument(
        "--homogeneous-gpus",
        type=positive_int,
        help="GPUs of the homogeneous baseline (default: PrfaaS + PD GPUs)",
    )
    g.add_argument("--gpus-per-instance", type=positive_int, help="GPUs per instance (preset: 8)")
    g.add_argument(
        "--link-gbps", type=positive_float, help="PrfaaS -> PD bandwidth, Gbps (preset: 100)"
    )
    g.add_argument("--model", help="model preset or config.json for S_kv (preset: paper-1t)")
    g.add_argument(
        "--price",
        metavar="HW=P,...",
        help="price per GPU by hardware, e.g. h200=2,h20=1: adds an equal-cost comparison",
    )


def _add_workload_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload and decode")
    g.add_argument(
        "--mu", type=finite_float, help="log-normal mu of the uncached length (preset: 9.90)"
    )
    g.add_argument("--sigma", type=positive_float, help="log-normal sigma (preset: 1.00)")
    g.add_argument(
        "--min-tokens", type=positive_float, help="lower truncation, tokens (preset: 128)"
    )
    g.add_argument(
        "--max-tokens", type=positive_float, help="upper truncation, tokens (preset: 131072)"
    )
    g.add_argument("--trace", help="Mooncake .jsonl or Azure .csv: use its uncached lengths")
    g.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="with --trace: use full input lengths instead of subtracting prefix hits",
    )
    g.add_argument(
        "--output-tokens", type=positive_float, help="output length L_out (preset: 1024)"
    )
    g.add_argument("--bs-max", type=positive_int, help="max decode batch per instance (preset: 20)")
    slo = g.add_mutually_exclusive_group()
    slo.add_argument("--t-decode-ms", type=positive_float, help="decode step time, ms (preset: 25)")
    slo.add_argument(
        "--decode-slo-tps", type=positive_float, help="decode SLO in tokens/s; T_decode = 1 / SLO"
    )
    g.add_argument(
        "--threshold-step", type=positive_float, help="threshold grid step, tokens (default: 100)"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="analytical throughput model and grid search (paper Eqs. 3-8, Table 6)",
        description="Find the best threshold t and PD split for PrfaaS-PD, the best split of a "
        "homogeneous PD cluster, and the naive heterogeneous throughput (paper §3.4). TTFT is "
        "computed as the paper does: prefill latency on the assigned hardware, no queueing.",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="paper-case-study",
        help="starting inputs; every other flag overrides one of them",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file of planner settings (keys as in prfaas.plan.PlanSettings), applied "
        "after the preset and before the other flags",
    )
    _add_cluster_flags(parser)
    _add_workload_flags(parser)
    parser.add_argument("--plot", metavar="DIR", help="write Figure 5 (two PNGs) into DIR")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def parse_prices(text: str) -> dict[str, float]:
    """'h200=2,h20=1' -> {'h200': 2.0, 'h20': 1.0}."""
    prices: dict[str, float] = {}
    for item in text.split(","):
        hw, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = float("nan")
        if not sep or not hw.strip() or not 0 < price < math.inf:
            raise UserError(f"--price wants HW=PRICE pairs with a finite PRICE > 0, got {item!r}")
        prices[hw.strip().lower()] = price
    return prices


def _t_decode_s(args: argparse.Namespace) -> float | None:
    if args.t_decode_ms is not None:
        return float(args.t_decode_ms) / 1000
    if args.decode_slo_tps is not None:
        if not args.decode_slo_tps > 0:
            raise UserError(f"--decode-slo-tps must be > 0, got {args.decode_slo_tps}")
        return 1.0 / float(args.decode_slo_tps)
    return None


def settings_from_args(args: argparse.Namespace) -> PlanSettings:
    from prfaas.plan import get_preset, with_overrides
    from prfaas.plan.presets import settings_from_toml

    base = get_preset(args.preset)
    if args.config:
        base = settings_from_toml(args.config, base)
    return with_overrides(
        base,
        model=args.model,
        prfaas_hardware=args.prfaas_hardware,
        pd_hardware=args.pd_hardware,
        prfaas_latency=args.prfaas_latency,
        pd_latency=args.pd_latency,
        prfaas_gpus=args.prfaas_gpus,
        pd_gpus=args.pd_gpus,
        homogeneous_gpus=args.homogeneous_gpus,
        gpus_per_instance=args.gpus_per_instance,
        link_gbps=args.link_gbps,
        mu=args.mu,
        sigma=args.sigma,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        trace=args.trace,
        trace_prefix_cache=False if args.no_prefix_cache else None,
        output_tokens=args.output_tokens,
        bs_max=args.bs_max,
        t_decode_s=_t_decode_s(args),
        prices_per_gpu=parse_prices(args.price) if args.price else None,
        threshold_step_tokens=args.threshold_step,
    )


def _check_grid_size(inputs: PlanInputs) -> None:
    """Refuse a threshold step so fine that the grid over the length range would be huge."""
    step = inputs.threshold_step_tokens
    span = inputs.lengths.quantile(1.0) - inputs.lengths.quantile(0.0)
    points = math.ceil(span / step) + 1
    if points > MAX_THRESHOLD_GRID_POINTS:
        raise UserError(
            f"--threshold-step {step:g} makes {points:,} thresholds over {span:g} tokens; "
            f"at most {MAX_THRESHOLD_GRID_POINTS:,} are allowed (use a step >= "
            f"{span / (MAX_THRESHOLD_GRID_POINTS - 1):.3g})"
        )


def run(args: argparse.Namespace) -> int:
    from prfaas.plan import resolve, run_plan
    from prfaas.plan.report import equal_cost_lines, input_lines, result_dict, table6

    inputs = resolve(settings_from_args(args))
    _check_grid_size(inputs)
    if args.plot:
        prepare_output_dir(args.plot, "--plot")
    result = run_plan(inputs)
    if args.plot:
        from prfaas.plan.plot import write_figure5

        written = write_figure5(result, args.plot, inputs.lengths.quantile(0.99))
    if args.json:
        print_json(result_dict(result, inputs))
    else:
        headers, rows = table6(result, inputs)
        print(format_table(headers, rows))
        for line in ["", *equal_cost_lines(result), *input_lines(inputs)]:
            print(line)
    if args.plot and not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
