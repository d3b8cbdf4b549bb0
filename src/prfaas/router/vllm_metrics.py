"""A stock vLLM server's load as the router's policy sees it: its Prometheus exposition
(`/metrics`, polled instead of a PrfaaS instance's `/internal/stats`) read into `InstanceStats`.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from prfaas.messages import InstanceStats
from prfaas.topology import InstanceConfig

VLLM_ENGINE = "vllm"
# vLLM's gauges (vllm/v1/metrics/loggers.py), summed over their label sets
WAITING_GAUGE = "vllm:num_requests_waiting"
RUNNING_GAUGE = "vllm:num_requests_running"
KV_USAGE_GAUGE = "vllm:kv_cache_usage_perc"


def stats_from_metrics(instance: InstanceConfig, text: str) -> InstanceStats:
    """The policy's view of one vLLM instance from its Prometheus exposition: waiting and
    running requests (queued tokens and prefill seconds are not exported by vLLM: 0, and the
    router's own count of what it dispatched stands in, as for every instance)."""
    gauges = gauge_totals(text, (WAITING_GAUGE, RUNNING_GAUGE))
    return InstanceStats(
        instance_id=instance.name,
        role=instance.role,
        num_requests_waiting=round(gauges[WAITING_GAUGE]),
        num_requests_running=round(gauges[RUNNING_GAUGE]),
        num_queued_tokens=0,
        queued_prefill_s=0.0,
    )


def gauge_totals(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named gauge summed over its samples; ValueError when one is missing."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in names:
            totals[family.name] = sum(s.value for s in family.samples)
    missing = [n for n in names if n not in totals]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the instance's /metrics")
    return totals
