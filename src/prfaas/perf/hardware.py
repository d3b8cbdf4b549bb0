"""Accelerator presets: peak dense FLOP/s, HBM bandwidth, memory and NIC bandwidth per GPU.

Numbers are vendor datasheet values for the SXM (or stated) part, dense (no 2:4 sparsity), in SI
units: FLOP/s, bytes/s, bytes. NIC is the scale-out network bandwidth per GPU (one NIC per GPU in
the usual 8-GPU node). Knows nothing about models or time.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.errors import UserError

TERA = 1e12
GBIT_PER_S = 1e9 / 8  # bytes/s in one Gbit/s


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One accelerator (per GPU, not per node)."""

    name: str
    peak_bf16_flops: float  # dense BF16 tensor-core FLOP/s
    peak_fp8_flops: float | None  # dense FP8 tensor-core FLOP/s; None: no FP8 tensor cores
    hbm_bytes_per_s: float  # device memory bandwidth, bytes/s
    memory_bytes: float  # device memory capacity, bytes
    nic_bytes_per_s: float  # scale-out NIC bandwidth per GPU, bytes/s
    gpus_per_node: int = 8

    def peak_flops(self, dtype: str = "bfloat16") -> float:
        """Dense peak FLOP/s for matmuls in `dtype` ("bfloat16"/"float16" or "fp8")."""
        name = dtype.lower()
        if name in ("bfloat16", "bf16", "float16", "fp16"):
            return self.peak_bf16_flops
        if name in ("fp8", "float8", "float8_e4m3fn", "float8_e5m2"):
            if self.peak_fp8_flops is None:
                raise UserError(f"{self.name} has no FP8 tensor cores")
            return self.peak_fp8_flops
        raise UserError(f"unknown compute dtype {dtype!r}; use bfloat16 or fp8")


HARDWARE: dict[str, HardwareSpec] = {
    # NVIDIA H200 SXM datasheet: BF16 1,979 / FP8 3,958 TFLOPS with sparsity -> half dense;
    # 141 GB HBM3e at 4.8 TB/s. NIC: ConnectX-7 400 Gb/s per GPU (HGX H200 reference node).
    "H200": HardwareSpec("H200", 989.5 * TERA, 1979 * TERA, 4.8e12, 141e9, 400 * GBIT_PER_S),
    # NVIDIA H100 SXM datasheet: BF16 1,979 / FP8 3,958 TFLOPS sparse; 80 GB HBM3 at 3.35 TB/s.
    "H100": HardwareSpec("H100", 989.5 * TERA, 1979 * TERA, 3.35e12, 80e9, 400 * GBIT_PER_S),
    # H800 SXM: H100 compute and memory with NVLink cut to 400 GB/s; 400 Gb/s NIC per GPU.
    "H800": HardwareSpec("H800", 989.5 * TERA, 1979 * TERA, 3.35e12, 80e9, 400 * GBIT_PER_S),
    # NVIDIA H20: BF16 148 / FP8 296 TFLOPS dense; 96 GB HBM3 at 4.0 TB/s. NIC: the paper's
    # PD cluster has 800 Gb/s RDMA per 8-GPU node, i.e. 100 Gb/s per GPU.
    "H20": HardwareSpec("H20", 148 * TERA, 296 * TERA, 4.0e12, 96e9, 100 * GBIT_PER_S),
    # NVIDIA HGX B200 datasheet: 72 PFLOPS FP8 / 36 PFLOPS BF16 sparse per 8 GPUs -> 4.5 / 2.25
    # PFLOPS dense per GPU; 1,440 GB HBM3e per 8 GPUs (180 GB) at 8 TB/s; ConnectX-7 400 Gb/s.
    "B200": HardwareSpec("B200", 2250 * TERA, 4500 * TERA, 8.0e12, 180e9, 400 * GBIT_PER_S),
    # NVIDIA A100 SXM 80GB datasheet: BF16 312 TFLOPS dense, no FP8; HBM2e 2,039 GB/s;
    # DGX A100: one 200 Gb/s HDR InfiniBand NIC per GPU.
    "A100": HardwareSpec("A100", 312 * TERA, None, 2.039e12, 80e9, 200 * GBIT_PER_S),
    # NVIDIA L40S datasheet: BF16 362.05 / FP8 733 TFLOPS dense (733 / 1,466 sparse); 48 GB GDDR6
    # at 864 GB/s. PCIe card: the 200 Gb/s NIC per GPU is an assumed server build, not a spec.
    "L40S": HardwareSpec("L40S", 362.05 * TERA, 733 * TERA, 864e9, 48e9, 200 * GBIT_PER_S),
}


def list_hardware() -> list[str]:
    return sorted(HARDWARE)


def get_hardware(name: str) -> HardwareSpec:
    """A hardware preset by name, case-insensitive ("h200", "H20", ...)."""
    key = name.strip().upper()
    if key not in HARDWARE:
        raise UserError(f"unknown hardware {name!r}; known: {', '.join(list_hardware())}")
    return HARDWARE[key]
