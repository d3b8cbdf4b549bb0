"""Plain shared vocabulary: layer kinds, dtypes and their sizes, deployment kinds, unit constants,
the failure policies.

Layer 0: standard library only. Everything above may import it; it imports nothing of the project.
"""

from __future__ import annotations

from enum import StrEnum

MIB = 2**20  # bytes in a MiB, the paper's unit for S_kv
GIB = 2**30
GBPS = 1e9  # bits per second in a Gbps, the paper's unit for Phi_kv
# what a decode instance does with a request whose KV is lost (`[policy] failure`): prefill it
# itself, or end it with an error
RECOMPUTE = "recompute"
FAIL = "fail"
FAILURE_POLICIES = (RECOMPUTE, FAIL)


class LayerKind(StrEnum):
    """What a decoder layer keeps per request, which decides how its state grows with length."""

    FULL_ATTENTION = "full_attention"  # GQA/MHA: K and V for every token
    MLA = "mla"  # multi-head latent attention: one compressed latent (+ rope key) per token
    SLIDING_WINDOW = "sliding_window"  # K and V for the last `window` tokens only
    LINEAR_ATTENTION = "linear_attention"  # Gated DeltaNet / KDA / lightning: fixed recurrent state
    MAMBA = "mamba"  # Mamba1/Mamba2 selective state space: fixed conv + ssm state
    SHORT_CONV = "short_conv"  # LFM2-style short convolution: fixed conv state only
    MLP_ONLY = "mlp_only"  # MLP / MoE block without a token mixer: no state


class DeploymentKind(StrEnum):
    """The three deployments the paper compares."""

    PRFAAS = "prfaas"  # PrfaaS cluster + local PD cluster, threshold routing
    HOMOGENEOUS = "homogeneous"  # one PD cluster of one hardware type
    NAIVE = "naive"  # all prefill remote, all decode local, no threshold


_DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "fp32": 4,
    "float16": 2,
    "fp16": 2,
    "bfloat16": 2,
    "bf16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name ("bfloat16", "bf16", "float32", "fp8", ...)."""
    name = dtype.removeprefix("torch.").lower()
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(_DTYPE_BYTES))}")
    return _DTYPE_BYTES[name]
