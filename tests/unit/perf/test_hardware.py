"""Hardware presets: lookup, FP8 availability, and orderings any datasheet reader would expect."""

from __future__ import annotations

import pytest

from prfaas.errors import UserError
from prfaas.perf import get_hardware, list_hardware


def test_required_presets() -> None:
    assert {"H200", "H20", "H100", "H800", "B200", "A100", "L40S"} <= set(list_hardware())
    assert get_hardware("h200") is get_hardware("H200")


def test_unknown_hardware_names_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown hardware 'X1'.*H200"):
        get_hardware("X1")


def test_fp8_peak_and_absence() -> None:
    h200 = get_hardware("H200")
    assert h200.peak_flops("fp8") == 2 * h200.peak_flops("bfloat16")
    with pytest.raises(UserError, match="no FP8"):
        get_hardware("A100").peak_flops("fp8")
    with pytest.raises(UserError, match="unknown compute dtype"):
        h200.peak_flops("int4")


def test_relative_orderings() -> None:
    h200, h20, h100, b200 = (get_hardware(n) for n in ("H200", "H20", "H100", "B200"))
    assert h200.peak_bf16_flops == h100.peak_bf16_flops > h20.peak_bf16_flops
    assert h200.hbm_bytes_per_s > h20.hbm_bytes_per_s > h100.hbm_bytes_per_s
    assert b200.peak_bf16_flops > h200.peak_bf16_flops
    assert h200.memory_bytes > h20.memory_bytes > h100.memory_bytes
