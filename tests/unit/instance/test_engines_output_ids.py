"""The ids an emulated engine generates: the served tokenizer's printable, non-special tokens."""

from __future__ import annotations

from pathlib import Path

from prfaas.instance.engines import printable_token_ids
from prfaas.service.text import load_codec
from prfaas.topology import Topology
from topologies import Node, TopologySpec, decode, pd


def _topology(name: str, tmp_path: Path) -> Topology:
    """Model `name` (a preset, or a checkpoint directory under `tmp_path`) on a homogeneous
    deployment of emulated H20 instances."""
    spec = TopologySpec(
        clusters=(pd(Node("p0"), decode("d0")),),
        engine="emulated",
        model=name,
        deployment="homogeneous",
        threshold=None,
        token="output-ids-test-token-0123456789",
        port_base=18000,
        base_dir=tmp_path,
    )
    return spec.topology()


def test_the_byte_tokenizer_gives_printable_ascii_without_special_tokens(tmp_path: Path) -> None:
    topology = _topology("qwen3_next", tmp_path)
    ids = printable_token_ids(topology)
    codec = load_codec(topology.model)
    text = codec.decode(list(ids))
    assert len(ids) == 94  # "!" .. "~"
    assert text.isprintable() and " " not in text and "\ufffd" not in text
    special = {codec.tokenizer.bos_token_id, codec.tokenizer.eos_token_id}
    assert special.isdisjoint(ids)


def test_a_tokenizer_that_cannot_be_loaded_leaves_the_whole_vocabulary(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights-only"  # a config.json, no tokenizer files
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama", "vocab_size": 300}')
    assert printable_token_ids(_topology(str(checkpoint), tmp_path)) == ()
