"""Writes deploy/grafana/prfaas-dashboard.json, the Grafana dashboard of a PrfaaS deployment.

The panels are data (`ROWS`): a title, a unit and PromQL expressions over the metrics the
router and the instances export on `/metrics` (docs/serving.md, "Metrics and logs"), scraped by
the jobs of deploy/prometheus/prometheus.yml. tests/unit/test_grafana_prometheus.py checks that
every expression names only exported metrics and that the checked-in JSON is this script's
output. Run `python scripts/grafana_dashboard.py` after changing a panel; `--check` exits 1 when
the checked-in file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "prfaas-dashboard.json"
SCHEMA_VERSION = 41  # Grafana 12's dashboard schema
ROUTER = 'job="prfaas-router"'  # the scrape jobs of deploy/prometheus/prometheus.yml
INSTANCES = 'job="prfaas-instances"'
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.9, 0.99)
PANEL_WIDTH, PANEL_HEIGHT, ROW_WIDTH = 8, 8, 24


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A time series panel."""

    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str = ""


def _rate_by(metric: str, job: str, by: str, matchers: str = "") -> str:
    """Per-second rate of a counter, summed by the labels `by`."""
    selector = ",".join(m for m in (job, matchers) if m)
    return f"sum by ({by}) (rate({metric}{{{selector}}}{RATE}))"


def _rate_panel(
    title: str, unit: str, rate: tuple[str, str, str], legend: str, description: str = ""
) -> Panel:
    """A panel of one counter's rate: `rate` is `_rate_by`'s metric, job and labels."""
    return Panel(title, unit, (Target(_rate_by(*rate), legend),), description)


def _gauge_by(aggregation: str, metric: str, job: str, by: str) -> str:
    """A gauge's last values, aggregated by the labels `by`."""
    return f"{aggregation} by ({by}) ({metric}{{{job}}})"


def _quantiles(histogram: str, job: str, by: str) -> tuple[Target, ...]:
    """p50/p90/p99 of a histogram's buckets, one series per value of `by`."""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({histogram}_bucket{{{job}}}{RATE})))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in QUANTILES
    )


def _offload_ratio() -> str:
    """Share of requests whose prefill ran on the PrfaaS cluster."""
    prfaas = f'sum(rate(prfaas:requests_total{{{ROUTER},route="prfaas"}}{RATE}))'
    every = f"clamp_min(sum(rate(prfaas:requests_total{{{ROUTER}}}{RATE})), 1e-9)"
    return f"{prfaas} / {every}"


def _link_utilization() -> str:
    """Bytes the PrfaaS cluster's prefill instances send, over the link's nominal rate."""
    sent = _rate_by("prfaas:kv_transfer_bytes_total", INSTANCES, "cluster", 'cluster="prfaas"')
    return f"{sent} * 8 / ($link_gbps * 1e9)"


