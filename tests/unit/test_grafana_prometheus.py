"""The Grafana dashboard (deploy/grafana/prfaas-dashboard.json) and the Prometheus scrape
configuration (deploy/prometheus/prometheus.yml) against the metrics the services export.

The router's, a prefill instance's and a decode instance's registries are built in process, by
their own constructors (no engine, no socket: a prefill service's KV sender and a decode
service's KV receiver connect or listen only when used), so a renamed metric fails here. Every
PromQL expression of the dashboard must select by a scrape job of the configuration and name only
metrics that job's services export; the checked-in JSON must be scripts/grafana_dashboard.py's
output.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from prfaas.instance.decode import DecodeService
from prfaas.instance.prefill import PrefillService
from prfaas.instance.service_base import EngineService
from prfaas.router.metrics import RouterMetrics
from prfaas.topology import Topology, load_topology

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the ray extra")

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "prfaas-dashboard.json"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
GENERATOR = REPO / "scripts" / "grafana_dashboard.py"
EXAMPLE = REPO / "examples" / "emulated-1t.toml"
ROUTER_JOB, INSTANCES_JOB = "prfaas-router", "prfaas-instances"
# the sample names Prometheus stores for each metric type (prometheus_client's exposition)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "rate", "irate", "increase",
    "histogram_quantile", "clamp_min", "clamp_max", "changes", "delta", "deriv", "abs",
    "max_over_time", "min_over_time", "avg_over_time", "last_over_time",
}  # fmt: skip
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NUMBER = re.compile(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_NAME = re.compile(r"(?<![\w:$])[A-Za-z_:][\w:]*")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_VARIABLE = re.compile(r"\$\{?(\w+)")


@dataclass(frozen=True)
class Selector:
    """A metric an expression reads, and its label matchers."""

    metric: str
    matchers: dict[str, str]  # label -> value, equality matchers only


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes to Prometheus, labelled children or not."""
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


async def _instance_registries(topology: Topology) -> list[CollectorRegistry]:
    """A prefill and a decode service of the example, around no engine: their registries."""
    worker: Any = SimpleNamespace(engine=SimpleNamespace())  # the constructors only hold it
    instances = {i.role: i for c in topology.clusters for i in c.instances}
    services: list[EngineService] = [
        PrefillService(topology, instances["prefill"], worker.engine, worker),
        DecodeService(topology, instances["decode"], worker.engine, worker),
    ]
    return [service.registry for service in services]


@pytest.fixture(scope="module")
def example() -> Topology:
    return load_topology(EXAMPLE)


@pytest.fixture(scope="module")
def exported(example: Topology) -> dict[str, set[str]]:
    """Scrape job -> the series names its services export."""
    instance_names: set[str] = set()
    for registry in asyncio.run(_instance_registries(example)):
        instance_names |= exported_names(registry)
    return {ROUTER_JOB: exported_names(RouterMetrics().registry), INSTANCES_JOB: instance_names}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="module")
def scrape_config() -> dict[str, Any]:
    return dict(yaml.safe_load(SCRAPE_CONFIG.read_text()))


def selectors(expr: str) -> list[Selector]:
    """The metrics a PromQL expression reads; ValueError for a name that is neither a metric, a
    known function nor a keyword, or a selector without a metric name."""
    text = _NUMBER.sub(" ", _GROUPING.sub(" ", _RANGE.sub(" ", expr)))
    found: list[Selector] = []
    for match in _SELECTOR.finditer(text):
        if match.group(1) is None:
            raise ValueError(f"a selector without a metric name in {expr!r}")
        found.append(Selector(match.group(1), _equality_matchers(match.group(2))))
    rest = _SELECTOR.sub(" () ", text)
    for match in _NAME.finditer(rest):
        name, after = match.group(), rest[match.end() :].lstrip()
        if after.startswith("("):
            if name not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown function {name} in {expr!r}")
        elif name not in PROMQL_KEYWORDS:
            found.append(Selector(name, {}))
    return found


