"""A `Topology` built in code, written as the TOML that `parse_topology` reads back into an equal
one: the one writer of topology files (`prfaas up`'s embedded deployment, the testbed's, the
benchmarks' and the tests'), so that no caller formats topology text of its own.

`topology_to_dict` maps each dataclass to its table (the keys of `prfaas.topology.schema`),
leaving out every value that is the default, as a hand-written file does; `toml_text` writes
such a dict with a small writer of the few TOML types a topology uses (strings, integers,
floats, booleans, arrays, tables, arrays of tables). A resolved "auto" threshold is written as
its number, a threshold the deployment implies is left out, and secrets
(the transport token, API keys) are written as they are, unless the token goes to a `token_file`
of the caller's. Not written, as no key holds them: an instance's cluster (the table it sits in)
and the controller's knobs outside `[controller]`'s keys (refused when they are not the defaults).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias, TypeVar

from prfaas.policy.controller import ControllerConfig
from prfaas.topology import config
from prfaas.topology.schema import CONTROLLER_KEYS

TomlValue: TypeAlias = "str | int | float | bool | list[TomlValue] | dict[str, TomlValue]"
TomlTable: TypeAlias = "dict[str, TomlValue]"
_Config = TypeVar("_Config")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STRING_ESCAPES = {
    **{code: f"\\u{code:04x}" for code in (*range(0x20), 0x7F)},  # control characters
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\f"): "\\f",
    ord("\r"): "\\r",
}
_INDENT = "  "  # per level of nesting below the top-level tables
# the defaults a file leaves out (slots hide them as class attributes)
_MODEL = config.ModelConfig(name="")
_ROUTER = config.RouterConfig()
_LINK = config.LinkConfig()
_POLICY = config.PolicyConfig(threshold_tokens=0.0)
_SECURITY = config.SecurityConfig()
_PREFIX_CACHE = config.PrefixCacheConfig(
    config.DEFAULT_PREFIX_BLOCK_TOKENS, config.DEFAULT_PREFIX_BUDGET_BYTES
)
_CONTROLLER = ControllerConfig()
_INSTANCE = config.InstanceConfig(name="", cluster="", role="", http="")


def write_topology(
    path: Path, topology: config.Topology, *, token_file: Path | None = None, comment: str = ""
) -> Path:
    """Write `topology` to `path`, readable by its owner only (it may hold secrets)."""
    path.write_text(topology_to_toml(topology, token_file=token_file, comment=comment))
    path.chmod(0o600)
    return path


def topology_to_toml(
    topology: config.Topology, *, token_file: Path | None = None, comment: str = ""
) -> str:
    """The TOML text of `topology`, each line of `comment` a `#` line at its head."""
    return toml_text(topology_to_dict(topology, token_file=token_file), comment=comment)


def topology_to_dict(topology: config.Topology, *, token_file: Path | None = None) -> TomlTable:
    """The tables of `topology`, each key only where its value is not the default. `token_file`:
    where the caller keeps the transport token; the file then names it instead of holding it."""
    data: TomlTable = {"model": _differing(_model, topology.model, _MODEL)}
    router = _differing(_router, topology.router, _ROUTER)
    if router:
        data["router"] = router
    link = _differing(_link, topology.link, _LINK)
    if link:
        data["link"] = link
    data["policy"] = _policy(topology.policy)
    transport = _transport(topology.transport, token_file)
    if transport is not None:
        data["transport"] = transport
    if topology.prefix_cache is not None:  # present, even empty: instances keep a cache
        data["prefix_cache"] = _differing(_prefix_cache, topology.prefix_cache, _PREFIX_CACHE)
    if topology.controller.enabled:  # present, even empty: the controller runs
        data["controller"] = _controller(topology.controller)
    data["clusters"] = [_cluster(c) for c in topology.clusters]
    return data


def _differing(
    table_of: Callable[[_Config], TomlTable], value: _Config, default: _Config
) -> TomlTable:
    """The keys of `value`'s table whose values are not those of `default`'s."""
    defaults = table_of(default)
    return {key: item for key, item in table_of(value).items() if defaults.get(key) != item}


# ---- the tables, every key ------------------------------------------------------------------


def _model(model: config.ModelConfig) -> TomlTable:
    table: TomlTable = {
        "name": model.name,
        "dtype": model.dtype,
        "seed": model.seed,
        "emulate": model.emulate,
        "time_scale": model.time_scale,
        "payload_scale": model.payload_scale,
    }
    if model.prefill_latency:
        table["prefill_latency"] = dict(model.prefill_latency)
    return table


def _router(router: config.RouterConfig) -> TomlTable:
    return {
        "http": router.http,
        "api_keys": list(router.api_keys),
        "max_body_bytes": router.max_body_bytes,
        "max_concurrent_per_key": router.max_concurrent_per_key,
    }


def _link(link: config.LinkConfig) -> TomlTable:
    table: TomlTable = {
        "gbps": link.gbps,
        "rtt_ms": link.rtt_ms,
        "jitter_ms": link.jitter_ms,
        "jitter_distribution": link.jitter_distribution,
        "loss_pct": link.loss_pct,
        "payload_efficiency": link.payload_efficiency,
        "mss_bytes": link.mss_bytes,
    }
    if link.price_per_gb is not None:
        table["price_per_gb"] = link.price_per_gb
    return table


def _policy(policy: config.PolicyConfig) -> TomlTable:
    """No threshold where the deployment implies it (a file cannot write t = inf)."""
    table: TomlTable = {}
    implied = config.threshold_of(policy.deployment)
    if (policy.threshold_tokens, policy.threshold_source) != implied:
        table["threshold"] = policy.threshold_tokens
    table.update(_differing(_policy_choices, policy, _POLICY))
    return table


def _policy_choices(policy: config.PolicyConfig) -> TomlTable:
    table: TomlTable = {
        "deployment": policy.deployment,
        "failure": policy.failure,
        "transfer_deadline_s": policy.transfer_deadline_s,
        "drain_s": policy.drain_s,
    }
    if policy.ttft_target_s is not None:
        table["ttft_target_s"] = policy.ttft_target_s
    return table


def _transport(security: config.SecurityConfig, token_file: Path | None) -> TomlTable | None:
    """The credentials and the transport's settings; None without credentials (a launcher's
    generated token, which a file states by having no `[transport]` table)."""
    credentials: dict[str, str | None] = {
        "token": None if token_file is not None else security.token,
        "token_file": None if token_file is None else str(token_file),
        "tls_cert": security.tls_cert,
        "tls_key": security.tls_key,
        "tls_ca": security.tls_ca,
    }
    table: TomlTable = {key: value for key, value in credentials.items() if value is not None}
    if not table:
        return None
    table.update(_differing(_transport_settings, security, _SECURITY))
    return table


def _transport_settings(security: config.SecurityConfig) -> TomlTable:
    table: TomlTable = {
        "num_connections": security.num_connections,
        "receive_pool_bytes": security.receive_pool_bytes,
        "compression": security.compression,
    }
    if security.congestion_control is not None:
        table["congestion_control"] = security.congestion_control
    return table


def _prefix_cache(cache: config.PrefixCacheConfig) -> TomlTable:
    return {"block_tokens": cache.block_tokens, "budget_bytes": cache.budget_bytes}


def _controller(settings: config.ControllerSettings) -> TomlTable:
    """`driven` and the knobs a `[controller]` key sets; ValueError for any other knob that is
    not its default (no file could hold it)."""
    lost = [
        f.name
        for f in dataclasses.fields(settings.config)
        if f.name not in CONTROLLER_KEYS
        and getattr(settings.config, f.name) != getattr(_CONTROLLER, f.name)
    ]
    if lost:
        raise ValueError(f"no [controller] key holds {', '.join(lost)}")
    table: TomlTable = {"driven": True} if settings.driven else {}
    table.update(_differing(_controller_knobs, settings.config, _CONTROLLER))
    return table


def _controller_knobs(knobs: ControllerConfig) -> TomlTable:
    return {name: getattr(knobs, name) for name in CONTROLLER_KEYS if name != "driven"}


def _cluster(cluster: config.ClusterConfig) -> TomlTable:
    table: TomlTable = {"name": cluster.name, "kind": cluster.kind}
    if cluster.price_per_gpu_hour is not None:
        table["price_per_gpu_hour"] = cluster.price_per_gpu_hour
    if cluster.link is not None:  # present, even empty: its keys default as `[link]`'s do
        table["link"] = _differing(_link, cluster.link, _LINK)
    table["instances"] = [_differing(_instance, i, _INSTANCE) for i in cluster.instances]
    return table


def _instance(instance: config.InstanceConfig) -> TomlTable:
    table: TomlTable = {"name": instance.name, "role": instance.role, "http": instance.http}
    if instance.kv is not None:
        table["kv"] = instance.kv
    if instance.kv_listen is not None:
        table["kv_listen"] = instance.kv_listen
    table.update(engine=instance.engine, hardware=instance.hardware, num_gpus=instance.num_gpus)
    return table


# ---- TOML text ------------------------------------------------------------------------------


def toml_text(data: TomlTable, *, comment: str = "") -> str:
    """`data` as TOML: each table's plain keys, then its tables, then its arrays of tables (an
    array whose items are all tables; an empty array is an array of values)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    _append_table(lines, (), data, is_array_item=False)
    return "\n".join(lines).lstrip("\n") + "\n"


def _append_table(
    lines: list[str], path: Sequence[str], table: TomlTable, *, is_array_item: bool
) -> None:
    indent = _INDENT * max(len(path) - 1, 0)
    if path:
        name = ".".join(_key(part) for part in path)
        if len(path) == 1:
            lines.append("")
        lines.append(f"{indent}[[{name}]]" if is_array_item else f"{indent}[{name}]")
    for key, value in table.items():
        if not (isinstance(value, dict) or _is_table_array(value)):
            lines.append(f"{indent}{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _append_table(lines, (*path, key), value, is_array_item=False)
    for key, value in table.items():
        if isinstance(value, list) and _is_table_array(value):
            for item in value:
                assert isinstance(item, dict)
                _append_table(lines, (*path, key), item, is_array_item=True)


def _is_table_array(value: TomlValue) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _value(value: TomlValue) -> str:
    """A value on one line: an inline array of values, never an inline table."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"a table inside an array of values: {value!r}")


def _float(value: float) -> str:
    """Python's shortest repr reads back to the same float; TOML spells the specials alike."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _string(text: str) -> str:
    """A basic string: quotes, backslashes and control characters escaped."""
    return '"' + text.translate(_STRING_ESCAPES) + '"'
