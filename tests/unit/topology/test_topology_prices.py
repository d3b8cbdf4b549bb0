"""Prices in the topology: a cluster's `price_per_gpu_hour` and the `[link]`'s `price_per_gb`
(optional, in [0, 1e6] USD), refused at load in one line each when bad; written back by the
topology writer. Several PrfaaS clusters (providers) are `test_topology_providers.py`'s."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from test_topology import _assert_names, _only_problem, _parse, _valid

from prfaas.topology.write import topology_to_toml


def _priced() -> dict[str, object]:
    data = _valid()
    data["clusters"][0]["price_per_gpu_hour"] = 4.5
    data["clusters"][1]["price_per_gpu_hour"] = 1
    data["link"] = {"gbps": 10, "price_per_gb": 0.02}
    return data


def test_prices_are_absent_by_default(tmp_path: Path) -> None:
    topology = _parse(_valid(), tmp_path)
    assert [c.price_per_gpu_hour for c in topology.clusters] == [None, None]
    assert topology.link.price_per_gb is None


def test_prices_are_read(tmp_path: Path) -> None:
    topology = _parse(_priced(), tmp_path)
    assert [c.price_per_gpu_hour for c in topology.clusters] == [4.5, 1.0]
    assert topology.link.price_per_gb == 0.02


def test_the_writer_keeps_the_prices(tmp_path: Path) -> None:
    topology = _parse(_priced(), tmp_path)
    again = _parse(tomllib.loads(topology_to_toml(topology)), tmp_path)
    assert again.clusters == topology.clusters
    assert again.link == topology.link


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(-1, "in [0, 1,000,000] USD"), (math.nan, "got nan"), (1e7, "got 10000000"), ("4", "number")],
)
def test_bad_cluster_price_is_refused(tmp_path: Path, value: object, fragment: str) -> None:
    data = _priced()
    data["clusters"][1]["price_per_gpu_hour"] = value  # type: ignore[index]
    _assert_names(_only_problem(data, tmp_path), "clusters[1].price_per_gpu_hour", fragment)


@pytest.mark.parametrize(
    ("value", "fragment"), [(-0.01, "in [0, 1,000,000] USD"), (math.inf, "inf")]
)
def test_bad_link_price_is_refused(tmp_path: Path, value: object, fragment: str) -> None:
    data = _priced()
    data["link"] = {"gbps": 10, "price_per_gb": value}
    _assert_names(_only_problem(data, tmp_path), "link.price_per_gb", fragment)
