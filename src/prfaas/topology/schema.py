"""The topology file's schema, pass 1 of reading it: every table and key on its own (unknown
keys, types (a bool is not a number), ranges, choices, addresses, and the files and presets a
value names). A bad value is replaced by a placeholder so that parsing goes on and every problem
is reported; `read_sections` returns the tables read. The cross-checks are `checks.py`'s, the
order of the passes and threshold "auto" are `load.py`'s, and the typed key getters `keys.py`'s.
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
from prfaas.topology.config import (
    CLUSTER_KINDS,
    DEFAULT_PREFIX_BLOCK_TOKENS,
    DEFAULT_PREFIX_BUDGET_BYTES,
    DTYPES,
    ENGINES,
    FAILURE_POLICIES,
    ROLES,
    ClusterConfig,
    ControllerSettings,
    InstanceConfig,
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
    resolve_path,
    show_value,
)
from prfaas.transport.config import is_congestion_control_name
from prfaas.types import DeploymentKind

__all__ = ["Sections", "TopologyError", "read_sections"]

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
CONTROLLER_RATE_KEYS = ("cooldown_s", "min_role_gain", "threshold_min_gain", "link_change_share")
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
LINK_KEYS = ("gbps",)
POLICY_KEYS = ("threshold", "failure", "transfer_deadline_s", "deployment", "drain_s")
TRANSPORT_KEYS = (
    "token",
    "token_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "num_connections",
    "receive_pool_bytes",
    "congestion_control",
)
TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")
CLUSTER_KEYS = ("name", "kind", "instances")
INSTANCE_KEYS = ("name", "role", "http", "kv", "kv_listen", "engine", "hardware", "num_gpus")
DEPLOYMENTS = tuple(k.value for k in DeploymentKind)
AUTO = "auto"
MAX_CONNECTIONS = 64  # KV transport connections per destination
MAX_CONCURRENT_PER_KEY = 1 << 20  # requests in flight per API key
MAX_INSTANCE_GPUS = 1024  # GPUs of one instance
MIN_RECEIVE_POOL_BYTES = 4 << 20  # one payload frame of the sender's default size (4 MiB)
MAX_RECEIVE_POOL_BYTES = 1 << 40  # 1 TiB: past any host's memory, so surely a typo
NO_CREDENTIALS = "set token, token_file or tls_cert/tls_key/tls_ca"
# defaults of the dataclasses (slots hide them as class attributes)
_MODEL = ModelConfig(name="")
_ROUTER = RouterConfig()
_LINK = LinkConfig()
_POLICY = PolicyConfig(threshold_tokens=0.0)
_SECURITY = SecurityConfig()
_INSTANCE = InstanceConfig(name="", cluster="", role="", http="")


# ---- pass 1: each section on its own --------------------------------------------------------


def _model(table: Table | None) -> ModelConfig:
    if table is None:
        return ModelConfig(name="")
    return ModelConfig(
        name=_model_name(table),
        dtype=table.choice("dtype", DTYPES, _MODEL.dtype),
        seed=table.integer("seed", _MODEL.seed, minimum=0),
        emulate=_emulated_model(table),
        time_scale=table.non_negative("time_scale", _MODEL.time_scale),
        payload_scale=_payload_scale(table),
        prefill_latency=_prefill_latency(table),
    )


def _prefill_latency(table: Table) -> tuple[tuple[str, str], ...]:
    """`prefill_latency`: an inline table of hardware preset -> latency spec of one prefill
    instance ("quadratic:a,b,c" or "profile:NAME|PATH"), as sorted (hardware, spec) pairs with
    the hardware in lower case and a profile file's path made absolute."""
    value = table.raw("prefill_latency", (dict,), 'a table of hardware = "latency spec"')
    pairs: dict[str, str] = {}
    for name, spec in (value or {}).items():
        key = f"prefill_latency.{name}"
        hardware = _known_hardware(table, key, name)
        checked = _prefill_latency_spec(table, key, spec)
        if hardware is None or checked is None:
            continue
        if hardware in pairs:
            table.fail(key, f"hardware {hardware!r} has a latency already")
            continue
        pairs[hardware] = checked
    return tuple(sorted(pairs.items()))


def _known_hardware(table: Table, key: str, name: str) -> str | None:
    """A hardware preset name in lower case (how instances name theirs), or None (reported)."""
    from prfaas.perf import get_hardware, list_hardware

    try:
        get_hardware(name)
    except UserError:
        known = ", ".join(h.lower() for h in list_hardware())
        table.fail(key, f"unknown hardware preset {name!r}; known: {known}")
        return None
    return name.strip().lower()


