"""The link flags of `prfaas sim`, `plan` and `kv`: a value the run cannot represent (inf, NaN,
a rate that overflows once converted to bytes/s, a negative time, a loss of 100%, an efficiency
outside (0, 1], a decode step too short for simulated time to advance) is refused with one line
and exit status 2, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_inputs import Capsys, one_error_line

CASES: list[tuple[str, str]] = [
    ("sim --link-drop 10:1e308", "--link-drop needs AT_S in (0, 2.592e+06] s and GBPS in"),
    ("sim --link-drop 1e308:10", "--link-drop needs AT_S in (0"),
    ("sim --link-drop 0:10", "--link-drop needs AT_S in (0"),
    ("sim --link-fluctuation 2:10", "--link-fluctuation needs LOW in [0, 1]"),
    ("sim --link-fluctuation 0.5:1e308", "PERIOD_S in (0, 2.592e+06]"),
    ("sim --link-gbps 1e308", "--link-gbps: must be <= 1,000,000"),
    ("plan --link-gbps inf", "--link-gbps: expected a finite number"),
    ("sim --rtt-ms -1", "--rtt-ms: must be >= 0"),
    ("sim --rtt-ms nan", "--rtt-ms: expected a finite number"),
    ("plan --rtt-ms 1e308", "--rtt-ms: must be <= 60,000"),
    ("plan --jitter-ms inf", "--jitter-ms: expected a finite number"),
    ("plan --jitter-distribution gamma", "invalid choice: 'gamma'"),
    ("plan --loss-pct 100", "--loss-pct: must be < 100"),
    ("sim --loss-pct -0.5", "--loss-pct: must be >= 0"),
    ("plan --link-efficiency 0", "--link-efficiency: must be > 0"),
    ("plan --link-efficiency 1.5", "--link-efficiency: must be <= 1"),
    ("sim --link-efficiency nan", "--link-efficiency: expected a finite number"),
    ("sim --t-decode-ms 1e-320", "--t-decode-ms: must be >= 0.001"),
    ("plan --decode-slo-tps 1e308", "--decode-slo-tps: must be <= 1,000,000"),
    ("plan --config {d}/gbps.toml", "link_gbps (--link-gbps or the --config key) must be <="),
    ("sim --config {d}/rtt.toml", "link path: rtt_s must be in [0, 60] s"),
    ("plan --config {d}/loss.toml", "link path: loss_rate must be in [0, 1)"),
    ("plan --config {d}/efficiency.toml", "link path: payload_efficiency must be in (0, 1]"),
    ("sim --config {d}/step.toml", "t_decode_s (--t-decode-ms, --decode-slo-tps or the --config"),
    ("kv --model paper-1t --hardware h200 --gpus inf", "--gpus: expected an integer"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("link-flags")
    for name, text in {
        "gbps.toml": "link_gbps = 1e308\n",
        "rtt.toml": "rtt_ms = -5\n",
        "loss.toml": "loss_pct = 100\n",
        "efficiency.toml": "payload_efficiency = 2\n",
        "step.toml": "t_decode_s = 1e-320\n",
    }.items():
        (d / name).write_text(text)
    return d


@pytest.mark.parametrize(("template", "reason"), CASES, ids=[c[0] for c in CASES])
def test_unrepresentable_link_values_are_one_line(
    capsys: Capsys, files: Path, template: str, reason: str
) -> None:
    argv = [part.format(d=files) for part in template.split()]
    assert reason in one_error_line(capsys, argv)


def test_the_overflowing_link_drop_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prfaas", "sim", "--link-drop", "10:1e308"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "prfaas sim: error: --link-drop needs AT_S in (0, 2.592e+06] s and GBPS in "
        "[0, 1e+06], got 10:1e+308"
    ]
