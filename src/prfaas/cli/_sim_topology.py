"""`prfaas sim --topology FILE`: the deployment a topology file describes, simulated over the
workload the flags give (`--rate` with the length flags, or `--trace`), in the model's units.

The deployment, link(s), threshold, prices, TTFT target and prefix caches are the topology's
(`prfaas.topology.sim_config.sim_config_of`; a trace's hash ids become hashes of the topology's
prefix blocks); with several prfaas clusters, each is a prefill
provider with its own link, and the text report adds one row per provider. Flags that describe
another deployment (clusters, links, the planner's split) do not apply and are refused.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from prfaas.cli._output import format_table
from prfaas.errors import UserError

# flag dest -> value it has when not given; a topology run refuses any other value
_NOT_WITH_TOPOLOGY: dict[str, object] = {
    "deployment": "all",
    "decode_step": "fixed",
    "static_threshold": False,
    "controller": "static",
    "find_max_rate": False,
    "max_ttft_p90_s": None,
    "link_drop": None,
    "link_fluctuation": None,
    "prfaas_hardware": None,
    "pd_hardware": None,
    "prfaas_latency": None,
    "pd_latency": None,
    "prfaas_gpus": None,
    "pd_gpus": None,
    "homogeneous_gpus": None,
    "gpus_per_instance": None,
    "link_gbps": None,
    "rtt_ms": None,
    "jitter_ms": None,
    "jitter_distribution": None,
    "loss_pct": None,
    "link_efficiency": None,
    "model": None,
    "kv_codec": None,
    "bs_max": None,
    "t_decode_ms": None,
    "decode_slo_tps": None,
}


def check_topology_flags(args: argparse.Namespace) -> None:
    """One line naming the first flag that describes a deployment the topology already does."""
    for dest, unset in _NOT_WITH_TOPOLOGY.items():
        if getattr(args, dest, unset) != unset:
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"{flag} does not apply with --topology (the topology describes it)")
    if args.rate is None and args.trace is None:
        raise UserError("--topology needs --rate (requests per modelled second) or --trace")


def simulate_topology(
    args: argparse.Namespace, settings: Any, progress: Any
) -> tuple[dict[str, Any], Any]:
    """({deployment: summary}, (the run's request log, each request's provider)) of the
    topology's deployment over the flags' workload."""
    from prfaas.cli._sim_setup import load_setup
    from prfaas.sim.scenario import Scenario, build_requests, make_simulator
    from prfaas.topology import load_topology
    from prfaas.topology.sim_config import sim_config_of
    from prfaas.types import DeploymentKind

    topology = load_topology(args.topology)
    config = replace(
        sim_config_of(topology),
        chunk_tokens=args.chunk_tokens,
        slo_ttft_s=args.slo_ttft_s,
        slo_tpot_s=args.slo_tpot_s,
        drain_s=args.drain_s,
        record_decisions=False,
    )
    setup = load_setup(settings)
    if config.has_providers and setup.reuses_prefixes:
        raise UserError(
            "prefix caching is not simulated with several providers: add --no-prefix-cache"
        )
    kind = DeploymentKind(topology.policy.deployment)
    scenario = Scenario(
        kind=kind,
        rate_per_s=args.rate,
        duration_s=_duration_s(args, setup),
        num_requests=args.num_requests,
        seed=args.seed,
        routing=args.routing,
    )
    requests = _on_prefix_blocks(config, build_requests(setup, scenario, args.rate))
    sim = make_simulator(config, requests, args.routing)
    summary = sim.run(progress)
    dep = config.deployment
    num_prfaas = dep.prfaas.num_instances + sum(p.cluster.num_instances for p in dep.providers)
    route = dep.route_config
    summary.update(
        topology=str(args.topology),
        offered_rate_rps=args.rate,
        model_lambda_max_rps=None,
        split=[num_prfaas, dep.pd_prefill.num_instances, dep.num_decode_instances],
        threshold_tokens=None if route is None else route.threshold_tokens,
    )
    return {str(kind): summary}, (sim.log, sim.provider_of)


def _on_prefix_blocks(config: Any, requests: list[Any]) -> list[Any]:
    """A trace's hash ids (512-token blocks) as the hashes of the topology's prefix blocks, the
    unit of its instances' pools; none without a `[prefix_cache]` (its instances cache nothing)."""
    from prfaas.prefix_cache.hashing import regrid_hashes
    from prfaas.workload import MOONCAKE_BLOCK_TOKENS

    def hashes(r: Any) -> tuple[int, ...]:
        if config.prefix_pools is None:
            return ()
        ids, num_tokens = r.block_hashes, r.num_prompt_tokens
        return tuple(regrid_hashes(ids, num_tokens, MOONCAKE_BLOCK_TOKENS, config.block_tokens))

    return [replace(r, block_hashes=hashes(r)) for r in requests]


def _duration_s(args: argparse.Namespace, setup: Any) -> float | None:
    if args.duration_s is None and args.num_requests is None and setup.trace is None:
        from prfaas.cli._sim_bounds import DEFAULT_DURATION_S

        return DEFAULT_DURATION_S
    return float(args.duration_s) if args.duration_s is not None else None


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def providers_table(summary: dict[str, Any]) -> str:
    """One row per provider and one for local prefill: where requests went, what they cost,
    their TTFT and the share within the target; then the run's totals."""
    headers = [
        "provider", "hardware", "instances", "requests", "share", "TTFT p50", "p90", "p99",
        "<= target", "compute $", "transfer $", "egress Gbps",
    ]  # fmt: skip
    rows = [
        [
            name,
            row.get("hardware", "PD-P"),
            row.get("num_instances", "-"),
            row["num_requests"],
            _fmt(row["share"], 3),
            _fmt(row["ttft_s"]["p50"]),
            _fmt(row["ttft_s"]["p90"]),
            _fmt(row["ttft_s"]["p99"]),
            _fmt(row["ttft_target_met_share"], 3),
            _money(row["compute_usd"]),
            _money(row["transfer_usd"]),
            _fmt(row.get("egress_gbps"), 1),
        ]
        for name, row in summary["providers"].items()
    ]
    total = summary["compute_usd"] + summary["transfer_usd"]
    footer = (
        f"TTFT target {summary['ttft_target_s']:g} s: met by "
        f"{_fmt(summary['ttft_target_met_share'], 3)} of all requests; compute "
        f"${summary['compute_usd']:.4f} + transfer ${summary['transfer_usd']:.4f} = ${total:.4f}"
    )
    return format_table(headers, rows) + "\n" + footer