def _prefill_latency_spec(table: Table, key: str, spec: object) -> str | None:
    """A latency spec that resolves to a curve, with a relative profile path made absolute
    against the topology's directory; None (reported) otherwise."""
    from prfaas.perf.profile import PROFILE_PRESETS
    from prfaas.topology.derived import resolve_prefill_latency

    if not isinstance(spec, str):
        table.fail(key, f'must be a string ("quadratic:a,b,c" or "profile:NAME|PATH"), got '
                   f"{show_value(spec)}")  # fmt: skip
        return None
    kind, _, reference = spec.strip().partition(":")
    if kind == "profile" and reference and reference.strip().lower() not in PROFILE_PRESETS:
        spec = f"profile:{resolve_path(reference, table.base_dir)}"
    try:
        resolve_prefill_latency(spec)
    except UserError as exc:
        table.fail(key, str(exc))
        return None
    return spec.strip()


def _payload_scale(table: Table) -> float:
    """A fraction in (0, 1]: emulated payloads are shrunk, never inflated."""
    scale = table.positive("payload_scale", _MODEL.payload_scale)
    if scale > 1:
        table.fail("payload_scale", f"must be in (0, 1], got {scale:g}")
        return _MODEL.payload_scale
    return scale


def _model_name(table: Table) -> str:
    """A tiny preset name as is (presets win over directories of the same name), or the
    absolute path of a checkpoint directory holding a config.json."""
    from prfaas.engine.presets import PRESETS

    name = table.string("name", required=True)
    if not name or name in PRESETS:
        return name
    directory = resolve_path(name, table.base_dir)
    if not (directory / "config.json").is_file():
        table.fail(
            "name",
            f"missing checkpoint: {name!r} is neither a tiny preset ({', '.join(PRESETS)}) nor a "
            f"directory with a config.json ({directory})",
        )
        return name
    return str(directory)


def _emulated_model(table: Table) -> str:
    from prfaas.models import list_presets
    from prfaas.models.presets import preset_file_name

    name = table.string("emulate", _MODEL.emulate)
    if preset_file_name(name) is None:
        table.fail("emulate", f"unknown model preset {name!r}; known: {', '.join(list_presets())}")
    return name


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
    return LinkConfig(gbps=table.positive("gbps", _LINK.gbps))


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
    )
    return policy, threshold == AUTO


def _transport(
    problems: Problems, table: Table | None, is_present: bool, allow_generated_token: bool
) -> SecurityConfig:
    """Credentials are required, except that a launcher generating a token may allow a file
    without any `[transport]` table (the token then stays None). `is_present`: the file has a
    `transport` key (None then means it was not a table, already reported)."""
    if table is None:
        if not (allow_generated_token or is_present):
            problems.add("transport", NO_CREDENTIALS)
        return SecurityConfig()
    if not any(table.has(name) for name in ("token", "token_file", *TLS_KEYS)):
        problems.add("transport", NO_CREDENTIALS)
    tls = _tls_files(table)
    cert, key, ca = tls or (None, None, None)
    return SecurityConfig(
        token=_token(table),
        tls_cert=cert,
        tls_key=key,
        tls_ca=ca,
        num_connections=table.integer(
            "num_connections", _SECURITY.num_connections, 1, MAX_CONNECTIONS
        ),
        receive_pool_bytes=table.integer(
            "receive_pool_bytes",
            _SECURITY.receive_pool_bytes,
            MIN_RECEIVE_POOL_BYTES,
            MAX_RECEIVE_POOL_BYTES,
        ),
        congestion_control=_congestion_control(table),
    )


def _congestion_control(table: Table) -> str | None:
    """A kernel algorithm's name (checked against the kernel where a sender starts)."""
    name = table.optional_string("congestion_control")
    if name is not None and not is_congestion_control_name(name):
        table.fail(
            "congestion_control",
            f"must name a TCP congestion control algorithm (e.g. cubic, bbr), got {name!r}",
        )
        return None
    return name


def _prefix_cache(table: Table | None) -> PrefixCacheConfig | None:
    if table is None:
        return None
    return PrefixCacheConfig(
        block_tokens=table.integer("block_tokens", DEFAULT_PREFIX_BLOCK_TOKENS, 1),
        budget_bytes=table.integer("budget_bytes", DEFAULT_PREFIX_BUDGET_BYTES, 0),
    )


