"""Hardware presets and the prefill/decode cost model (roofline + calibration from profiles).

Layer 1: standard library only. Latency sources for the planner, simulator and `prfaas kv`:
a measured `PrefillProfile` (interpolated) or a `CostModel` (roofline, optionally calibrated).
"""

from prfaas.perf.cost import (
    CostModel,
    Efficiency,
    calibrate,
    decode_step_flops,
    params_touched,
    prefill_attention_flops,
    prefill_matmul_flops,
)
from prfaas.perf.hardware import HARDWARE, HardwareSpec, get_hardware, list_hardware
from prfaas.perf.profile import PrefillProfile, list_profiles, load_profile, profile_from_rows

__all__ = [
    "HARDWARE",
    "CostModel",
    "Efficiency",
    "HardwareSpec",
    "PrefillProfile",
    "calibrate",
    "decode_step_flops",
    "get_hardware",
    "list_hardware",
    "list_profiles",
    "load_profile",
    "params_touched",
    "prefill_attention_flops",
    "prefill_matmul_flops",
    "profile_from_rows",
]