def _equality_matchers(text: str) -> dict[str, str]:
    return {label: value for label, op, value in _MATCHER.findall(text) if op == "="}


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def problems(dashboard: dict[str, Any], exported: dict[str, set[str]]) -> list[str]:
    """Every query that reads a metric its job does not export, or no job's."""
    found: list[str] = []
    for title, target in _targets(dashboard):
        try:
            read = selectors(target["expr"])
        except ValueError as exc:
            found.append(f"{title}: {exc}")
            continue
        for selector in read:
            job = selector.matchers.get("job")
            if job not in exported:
                found.append(f"{title}: {selector.metric} selects no scrape job (job={job!r})")
            elif selector.metric not in exported[job]:
                found.append(f"{title}: {selector.metric} is not exported by job {job}")
    return found


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ---- the metrics ---------------------------------------------------------------------------
def test_the_registries_export_the_documented_names(exported: dict[str, set[str]]) -> None:
    """The in-process registries hold what the services serve (a sample of each)."""
    router, instances = exported[ROUTER_JOB], exported[INSTANCES_JOB]
    assert "prfaas:time_to_first_token_seconds_bucket" in router
    assert "prfaas:requests_total" in router
    assert "prfaas:threshold_tokens" in router
    assert "prfaas:kv_transfer_bytes_total" in instances  # the transport's, by dest
    assert "prfaas:link_rtt_seconds" in instances
    assert "prfaas:fallback_prefills_total" in instances  # a decode instance's
    assert "prfaas:prefix_imports_total" in instances  # a prefill instance's importer
    assert "prfaas:fallback_prefills_total" not in router


# ---- the dashboard -------------------------------------------------------------------------
def test_every_query_names_only_metrics_its_job_exports(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    assert sum(1 for _ in _targets(dashboard)) >= 30
    assert problems(dashboard, exported) == []


def test_a_renamed_metric_fails_the_check(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    """Negative control: the service renaming a metric (here: the exported set losing it) and
    a query naming a metric that does not exist are both reported."""
    renamed = {job: names - {"prfaas:requests_total"} for job, names in exported.items()}
    assert any("prfaas:requests_total is not exported" in p for p in problems(dashboard, renamed))
    expr = 'rate(prfaas:request_total{job="prfaas-router"}[5m])'
    typo = {"panels": [{"title": "t", "targets": [{"expr": expr}]}]}
    reported = problems(typo, exported)
    assert reported == ["t: prfaas:request_total is not exported by job prfaas-router"]
    no_job = {"panels": [{"title": "t", "targets": [{"expr": "prfaas:requests_total"}]}]}
    assert problems(no_job, exported) == [
        "t: prfaas:requests_total selects no scrape job (job=None)"
    ]


def test_the_parser_finds_every_metric_and_refuses_unknown_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a:b_bucket{job="j",route!="x"}[5m])))'
        " / clamp_min(sum(c_total), 1e-9) * 8 / ($link_gbps * 1e9)"
    )
    assert selectors(expr) == [Selector("a:b_bucket", {"job": "j"}), Selector("c_total", {})]
    with pytest.raises(ValueError, match="unknown function"):
        selectors("rated(x[5m])")
    with pytest.raises(ValueError, match="without a metric name"):
        selectors('{__name__="x"}')


def test_the_dashboard_is_the_generator_output(dashboard: dict[str, Any]) -> None:
    generator = _load_generator()
    assert DASHBOARD.read_text() == generator.render(), "run python scripts/grafana_dashboard.py"
    assert generator.main(["--check"]) == 0


def test_the_dashboard_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["type"] in {"row", "timeseries"}  # built into Grafana: no plugin
        if panel["type"] == "timeseries":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for title, target in _targets(dashboard):
        used = set(_VARIABLE.findall(target["expr"]))
        assert used <= set(variables) | GRAFANA_VARIABLES, (title, used)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---- the scrape configuration --------------------------------------------------------------
def test_the_scrape_config_scrapes_metrics_of_the_dashboards_jobs(
    scrape_config: dict[str, Any],
) -> None:
    duration = re.compile(r"^\d+(ms|s|m|h)$")
    assert duration.match(scrape_config["global"]["scrape_interval"])
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    assert len(jobs) == len(scrape_config["scrape_configs"])
    assert set(jobs) == {ROUTER_JOB, INSTANCES_JOB}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["honor_labels"] is True  # the services' `instance` label stays theirs
        for group in job["static_configs"]:
            assert all(re.match(r"^[\w.-]+:\d+$", t) for t in group["targets"]), group


def _scraped(job: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Target address -> its labels."""
    return {t: dict(g.get("labels", {})) for g in job["static_configs"] for t in g["targets"]}


def test_the_scrape_config_lists_the_example_topology(
    scrape_config: dict[str, Any], example: Topology
) -> None:
    """Its targets are the example's router and every instance, labelled with their names and
    clusters (the dashboard's link panel selects cluster="prfaas")."""
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    assert set(_scraped(jobs[ROUTER_JOB])) == {example.router.http}
    expected = {
        i.http: {"instance": i.name, "cluster": c.name, "role": i.role}
        for c in example.clusters
        for i in c.instances
    }
    assert _scraped(jobs[INSTANCES_JOB]) == expected