def _token(table: Table) -> str | None:
    """The inline token, or the stripped content of token_file; not both."""
    if table.has("token") and table.has("token_file"):
        table.fail("token_file", "token and token_file are exclusive")
        return None
    if table.has("token"):
        return table.optional_string("token")
    path = table.readable_file("token_file")
    if path is None:
        return None
    try:
        token = read_text_file(path).strip()
    except UserError as exc:
        table.fail("token_file", str(exc))
        return None
    if not token:
        table.fail("token_file", f"{path} is empty")
        return None
    return token


def _tls_files(table: Table) -> tuple[str, str, str] | None:
    """(cert, key, CA) as absolute paths when all three are given; None when none is."""
    given = [name for name in TLS_KEYS if table.has(name)]
    if not given:
        return None
    missing = [name for name in TLS_KEYS if name not in given]
    if missing:
        table.fail(missing[0], f"tls_cert, tls_key and tls_ca go together; missing {missing[0]}")
        return None
    paths = [table.readable_file(name) for name in TLS_KEYS]
    if any(p is None for p in paths):
        return None
    cert, key, ca = (str(p) for p in paths)
    return cert, key, ca


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


def _instance(table: Table, cluster: str) -> InstanceConfig:
    role = table.choice("role", ROLES)
    kv = _kv_address(table, role)
    return InstanceConfig(
        name=table.name(),
        cluster=cluster,
        role=role,
        http=table.address("http", required=True),
        kv=kv,
        kv_listen=_kv_listen_address(table, kv),
        engine=table.choice("engine", ENGINES, _INSTANCE.engine),
        hardware=_hardware(table),
        num_gpus=table.integer("num_gpus", _INSTANCE.num_gpus, 1, MAX_INSTANCE_GPUS),
    )


def _kv_address(table: Table, role: str) -> str | None:
    """The KV receiver, optional on a prefill instance: on a PD one it receives moved prefixes
    and makes the instance convertible to decode; on a PrfaaS one it receives moved prefixes
    only (PD caches moved to PrfaaS by the global-best-prefix rule). Required on a decode
    instance (the request state arrives there)."""
    if role == "decode" and not table.has("kv"):
        table.fail("kv", 'missing required key ("host:port" of the decode KV receiver)')
        return None
    return table.address("kv") or None


def _kv_listen_address(table: Table, kv: str | None) -> str | None:
    """Where the KV receiver binds when the others reach it at another address (`kv`: through
    NAT or a proxy); only an instance with a KV receiver has one. None: it binds `kv`."""
    if not table.has("kv_listen"):
        return None
    if kv is None:
        if table.has("kv"):  # kv itself was refused: that problem is reported already
            return None
        table.fail("kv_listen", "only an instance with kv (a KV receiver) binds one")
        return None
    return table.address("kv_listen") or None


def _hardware(table: Table) -> str:
    """A `prfaas.perf` hardware preset name, lower case."""
    from prfaas.perf import get_hardware, list_hardware

    name = table.string("hardware", _INSTANCE.hardware)
    try:
        get_hardware(name)
    except UserError:
        known = ", ".join(h.lower() for h in list_hardware())
        table.fail("hardware", f"unknown hardware preset {name!r}; known: {known}")
    return name.strip().lower()


def _cluster(table: Table) -> ClusterConfig:
    name = table.name()
    kind = table.choice("kind", CLUSTER_KINDS)
    instances = tuple(_instance(t, name) for t in table.tables("instances", INSTANCE_KEYS))
    return ClusterConfig(name=name, kind=kind, instances=instances)


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
    model = _model(top.table("model", MODEL_KEYS, required=True))
    router = _router(top.table("router", ROUTER_KEYS))
    link = _link(top.table("link", LINK_KEYS))
    policy, is_auto = _policy(top.table("policy", POLICY_KEYS, required=True))
    transport_table = top.table("transport", TRANSPORT_KEYS)
    transport = _transport(problems, transport_table, top.has("transport"), allow_generated_token)
    prefix_cache = _prefix_cache(top.table("prefix_cache", PREFIX_CACHE_KEYS))
    controller = _controller(top.table("controller", CONTROLLER_KEYS))
    clusters = tuple(_cluster(t) for t in top.tables("clusters", CLUSTER_KEYS))
    return Sections(
        model, router, link, policy, is_auto, transport, prefix_cache, controller, clusters
    )
