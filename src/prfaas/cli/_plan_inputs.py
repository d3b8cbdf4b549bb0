"""The workload and cluster flags `prfaas plan` and `prfaas sim` share, and the `PlanSettings` they
make: preset, then `--config FILE.toml`, then each flag (one flag overrides one setting). Both
commands read them with the same code, so the same flags give the same plan."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from prfaas.cli._args import (
    MAX_BATCH_SIZE,
    MAX_DECODE_STEP_MS,
    MAX_GPUS,
    MAX_GPUS_PER_INSTANCE,
    MAX_LENGTH_TOKENS,
    MAX_LINK_GBPS,
    MAX_LINK_MS,
    MIN_DECODE_STEP_MS,
    add_kv_codec_flag,
    add_link_path_flags,
    bounded_int,
    decode_step_ms,
    decode_tokens_per_s,
    finite_float,
    gpu_count,
    gpus_per_instance,
    link_gbps,
    positive_float,
    token_count,
)
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.plan import PlanSettings
    from prfaas.plan.inputs import PlanInputs

PRESET_NAMES = ("paper-case-study", "paper-case-study-costmodel")
MAX_THRESHOLD_GRID_POINTS = 100_000  # thresholds t one search tries
MAX_SWEEP_POINTS = 1_000_000  # (t, N_p) pairs of the PrfaaS-PD search: ~20 s, ~400 MB
MAX_SEARCHED_INSTANCES = 100_000  # instances of a homogeneous cluster whose split is searched


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """`--preset`, `--config` and the cluster, workload and decode flags."""
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
    g.add_argument("--prfaas-gpus", type=gpu_count, help="GPUs in the PrfaaS cluster (preset: 32)")
    g.add_argument("--pd-gpus", type=gpu_count, help="GPUs in the local PD cluster (preset: 64)")
    g.add_argument(
        "--homogeneous-gpus",
        type=gpu_count,
        help="GPUs of the homogeneous baseline (default: PrfaaS + PD GPUs)",
    )
    g.add_argument(
        "--gpus-per-instance", type=gpus_per_instance, help="GPUs per instance (preset: 8)"
    )
    g.add_argument("--link-gbps", type=link_gbps, help="PrfaaS -> PD bandwidth, Gbps (preset: 100)")
    add_link_path_flags(g)
    g.add_argument("--model", help="model preset or config.json for S_kv (preset: paper-1t)")
    add_kv_codec_flag(g, default=None)


def _add_workload_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload and decode")
    g.add_argument(
        "--mu", type=finite_float, help="log-normal mu of the uncached length (preset: 9.90)"
    )
    g.add_argument("--sigma", type=positive_float, help="log-normal sigma (preset: 1.00)")
    g.add_argument("--min-tokens", type=token_count, help="lower truncation, tokens (preset: 128)")
    g.add_argument(
        "--max-tokens", type=token_count, help="upper truncation, tokens (preset: 131072)"
    )
    g.add_argument(
        "--trace", help="Mooncake .jsonl or Azure .csv: its uncached lengths (and its requests)"
    )
    g.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="with --trace: use full input lengths instead of subtracting prefix hits",
    )
    g.add_argument(
        "--output-tokens",
        type=token_count,
        help="output length L_out (preset: 1024; with --trace: the trace's mean)",
    )
    g.add_argument(
        "--bs-max",
        type=bounded_int(1, MAX_BATCH_SIZE),
        help="max decode batch per instance (preset: 20)",
    )
    slo = g.add_mutually_exclusive_group()
    slo.add_argument("--t-decode-ms", type=decode_step_ms, help="decode step time, ms (preset: 25)")
    slo.add_argument(
        "--decode-slo-tps",
        type=decode_tokens_per_s,
        help="decode SLO in tokens/s; T_decode = 1 / SLO",
    )
    g.add_argument(
        "--threshold-step", type=token_count, help="threshold grid step, tokens (default: 100)"
    )


def _t_decode_s(args: argparse.Namespace) -> float | None:
    if args.t_decode_ms is not None:
        return float(args.t_decode_ms) / 1000
    if args.decode_slo_tps is not None:
        if not args.decode_slo_tps > 0:
            raise UserError(f"--decode-slo-tps must be > 0, got {args.decode_slo_tps}")
        return 1.0 / float(args.decode_slo_tps)
    return None


def settings_from_args(args: argparse.Namespace, **extra: object) -> PlanSettings:
    """The preset, then `--config`, then the flags (and `extra`, e.g. prices) that were given;
    the result is checked against the flags' bounds, whichever of the three set a value."""
    from prfaas.plan import get_preset, with_overrides
    from prfaas.plan.presets import settings_from_toml

    base = get_preset(args.preset)
    if args.config:
        base = settings_from_toml(args.config, base)
    settings = with_overrides(
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
        threshold_step_tokens=args.threshold_step,
        kv_codec=args.kv_codec,
        rtt_ms=args.rtt_ms,
        jitter_ms=args.jitter_ms,
        jitter_distribution=args.jitter_distribution,
        loss_pct=args.loss_pct,
        payload_efficiency=args.link_efficiency,
        **extra,
    )
    check_settings(settings)
    return settings


