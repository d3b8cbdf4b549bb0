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


def test_the_planner_and_the_simulator_size_transfers_with_the_fixed_codec() -> None:
    """S_kv of a 32K prompt, as `planner_inputs` and `sim_config_of` take it from the topology:
    the codec's size for fp8 (from `ModelSpec.footprint`), the uncoded size for "auto" (it codes
    only while the link binds)."""
    from prfaas.models import load_model_spec
    from prfaas.topology.derived import planner_inputs
    from prfaas.topology.sim_config import sim_config_of

    model = load_model_spec("paper-1t")
    sizes = {}
    for codec in ("none", "fp8", "auto"):
        topology = TopologySpec(engine="emulated", compression=codec, link_gbps=10).topology()
        inputs, _ = planner_inputs(topology)
        sizes[codec] = inputs.kv_bytes(32768)
        footprint = model.footprint(kv_codec="none" if codec == "auto" else codec)
        assert sizes[codec] == footprint.bytes_for(32768), codec
        kv_size = sim_config_of(topology).kv_size
        assert kv_size.bytes_per_token == footprint.bytes_per_token, codec
    assert sizes["fp8"] < sizes["none"] == sizes["auto"]
