"""`prfaas bench transport`: flag validation and the KV-shaped payload it moves."""

from __future__ import annotations

import itertools

import pytest

from prfaas.bench.transport import kv_shaped_manifest
from prfaas.cli import main
from prfaas.cli.bench import parse_size_bytes
from prfaas.errors import UserError
from prfaas.types import MIB


@pytest.mark.parametrize(
    ("text", "size"), [("256MiB", 256 * MIB), ("1GiB", 1 << 30), ("8192", 8192)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize("text", ["", "12XB", "-1MiB", "1", "100GiB", "MiB"])
def test_bad_sizes_are_user_errors(text: str) -> None:
    with pytest.raises(UserError):
        parse_size_bytes(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "transport", "--size", "nope"],
        ["bench", "transport", "--connections", "0"],
        ["bench", "transport", "--link-gbps", "0"],
        ["bench", "transport", "--tls-dir", "/nonexistent-dir"],
        ["bench", "transport", "--delay-ms", "10"],  # no link to put a delay line in
        ["bench", "transport", "--loss-pct", "0.1"],
        ["bench", "transport", "--link-gbps", "1", "--delay-ms", "-1"],
        ["bench", "transport", "--link-gbps", "1", "--delay-ms", "20000"],
        ["bench", "transport", "--link-gbps", "1", "--delay-ms", "nan"],
        ["bench", "transport", "--link-gbps", "1", "--loss-pct", "100"],
        ["bench", "transport", "--link-gbps", "1", "--delay-ms", "5", "--loss-pct", "-0.1"],
        ["bench", "transport", "--link-gbps", "5", "--delay-ms", "10"],  # above the delay line
        ["bench", "transport", "--congestion-control", "Not-A-Name"],
        ["bench", "transport", "--congestion-control", "nosuchcc"],  # a name, not loaded
        ["bench", "transport", "--only", "kv-tuned"],
        ["bench", "transport", "--idle-s", "-1"],
    ],
)
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # usage errors name the nested subcommand ("prfaas bench transport"), UserErrors "prfaas bench"
    assert err.startswith("prfaas bench") and ": error: " in err and "\n" not in err


def test_kv_shaped_payload_is_contiguous_and_close_to_the_asked_size() -> None:
    m = kv_shaped_manifest(256 * MIB)
    tensors = [t for layer in m.layers for t in layer.tensors]
    assert tensors[0].offset_bytes == 0
    for a, b in itertools.pairwise(tensors):
        assert b.offset_bytes == a.offset_bytes + a.num_bytes
    assert abs(m.total_bytes - 256 * MIB) / (256 * MIB) < 0.01
    assert {layer.layer_kind for layer in m.layers} == {"full_attention", "linear_attention"}


def test_table_shows_cpu_per_transfer_when_measured() -> None:
    from prfaas.cli.bench import _table

    row = {"size_bytes": 1, "connections": 4, "goodput_gbps": 2.0, "tx_cpu_s_per_transfer": 0.25}
    text = _table(row)
    assert "tx_cpu_s_per_transfer" in text and "0.250" in text
    assert "rx_cpu_s_per_transfer" not in text
