"""The metrics summary of a finished simulation run: JSON-ready, floats rounded, no wall clock.

The egress is the one link's, or, with several providers, every link's together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prfaas.policy.route import RouteTarget
from prfaas.sim.config import SimConfig
from prfaas.sim.instances import SimDecode, SimPrefill
from prfaas.sim.link import LinkSite
from prfaas.sim.metrics import (
    RequestLog,
    combined_egress_series,
    egress_series,
    request_stats,
    round_floats,
)


def run_summary(
    config: SimConfig,
    log: RequestLog,
    links: Sequence[LinkSite],
    clusters: Mapping[RouteTarget, Sequence[SimPrefill]],
    decode: Sequence[SimDecode],
    route_reasons: Mapping[str, int],
    window_s: float,
    end_s: float,
    num_events: int,
) -> dict[str, Any]:
    """Metrics of a run over arrivals in [0, `window_s`] simulated until `end_s`."""
    cfg = config
    slo = (cfg.slo_ttft_s, cfg.slo_tpot_s)
    series = _series(links, end_s, cfg.egress_bin_s)
    sent_bytes = sum(site.link.total_sent_bytes for site in links)
    result = {
        "deployment": str(cfg.deployment.kind),
        "window_s": window_s,
        "sim_end_s": end_s,
        "num_events": num_events,
        **request_stats(log, window_s, end_s, slo),
        "slo": {"ttft_s": slo[0], "tpot_s": slo[1]},
        "egress": {
            "mean_gbps": sent_bytes * 8 / 1e9 / end_s if end_s > 0 else 0.0,
            "peak_bin_gbps": max(b["egress_gbps"] for b in series),
            "series": series,
        },
        "utilization": utilization(clusters, decode, end_s),
        "route_reasons": dict(sorted(route_reasons.items())),
    }
    return round_floats(result)  # type: ignore[no-any-return]


def _series(links: Sequence[LinkSite], end_s: float, bin_s: float) -> list[dict[str, float]]:
    if len(links) == 1:
        return egress_series(links[0].link.rate_segments, links[0].bandwidth, end_s, bin_s)
    rates = [(site.link.rate_segments, site.bandwidth) for site in links]
    return combined_egress_series(rates, end_s, bin_s)


def utilization(
    clusters: Mapping[RouteTarget, Sequence[SimPrefill]],
    decode: Sequence[SimDecode],
    end_s: float,
) -> dict[str, float | None]:
    """Busy share of each prefill cluster and batch-slot share of the decode instances, over the
    seconds each instance held its role (the whole run unless a role change retired it)."""

    def busy_share(instances: Sequence[SimPrefill]) -> float | None:
        role_s = sum(_role_s(p.active_from_s, p.active_until_s, end_s) for p in instances)
        if not instances or role_s <= 0:
            return None
        return sum(p.busy_s for p in instances) / role_s

    slot_s = sum(
        d.max_batch_size * _role_s(d.active_from_s, d.active_until_s, end_s) for d in decode
    )
    return {
        "prfaas_prefill": busy_share(clusters[RouteTarget.PRFAAS]),
        "pd_prefill": busy_share(clusters[RouteTarget.PD_PREFILL]),
        "pd_decode": sum(d.batch_seconds for d in decode) / slot_s if slot_s > 0 else None,
    }


def _role_s(from_s: float, until_s: float | None, end_s: float) -> float:
    """Seconds within [0, end_s] an instance held its role."""
    return max(0.0, min(end_s, end_s if until_s is None else until_s) - from_s)