REQUESTS = (
    _rate_panel(
        "Requests by route",
        "reqps",
        ("prfaas:requests_total", ROUTER, "route"),
        "{{route}}",
        "prfaas: prefilled on the PrfaaS cluster; pd_prefill: on a local PD prefill instance",
    ),
    Panel(
        "Offload ratio (PrfaaS share of requests)",
        "percentunit",
        (Target(_offload_ratio(), "offloaded"),),
    ),
    _rate_panel(
        "Routing decisions by rule",
        "reqps",
        ("prfaas:route_decisions_total", ROUTER, "route, reason"),
        "{{route}}: {{reason}}",
    ),
    _rate_panel(
        "Finished requests by reason",
        "reqps",
        ("prfaas:requests_total", ROUTER, "finish_reason"),
        "{{finish_reason}}",
    ),
    Panel(
        "Tokens by route",
        "short",
        (
            Target(_rate_by("prfaas:prompt_tokens_total", ROUTER, "route"), "prompt {{route}}"),
            Target(
                _rate_by("prfaas:generation_tokens_total", ROUTER, "route"),
                "generated {{route}}",
            ),
        ),
        "Tokens per second",
    ),
)
LATENCY = (
    Panel(
        "Time to first token",
        "s",
        _quantiles("prfaas:time_to_first_token_seconds", ROUTER, "route"),
    ),
    Panel(
        "Inter-token latency",
        "s",
        _quantiles("prfaas:inter_token_latency_seconds", ROUTER, "route"),
    ),
    Panel(
        "End-to-end request latency",
        "s",
        _quantiles("prfaas:e2e_request_latency_seconds", ROUTER, "route"),
    ),
)
INSTANCE_PANELS = (
    Panel(
        "Queue depth per instance",
        "short",
        (
            Target(
                _gauge_by("sum", "prfaas:num_requests_waiting", INSTANCES, "instance"),
                "{{instance}}",
            ),
        ),
        "Prefill jobs queued (prefill), requests waiting for their KV state (decode)",
    ),
    Panel(
        "Running requests per instance",
        "short",
        (
            Target(
                _gauge_by("sum", "prfaas:num_requests_running", INSTANCES, "instance"),
                "{{instance}}",
            ),
        ),
    ),
    Panel(
        "Instances up (router's poll)",
        "short",
        (Target(_gauge_by("max", "prfaas:instance_up", ROUTER, "instance"), "{{instance}}"),),
    ),
    Panel(
        "Prefix cache size per instance",
        "bytes",
        (
            Target(
                _gauge_by("max", "prfaas:prefix_cache_bytes", ROUTER, "instance"), "{{instance}}"
            ),
        ),
    ),
    _rate_panel(
        "Prefix cache hit tokens by cluster",
        "short",
        ("prfaas:prefix_cache_hit_tokens_total", ROUTER, "cluster"),
        "{{cluster}}",
        "Prompt tokens per second reused instead of computed",
    ),
)
LINK = (
    _rate_panel(
        "KV bytes sent per destination",
        "Bps",
        ("prfaas:kv_transfer_bytes_total", INSTANCES, "instance, dest"),
        "{{instance}} -> {{dest}}",
    ),
    Panel(
        "Link utilization (PrfaaS -> PD)",
        "percentunit",
        (Target(_link_utilization(), "utilization"),),
        "KV bytes of the PrfaaS cluster's prefill instances over the dashboard's link_gbps",
    ),
    _rate_panel(
        "KV bytes by route (router)",
        "Bps",
        ("prfaas:kv_transfer_bytes_total", ROUTER, "route"),
        "{{route}}",
    ),
    Panel(
        "KV transfer time by route (prefill start to ACK)",
        "s",
        _quantiles("prfaas:kv_transfer_seconds", ROUTER, "route"),
    ),
    Panel(
        "KV transfer time per destination (begin to ACK)",
        "s",
        _quantiles("prfaas:kv_transfer_seconds", INSTANCES, "dest"),
    ),
    Panel(
        "Link RTT",
        "s",
        (
            Target(
                _gauge_by("max", "prfaas:link_rtt_seconds", INSTANCES, "instance, dest"),
                "{{instance}} -> {{dest}}",
            ),
        ),
    ),
    Panel(
        "TCP retransmits and resent KV",
        "short",
        (
            Target(
                _rate_by("prfaas:link_retransmits_total", INSTANCES, "dest"),
                "segments/s {{dest}}",
            ),
            Target(_rate_by("prfaas:kv_resent_bytes_total", INSTANCES, "dest"), "bytes/s {{dest}}"),
            Target(
                _rate_by("prfaas:kv_connections_lost_total", INSTANCES, "dest"),
                "connections lost/s {{dest}}",
            ),
        ),
    ),
)
CONTROLLER = (
    Panel(
        "Offload threshold t",
        "short",
        (Target(f"max(prfaas:threshold_tokens{{{ROUTER}}})", "t (tokens)"),),
        "Incremental prompt lengths above t prefill on the PrfaaS cluster",
    ),
    Panel(
        "Controller decisions",
        "short",
        (
            Target(
                f"sum(increase(prfaas:threshold_updates_total{{{ROUTER}}}{RATE}))",
                "threshold updates",
            ),
            Target(
                f"sum by (to_role) (increase(prfaas:role_changes_total{{{ROUTER}}}{RATE}))",
                "role changes to {{to_role}}",
            ),
        ),
    ),
    Panel(
        "Cross-cluster prefix moves",
        "short",
        (
            Target(_rate_by("prfaas:prefix_transfers_total", ROUTER, "outcome"), "{{outcome}}"),
            Target(
                _rate_by("prfaas:prefix_imports_total", INSTANCES, "outcome"),
                "imported: {{outcome}}",
            ),
        ),
        "Moves per second by outcome (router) and imports by outcome (receivers)",
    ),
)
FAILURES = (
    _rate_panel(
        "Fallback prefills",
        "reqps",
        ("prfaas:fallback_prefills_total", INSTANCES, "instance, reason"),
        "{{instance}}: {{reason}}",
        "Requests prefilled again at the decode instance because their KV state was lost",
    ),
    _rate_panel(
        "Failed requests",
        "reqps",
        ("prfaas:failed_requests_total", INSTANCES, "instance, reason"),
        "{{instance}}: {{reason}}",
    ),
    _rate_panel(
        "KV transfer failures",
        "short",
        ("prfaas:kv_transfer_failures_total", INSTANCES, "dest, reason"),
        "{{dest}}: {{reason}}",
    ),
    Panel(
        "Prefix cache misses",
        "short",
        (
            Target(
                _rate_by("prfaas:prefix_cache_index_misses_total", ROUTER, "cluster"),
                "index over-promised {{cluster}}",
            ),
            Target(
                _rate_by("prfaas:prefix_cache_receiver_misses_total", INSTANCES, "instance"),
                "receiver lacked prefix {{instance}}",
            ),
        ),
    ),
)
ROWS = (
    ("Requests and routing", REQUESTS),
    ("Latency (router)", LATENCY),
    ("Instances", INSTANCE_PANELS),
    ("KV link", LINK),
    ("Controller and prefix moves", CONTROLLER),
    ("Failures and fallbacks", FAILURES),
)
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "datasource": DATASOURCE,
                "refId": chr(ord("A") + i),
                "expr": target.expr,
                "legendFormat": target.legend,
            }
            for i, target in enumerate(panel.targets)
        ],
    }


