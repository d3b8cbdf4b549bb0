"""`prfaas plan`: the paper's throughput model and grid search for PrfaaS-PD, homogeneous PD and
naive heterogeneous deployments (Table 6 and Figure 5 of the paper, for any inputs)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from prfaas.cli._args import nonnegative_float, positive_float
from prfaas.cli._output import add_json_flag, format_table, prepare_output_dir, print_json
from prfaas.cli._plan_inputs import add_input_flags, check_grid_size
from prfaas.cli._plan_inputs import settings_from_args as shared_settings
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.plan import PlanSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="analytical throughput model and grid search (paper Eqs. 3-8, Table 6)",
        description="Find the best threshold t and PD split for PrfaaS-PD, the best split of a "
        "homogeneous PD cluster, and the naive heterogeneous throughput (paper §3.4). TTFT is "
        "computed as the paper does: prefill latency on the assigned hardware, no queueing.",
    )
    add_input_flags(parser)
    parser.add_argument(
        "--price",
        metavar="HW=P,...",
        help="price per GPU by hardware, e.g. h200=2,h20=1: adds an equal-cost comparison",
    )
    _add_cost_flags(parser)
    parser.add_argument("--plot", metavar="DIR", help="write Figure 5 (two PNGs) into DIR")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _add_cost_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "cost view (all three prices, or their --config keys, turn it on; docs/planner.md)"
    )
    g.add_argument(
        "--price-prfaas-gpu-hour",
        type=nonnegative_float,
        metavar="USD",
        help="price of one PrfaaS GPU per hour",
    )
    g.add_argument(
        "--price-pd-gpu-hour",
        type=nonnegative_float,
        metavar="USD",
        help="price of one PD (and homogeneous) GPU per hour",
    )
    g.add_argument(
        "--price-link-gb",
        type=nonnegative_float,
        metavar="USD",
        help="price per GB (1e9 bytes) on the PrfaaS -> PD link; 0 for an unmetered link",
    )
    g.add_argument(
        "--ttft-slo-s",
        type=positive_float,
        metavar="S",
        help="the cheapest split must have a P90 TTFT (the planner's, no queueing) <= S",
    )


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


def settings_from_args(args: argparse.Namespace) -> PlanSettings:
    """The shared input flags (`prfaas.cli._plan_inputs`) plus `--price`."""
    prices = parse_prices(args.price) if args.price else None
    return shared_settings(
        args,
        prices_per_gpu=prices,
        price_prfaas_gpu_hour=args.price_prfaas_gpu_hour,
        price_pd_gpu_hour=args.price_pd_gpu_hour,
        price_link_gb=args.price_link_gb,
        ttft_slo_s=args.ttft_slo_s,
    )


def run(args: argparse.Namespace) -> int:
    from prfaas.plan import resolve, run_plan
    from prfaas.plan.cost import cost_request_of, cost_view
    from prfaas.plan.report import (
        cost_dict,
        cost_lines,
        cost_table,
        equal_cost_lines,
        input_lines,
        result_dict,
        table6,
    )

    settings = settings_from_args(args)
    cost_request = cost_request_of(settings)
    inputs = resolve(settings)
    check_grid_size(inputs)
    if args.plot:
        prepare_output_dir(args.plot, "--plot")
    result = run_plan(inputs)
    costs = None if cost_request is None else cost_view(inputs, result, *cost_request)
    if args.plot:
        from prfaas.plan.plot import write_figure5

        written = write_figure5(result, args.plot, inputs.lengths.quantile(0.99))
    if args.json:
        print_json({**result_dict(result, inputs), "cost": cost_dict(costs)})
    else:
        headers, rows = table6(result, inputs)
        print(format_table(headers, rows))
        for line in ["", *equal_cost_lines(result), *input_lines(inputs)]:
            print(line)
        if costs is not None:
            print()
            print(format_table(*cost_table(costs)))
            print("\n".join(cost_lines(costs)))
    if args.plot and not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
