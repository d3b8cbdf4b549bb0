"""The router's Prometheus metrics, named like vLLM's (`prfaas:` prefix instead of `vllm:`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex

_LATENCY_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)


def _histogram(
    reg: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    """A latency histogram by route."""
    return Histogram(name, doc, ["route"], buckets=buckets, registry=reg)


def _counter(reg: CollectorRegistry, name: str, doc: str, *labels: str) -> Counter:
    return Counter(name, doc, labels, registry=reg)


def _gauge(reg: CollectorRegistry, name: str, doc: str, *labels: str) -> Gauge:
    return Gauge(name, doc, labels, registry=reg)


class RouterMetrics:
    """Counters and histograms of one router, in their own registry."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.ttft = _histogram(
            reg,
            "prfaas:time_to_first_token_seconds",
            "Time to first token, at the router",
            _LATENCY_BUCKETS_S,
        )
        self.itl = _histogram(
            reg,
            "prfaas:inter_token_latency_seconds",
            "Time between streamed token deltas",
            _ITL_BUCKETS_S,
        )
        self.e2e = _histogram(
            reg,
            "prfaas:e2e_request_latency_seconds",
            "Request latency, arrival to last token",
            _LATENCY_BUCKETS_S,
        )
        self.requests = _counter(
            reg, "prfaas:requests", "Requests by route and finish reason", "route", "finish_reason"
        )
        self.decisions = _counter(
            reg,
            "prfaas:route_decisions",
            "Routing decisions by route, the rule that made them and the provider that prefills",
            "route",
            "reason",
            "provider",
        )
        self.kv_seconds = _histogram(
            reg,
            "prfaas:kv_transfer_seconds",
            "Prefill start to the decode instance's KV ACK",
            _LATENCY_BUCKETS_S,
        )
        self.kv_bytes = _counter(
            reg, "prfaas:kv_transfer_bytes", "KV bytes moved to decode instances", "route"
        )
        self.prompt_tokens = _counter(
            reg, "prfaas:prompt_tokens", "Prompt tokens by route", "route"
        )
        self.generation_tokens = _counter(
            reg, "prfaas:generation_tokens", "Generated tokens by route", "route"
        )
        self._instance_metrics(reg)
        self._prefix_cache_metrics(reg)
        self._scheduler_metrics(reg)

    def _instance_metrics(self, reg: CollectorRegistry) -> None:
        self.waiting = _gauge(
            reg,
            "prfaas:num_requests_waiting",
            "Requests queued at an instance (last poll)",
            "instance",
        )
        self.running = _gauge(
            reg,
            "prfaas:num_requests_running",
            "Requests running at an instance (last poll)",
            "instance",
        )
        self.instance_up = _gauge(
            reg, "prfaas:instance_up", "1 if the instance answers its stats poll", "instance"
        )

    def _prefix_cache_metrics(self, reg: CollectorRegistry) -> None:
        self.prefix_hit_tokens = _counter(
            reg,
            "prfaas:prefix_cache_hit_tokens",
            "Prompt tokens reused from a prefix cache instead of computed, by prefilling cluster",
            "cluster",
        )
        self.prefix_index_misses = _counter(
            reg,
            "prfaas:prefix_cache_index_misses",
            "Requests whose instance reused less than the global KV index promised",
            "cluster",
        )
        self.prefix_index_blocks = _gauge(
            reg,
            "prfaas:prefix_index_blocks",
            "Attention blocks the router's global KV index places at the instance",
            "instance",
        )
        self.prefix_transfers = _counter(
            reg,
            "prfaas:prefix_transfers",
            "Cross-cluster prefix moves the policy asked for, by outcome (done, "
            "skipped_no_receiver: the target has no KV receiver, failed: holder gone, refused, "
            "or past the deadline; the target then recomputes)",
            "outcome",
        )
        self.prefix_transfer_bytes = _counter(
            reg,
            "prfaas:prefix_transfer_bytes",
            "KV bytes of cached prefixes moved between clusters (done moves)",
        )
        self.prefix_cache_bytes = _gauge(
            reg,
            "prfaas:prefix_cache_bytes",
            "Bytes held by the instance's prefix cache (last poll)",
            "instance",
        )

    def _scheduler_metrics(self, reg: CollectorRegistry) -> None:
        self.threshold_tokens = _gauge(
            reg,
            "prfaas:threshold_tokens",
            "Offload threshold t in force: incremental lengths above it prefill on PrfaaS",
        )
        self.threshold_updates = _counter(
            reg,
            "prfaas:threshold_updates",
            "Threshold changes made by the long-timescale controller",
        )
        self.role_changes = _counter(
            reg,
            "prfaas:role_changes",
            "PD instances converted between prefill and decode roles",
            "to_role",
        )

    def refresh_prefix_index(self, prefixes: RouterPrefixIndex) -> None:
        """Copy the global KV index's block counts per instance into the gauge."""
        if prefixes.index is None:
            return
        for instance in prefixes.instances:
            self.prefix_index_blocks.labels(instance.name).set(
                prefixes.index.num_blocks(instance.name)
            )

    def refresh_instances(self, monitor: ClusterMonitor) -> None:
        """Copy the last polled queue numbers into the gauges (before each scrape)."""
        for name, state in monitor.states.items():
            self.instance_up.labels(name).set(1 if state.is_ready else 0)
            if state.stats is not None:
                self.waiting.labels(name).set(state.stats.num_requests_waiting)
                self.running.labels(name).set(state.stats.num_requests_running)
                self.prefix_cache_bytes.labels(name).set(state.stats.prefix_cache_bytes)
