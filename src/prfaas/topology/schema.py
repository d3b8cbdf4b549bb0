"""The topology file's schema, pass 1 of reading it: every table and key on its own (unknown
keys, types (a bool is not a number), ranges, choices, addresses, and the files and presets a
value names). A bad value is replaced by a placeholder so that parsing goes on and every problem
is reported; `read_sections` returns the tables read. The larger tables have modules of their
own (`schema_model.py`, `schema_transport.py`, `schema_clusters.py`); this one holds the key lists
and the small tables. The cross-checks are `checks.py`'s, the order of the passes and threshold
"auto" are `load.py`'s, and the typed key getters `keys.py`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.policy.controller import ControllerConfig
from prfaas.policy.transfer import JITTER_DISTRIBUTIONS, MAX_MSS_BYTES, MAX_RTT_S, MIN_MSS_BYTES
from prfaas.topology.config import (
    DEFAULT_PREFIX_BLOCK_TOKENS,
    DEFAULT_PREFIX_BUDGET_BYTES,
    FAILURE_POLICIES,
    ClusterConfig,
    ControllerSettings,
    LinkConfig,
    ModelConfig,
    PolicyConfig,
    PrefixCacheConfig,
    RouterConfig,
    SecurityConfig,
    Topology,
    threshold_of,
)
from prfaas.topology.keys import (
    Problems,
    Table,
    TopologyError,
    show_value,
)
from prfaas.topology.schema_clusters import INSTANCE_KEYS, read_cluster, read_price
from prfaas.topology.schema_model import read_model
from prfaas.topology.schema_transport import (
    MAX_RECEIVE_POOL_BYTES,
    MIN_RECEIVE_POOL_BYTES,
    read_transport,
)
from prfaas.types import DeploymentKind

__all__ = [
    "INSTANCE_KEYS",
    "MAX_RECEIVE_POOL_BYTES",
    "MIN_RECEIVE_POOL_BYTES",
    "Sections",
    "TopologyError",
    "read_sections",
]

TOP_KEYS = (
    "model",
    "router",
    "link",
    "policy",
    "transport",
    "prefix_cache",
    "controller",
    "clusters",
)
CONTROLLER_INT_KEYS = ("min_samples", "persistence_ticks", "threshold_persistence_ticks")
CONTROLLER_RATE_KEYS = (
    "cooldown_s",
    "min_role_gain",
    "threshold_min_gain",
    "link_change_share",
    "link_hold_s",
)
CONTROLLER_KEYS = ("period_s", "window_s", "driven", *CONTROLLER_INT_KEYS, *CONTROLLER_RATE_KEYS)
PREFIX_CACHE_KEYS = ("block_tokens", "budget_bytes")
MODEL_KEYS = (
    "name",
    "dtype",
    "seed",
    "emulate",
    "time_scale",
    "payload_scale",
    "prefill_latency",
)
ROUTER_KEYS = ("http", "api_keys", "api_keys_file", "max_body_bytes", "max_concurrent_per_key")
LINK_KEYS = (
    "gbps",
    "rtt_ms",
    "jitter_ms",
    "jitter_distribution",
    "loss_pct",
    "payload_efficiency",
    "mss_bytes",
    "price_per_gb",
)
POLICY_KEYS = (
    "threshold",
    "failure",
    "transfer_deadline_s",
    "deployment",
    "drain_s",
    "ttft_target_s",
)
TRANSPORT_KEYS = (
    "token",
    "token_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "num_connections",
    "receive_pool_bytes",
    "congestion_control",
    "compression",
)
CLUSTER_KEYS = ("name", "kind", "instances", "price_per_gpu_hour", "link")
DEPLOYMENTS = tuple(k.value for k in DeploymentKind)
AUTO = "auto"
MAX_CONCURRENT_PER_KEY = 1 << 20  # requests in flight per API key
MAX_TTFT_TARGET_S = 86400.0  # bound of `[policy] ttft_target_s`: a day, far above any real target

_ROUTER = RouterConfig()
_LINK = LinkConfig()
_POLICY = PolicyConfig(threshold_tokens=0.0)


# ---- pass 1: each section on its own --------------------------------------------------------


def _router(table: Table | None) -> RouterConfig:
    if table is None:
        return RouterConfig()
    return RouterConfig(
        http=table.address("http", _ROUTER.http),
        api_keys=_api_keys(table),
        max_body_bytes=table.integer("max_body_bytes", _ROUTER.max_body_bytes, minimum=1),
        max_concurrent_per_key=table.integer(
            "max_concurrent_per_key", _ROUTER.max_concurrent_per_key, 1, MAX_CONCURRENT_PER_KEY
        ),
    )


def _api_keys(table: Table) -> tuple[str, ...]:
    """`api_keys` (an array) or the lines of `api_keys_file`; no whitespace inside a key."""
    if table.has("api_keys") and table.has("api_keys_file"):
        table.fail("api_keys_file", "api_keys and api_keys_file are exclusive")
        return ()
    if table.has("api_keys_file"):
        return _api_keys_from_file(table)
    value = table.raw("api_keys", (list,), "an array of strings")
    keys = []
    for index, key in enumerate(value or []):
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            table.fail(
                f"api_keys[{index}]",
                f"must be a non-empty string without spaces, got {show_value(key)}",
            )
        else:
            keys.append(key)
    return tuple(keys)


def _api_keys_from_file(table: Table) -> tuple[str, ...]:
    path = table.readable_file("api_keys_file")
    if path is None:
        return ()
    try:
        lines = read_text_file(path).splitlines()
    except UserError as exc:
        table.fail("api_keys_file", str(exc))
        return ()
    keys = [line.strip() for line in lines]
    keys = [k for k in keys if k and not k.startswith("#")]
    for key in keys:
        if any(c.isspace() for c in key):
            table.fail("api_keys_file", f"{path}: a key contains spaces")
            return ()
    if not keys:
        table.fail("api_keys_file", f"{path} holds no key")
    return tuple(keys)


def _link(table: Table | None) -> LinkConfig:
    if table is None:
        return LinkConfig()
    return LinkConfig(
        gbps=table.positive("gbps", _LINK.gbps),
        rtt_ms=_milliseconds(table, "rtt_ms"),
        jitter_ms=_milliseconds(table, "jitter_ms"),
        jitter_distribution=table.choice(
            "jitter_distribution", JITTER_DISTRIBUTIONS, _LINK.jitter_distribution
        ),
        loss_pct=table.number("loss_pct", _LINK.loss_pct, "in [0, 100)", lambda v: 0 <= v < 100),
        payload_efficiency=table.number(
            "payload_efficiency", _LINK.payload_efficiency, "in (0, 1]", lambda v: 0 < v <= 1
        ),
        mss_bytes=table.integer("mss_bytes", _LINK.mss_bytes, MIN_MSS_BYTES, MAX_MSS_BYTES),
        price_per_gb=read_price(table, "price_per_gb"),
    )


def _milliseconds(table: Table, name: str) -> float:
    """A `[link]` time in ms, in [0, MAX_RTT_S]; 0 when absent."""
    max_ms = MAX_RTT_S * 1e3
    return table.number(name, 0.0, f"in [0, {max_ms:g}]", lambda v: 0 <= v <= max_ms)


def _threshold(table: Table) -> float | str | None:
    """A finite number of tokens >= 0, "auto", or None when absent (or bad)."""
    what = 'a finite number of tokens >= 0 or "auto"'
    value = table.raw("threshold", (int, float, str), what)
    if value is None:
        return None
    if value == AUTO:
        return AUTO
    if isinstance(value, str) or not (math.isfinite(value) and value >= 0):
        table.fail("threshold", f"must be {what}, got {show_value(value)}")
        return None
    return float(value)


def _policy(table: Table | None) -> tuple[PolicyConfig, bool]:
    """The policy, and whether its threshold is "auto" (still 0 here, resolved in pass 3).

    Only a PrfaaS deployment needs a threshold; without one, homogeneous keeps every prefill
    local (t = inf) and naive offloads every prefill (t = 0)."""
    if table is None:
        return PolicyConfig(threshold_tokens=0.0), False
    deployment = table.choice("deployment", DEPLOYMENTS, _POLICY.deployment)
    threshold = _threshold(table)
    if not table.has("threshold") and deployment == DeploymentKind.PRFAAS:
        table.fail(
            "threshold",
            f'missing required key (tokens or "auto"): deployment {deployment!r} needs it',
        )
    tokens = threshold if isinstance(threshold, float) else 0.0  # "auto": resolved in pass 3
    source = "fixed"
    if not table.has("threshold"):
        tokens, source = threshold_of(deployment)
    policy = PolicyConfig(
        threshold_tokens=tokens,
        threshold_source=source,
        failure=table.choice("failure", FAILURE_POLICIES, _POLICY.failure),
        transfer_deadline_s=table.positive("transfer_deadline_s", _POLICY.transfer_deadline_s),
        deployment=deployment,
        drain_s=table.positive("drain_s", _POLICY.drain_s),
        ttft_target_s=_ttft_target(table),
    )
    return policy, threshold == AUTO


def _ttft_target(table: Table) -> float | None:
    """`ttft_target_s` in (0, MAX_TTFT_TARGET_S] seconds, or None when absent."""
    if not table.has("ttft_target_s"):
        return None
    bound = f"in (0, {MAX_TTFT_TARGET_S:g}] s"
    return table.number("ttft_target_s", 1.0, bound, lambda v: 0 < v <= MAX_TTFT_TARGET_S)


def _cluster(table: Table) -> ClusterConfig:
    """A `[[clusters]]` table; its `[clusters.link]` has the keys of `[link]` (which kinds of
    cluster may have one is pass 2's)."""
    cluster = read_cluster(table)
    link_table = table.table("link", LINK_KEYS)
    if link_table is None:
        return cluster
    return dataclasses.replace(cluster, link=_link(link_table))


def _prefix_cache(table: Table | None) -> PrefixCacheConfig | None:
    if table is None:
        return None
    return PrefixCacheConfig(
        block_tokens=table.integer("block_tokens", DEFAULT_PREFIX_BLOCK_TOKENS, 1),
        budget_bytes=table.integer("budget_bytes", DEFAULT_PREFIX_BUDGET_BYTES, 0),
    )


def _controller(table: Table | None) -> ControllerSettings:
    if table is None:
        return ControllerSettings()
    default = ControllerConfig()
    knobs: dict[str, Any] = {
        "period_s": table.positive("period_s", default.period_s),
        "window_s": table.positive("window_s", default.window_s),
    }
    for name in CONTROLLER_INT_KEYS:
        knobs[name] = table.integer(name, getattr(default, name), minimum=1)
    for name in CONTROLLER_RATE_KEYS:
        knobs[name] = table.non_negative(name, getattr(default, name))
    driven = table.raw("driven", (bool,), "true or false")
    try:
        config = ControllerConfig(**knobs)
    except ValueError as exc:
        table.fail("min_samples", str(exc))
        config = default
    return ControllerSettings(enabled=True, config=config, driven=bool(driven))


# ---- pass 1 as a whole ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Sections:
    """Every table of a topology file, each read on its own (pass 1)."""

    model: ModelConfig
    router: RouterConfig
    link: LinkConfig
    policy: PolicyConfig
    is_auto: bool  # threshold = "auto", resolved after the cross-checks
    transport: SecurityConfig
    prefix_cache: PrefixCacheConfig | None
    controller: ControllerSettings
    clusters: tuple[ClusterConfig, ...]

    def topology(self) -> Topology:
        return Topology(
            self.model,
            self.clusters,
            self.policy,
            self.router,
            self.link,
            self.transport,
            self.prefix_cache,
            self.controller,
        )


def read_sections(
    problems: Problems, data: Mapping[str, Any], base_dir: Path, *, allow_generated_token: bool
) -> Sections:
    """Pass 1: every key on its own; problems are added to `problems`, not raised."""
    top = Table(problems, data, "", TOP_KEYS, base_dir)
    model = read_model(top.table("model", MODEL_KEYS, required=True))
    router = _router(top.table("router", ROUTER_KEYS))
    link = _link(top.table("link", LINK_KEYS))
    policy, is_auto = _policy(top.table("policy", POLICY_KEYS, required=True))
    transport_table = top.table("transport", TRANSPORT_KEYS)
    transport = read_transport(
        problems, transport_table, top.has("transport"), allow_generated_token
    )
    prefix_cache = _prefix_cache(top.table("prefix_cache", PREFIX_CACHE_KEYS))
    controller = _controller(top.table("controller", CONTROLLER_KEYS))
    clusters = tuple(_cluster(t) for t in top.tables("clusters", CLUSTER_KEYS))
    return Sections(
        model, router, link, policy, is_auto, transport, prefix_cache, controller, clusters
    )
