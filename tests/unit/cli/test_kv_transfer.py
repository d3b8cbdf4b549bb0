"""`prfaas kv --link-gbps`: each KV's transfer time over the link, warm and new, from the one
transfer cost model; refused link values are one line."""

from __future__ import annotations

import pytest
from test_kv import Capsys, run_error, run_json

from prfaas.models import load_model_spec


def test_transfer_times_at_10_gbps_and_50_ms(capsys: Capsys) -> None:
    rows = run_json(
        capsys, "--model", "paper-1t", "--lengths", "1024", "--link-gbps", "10",
        "--rtt-ms", "50", "--link-efficiency", "0.9",
    )  # fmt: skip
    s_kv = load_model_spec("paper-1t").kv_bytes(1024)
    assert rows[0]["transfer_warm_s"] == pytest.approx(s_kv / 1.125e9 + 0.05, abs=1e-4)
    # new: the handshake and a slow-start ramp on top
    assert rows[0]["transfer_new_s"] > rows[0]["transfer_warm_s"] + 0.05


def test_without_a_link_no_transfer_columns(capsys: Capsys) -> None:
    rows = run_json(capsys, "--model", "paper-1t", "--lengths", "1024")
    assert not any(key.startswith("transfer") for key in rows[0])


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--link-gbps", "1e308"], "--link-gbps: must be <= 1,000,000"),
        (["--link-gbps", "10", "--loss-pct", "100"], "--loss-pct: must be < 100"),
        (["--link-gbps", "10", "--rtt-ms", "inf"], "--rtt-ms: expected a finite number"),
        (["--link-gbps", "10", "--link-efficiency", "0"], "--link-efficiency: must be > 0"),
    ],
)
def test_bad_link_values_are_one_line(capsys: Capsys, argv: list[str], reason: str) -> None:
    assert reason in run_error(capsys, "--model", "paper-1t", *argv)