# setting -> (upper bound, unit); the lower bounds are the planner's own checks
_SETTING_BOUNDS: dict[str, tuple[float, str]] = {
    "prfaas_gpus": (MAX_GPUS, "GPUs"),
    "pd_gpus": (MAX_GPUS, "GPUs"),
    "homogeneous_gpus": (MAX_GPUS, "GPUs"),
    "gpus_per_instance": (MAX_GPUS_PER_INSTANCE, "GPUs"),
    "min_tokens": (MAX_LENGTH_TOKENS, "tokens"),
    "max_tokens": (MAX_LENGTH_TOKENS, "tokens"),
    "output_tokens": (MAX_LENGTH_TOKENS, "tokens"),
    "threshold_step_tokens": (MAX_LENGTH_TOKENS, "tokens"),
    "bs_max": (MAX_BATCH_SIZE, "requests"),
    "link_gbps": (MAX_LINK_GBPS, "Gbps"),
    "rtt_ms": (MAX_LINK_MS, "ms"),
    "jitter_ms": (MAX_LINK_MS, "ms"),
    "t_decode_s": (MAX_DECODE_STEP_MS / 1e3, "s"),
}


def check_settings(settings: PlanSettings) -> None:
    """UserError for a setting above its bound (a `--config` file bypasses the flags' own
    checks). Hardware names are labels (and price keys) unless a cost model needs them, so an
    unknown one is not refused here."""
    min_step_s = MIN_DECODE_STEP_MS / 1e3
    if settings.t_decode_s < min_step_s:
        raise UserError(
            f"t_decode_s (--t-decode-ms, --decode-slo-tps or the --config key) must be >= "
            f"{min_step_s:g} s, got {settings.t_decode_s:g}"
        )
    for name, (bound, unit) in _SETTING_BOUNDS.items():
        value = getattr(settings, name)
        if value is not None and value > bound:
            raise UserError(
                f"{name} (--{name.replace('_', '-')} or the --config key) must be <= "
                f"{bound:,} {unit}, got {value:,}"
            )


def check_grid_size(inputs: PlanInputs) -> None:
    """Refuse a search so large it would run for hours: a threshold grid too fine for the
    length range, or more (t, N_p) pairs or homogeneous instances than the bounds above."""
    step = inputs.threshold_step_tokens
    span = inputs.lengths.quantile(1.0) - inputs.lengths.quantile(0.0)
    points = math.ceil(span / step) + 1
    if points > MAX_THRESHOLD_GRID_POINTS:
        raise UserError(
            f"--threshold-step {step:g} makes {points:,} thresholds over {span:g} tokens; "
            f"at most {MAX_THRESHOLD_GRID_POINTS:,} are allowed (use a step >= "
            f"{span / (MAX_THRESHOLD_GRID_POINTS - 1):.3g})"
        )
    sweep = points * (inputs.pd.num_instances - 1)
    if sweep > MAX_SWEEP_POINTS:
        raise UserError(
            f"{inputs.pd.num_instances:,} PD instances x {points:,} thresholds make {sweep:,} "
            f"splits to search; at most {MAX_SWEEP_POINTS:,} are allowed (fewer PD GPUs, more "
            "--gpus-per-instance or a coarser --threshold-step)"
        )
    _check_instances("homogeneous", inputs.homogeneous.num_instances)
    _check_instances("equal-cost homogeneous", _equal_cost_instances(inputs))


def _check_instances(what: str, num_instances: int) -> None:
    if num_instances > MAX_SEARCHED_INSTANCES:
        raise UserError(
            f"the {what} cluster would have {num_instances:,} instances to split; at most "
            f"{MAX_SEARCHED_INSTANCES:,} are allowed (fewer GPUs, or prices closer together)"
        )


def _equal_cost_instances(inputs: PlanInputs) -> int:
    """Instances of the homogeneous cluster that costs what PrfaaS-PD costs (0 without prices);
    PrfaaS-PD uses every GPU of both clusters, so its cost is known before the search."""
    if not inputs.has_prices():
        return 0
    prices = inputs.prices_per_gpu
    cost = sum(prices[c.hardware] * c.num_gpus for c in (inputs.prfaas, inputs.pd))
    base = inputs.homogeneous
    instances = cost / (prices[base.hardware] * base.gpus_per_instance)
    return math.floor(instances) if math.isfinite(instances) else MAX_SEARCHED_INSTANCES + 1