def _row_json(title: str, panel_id: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": ROW_WIDTH, "x": 0, "y": y},
        "panels": [],
    }


def _panels() -> list[dict[str, Any]]:
    """Rows of panels, three to a line."""
    per_line = ROW_WIDTH // PANEL_WIDTH
    out: list[dict[str, Any]] = []
    y = 0
    for title, panels in ROWS:
        out.append(_row_json(title, len(out) + 1, y))
        y += 1
        for i, panel in enumerate(panels):
            line, column = divmod(i, per_line)
            x = column * PANEL_WIDTH
            out.append(_panel_json(panel, len(out) + 1, x, y + line * PANEL_HEIGHT))
        y += -(-len(panels) // per_line) * PANEL_HEIGHT
    return out


def _templating() -> dict[str, Any]:
    """The Prometheus datasource to query and the link's nominal rate (for utilization)."""
    datasource = {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    link_gbps = {
        "name": "link_gbps",
        "label": "Link Gbps",
        "type": "textbox",
        "query": "100",
        "current": {"text": "100", "value": "100"},
        "hide": 0,
        "description": "The inter-datacenter link's rate ([link] gbps of the topology)",
    }
    return {"list": [datasource, link_gbps]}


def dashboard() -> dict[str, Any]:
    """The whole dashboard, as Grafana imports it."""
    return {
        "uid": "prfaas-overview",
        "title": "PrfaaS",
        "description": "PrfaaS router, prefill and decode instances, and the KV link",
        "tags": ["prfaas", "llm-serving"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": _templating(),
        "panels": _panels(),
    }


def render() -> str:
    """The dashboard's JSON text as checked in."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python scripts/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
