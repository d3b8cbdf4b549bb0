"""`[transport] compression`: one of the KV codecs or "auto", "none" by default; an unknown name
is refused at load with one line naming the known ones; the writer keeps it."""

from __future__ import annotations

import pytest
from test_topology_kv_listen import _only_problem, _parse, _valid

from topologies import TopologySpec


def test_compression_defaults_to_none() -> None:
    assert _parse(_valid()).transport.compression == "none"


@pytest.mark.parametrize("name", ["none", "fp8", "int4-rotated", "auto"])
def test_every_codec_and_auto_are_accepted(name: str) -> None:
    data = _valid()
    data["transport"]["compression"] = name
    assert _parse(data).transport.compression == name


@pytest.mark.parametrize("name", ["zstd", "FP8", "", 8])
def test_an_unknown_name_is_refused_naming_the_known_ones(name: object) -> None:
    data = _valid()
    data["transport"]["compression"] = name
    _only_problem(data, "transport.compression", "none, fp8, int4-rotated or auto")


def test_the_writer_keeps_the_codec() -> None:
    assert TopologySpec(compression="int4-rotated").topology().transport.compression == (
        "int4-rotated"
    )
