"""The topology file's `[[clusters]]` and their `[[clusters.instances]]`, each read on its own
(pass 1 of `load.py`): role, HTTP and KV addresses, engine, hardware and GPUs, and the
cluster's price per GPU-hour (`read_price`, also the `[link]`'s price per GB). What the
clusters must hold together is `checks.py`'s.
"""

from __future__ import annotations

from prfaas.errors import UserError
from prfaas.policy.providers import MAX_PRICE_USD
from prfaas.topology.config import (
    CLUSTER_KINDS,
    ENGINES,
    ROLES,
    ClusterConfig,
    InstanceConfig,
)
from prfaas.topology.keys import Table

INSTANCE_KEYS = ("name", "role", "http", "kv", "kv_listen", "engine", "hardware", "num_gpus")
MAX_INSTANCE_GPUS = 1024  # GPUs of one instance

_INSTANCE = InstanceConfig(name="", cluster="", role="", http="")


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


def read_price(table: Table, name: str) -> float | None:
    """A price in USD in [0, MAX_PRICE_USD], or None when the key is absent."""
    if not table.has(name):
        return None
    bound = f"in [0, {MAX_PRICE_USD:,.0f}] USD"
    return table.number(name, 0.0, bound, lambda v: 0 <= v <= MAX_PRICE_USD)


def read_cluster(table: Table) -> ClusterConfig:
    name = table.name()
    kind = table.choice("kind", CLUSTER_KINDS)
    instances = tuple(_instance(t, name) for t in table.tables("instances", INSTANCE_KEYS))
    price = read_price(table, "price_per_gpu_hour")
    return ClusterConfig(name=name, kind=kind, instances=instances, price_per_gpu_hour=price)
