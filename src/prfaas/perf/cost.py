"""Roofline cost model of one model instance: T_prefill(l) and T_decode_step(batch, context).

A forward pass takes `overhead_s + max(compute_s, memory_s)`, where

    compute_s = matmul_flops / (P * e_matmul) + attention_flops / (P * e_attention)
    memory_s  = bytes_moved / (B * e_memory)

with P = num_gpus * peak dense FLOP/s and B = num_gpus * HBM bytes/s (tensor parallel across the
instance, communication folded into the efficiencies). The efficiencies are fractions of peak and
are assumed to carry over between GPUs of one family: calibrate them on one profile (say 8xH200)
and the same factors predict another GPU (say 8xH20) through its peak numbers. That assumption
ignores kernels that are tuned differently per GPU and interconnect differences; check it against
a measured profile of the target GPU when one exists.

FLOPs (prompt of l tokens; `body` = active parameters minus embeddings; lm_head on the last token):

    matmul      2 * body * l + 2 * vocab * hidden + l * state_flops_per_token
    attention   sum over softmax layers of 2 * heads * (d_qk + d_v) * pairs(l)
                pairs(l) = l (l + 1) / 2 for full attention / MLA, sum_i min(i, window) for SWA
    state       per linear-attention / SSM layer and token: 2 * H * (2 dk dv + C (dk + dv)),
                the chunked scan with chunk C = 64 (state update, state read, intra-chunk part)

Bytes: the weights a pass touches (MoE: expected distinct experts for that many tokens) times the
stored bytes per weight, plus S_kv written (prefill) or read (decode). Activations are ignored.
Decode attention uses the MLA weight-absorbed form (latent width for QK and PV).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prfaas.models.spec import LayerSpec, ModelSpec
from prfaas.perf.hardware import HardwareSpec
from prfaas.perf.profile import PrefillProfile
from prfaas.types import LayerKind

STATE_CHUNK_TOKENS = 64  # chunk length of the chunked linear-attention / SSD scan
_MAX_BATCH = 1 << 20  # search bound for max_decode_batch


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of peak a deployment reaches, plus fixed per-pass overheads.

    The prefill defaults are `calibrate` on the paper's Table 5 (`paper-1t` on 8xH200, in-house
    vLLM), to three digits: the only published prefill profile. The matmul value is relative to
    paper-1t's assumed 60B active parameters. `memory` and the decode overhead are round
    assumptions, not measurements.
    """

    matmul: float = 0.364  # fraction of peak FLOP/s reached by the dense / MoE GEMMs
    attention: float = 0.377  # fraction of peak FLOP/s reached by softmax attention kernels
    memory: float = 0.8  # fraction of HBM bandwidth reached when memory-bound
    prefill_overhead_s: float = 0.396  # fixed time per prefill (scheduling, launches, collectives)
    decode_overhead_s: float = 0.0  # fixed time per decode step

    def __post_init__(self) -> None:
        for name in ("matmul", "attention", "memory"):
            if not getattr(self, name) > 0:
                raise ValueError(f"efficiency {name} must be > 0")
        if self.prefill_overhead_s < 0 or self.decode_overhead_s < 0:
            raise ValueError("overheads must be >= 0")


# ---------------------------------------------------------------------------- FLOP / byte counts


def _attention_pairs(num_tokens: int, window: int) -> int:
    """Causal query-key pairs of a prompt: l(l+1)/2, or sum_i min(i, window) for a window."""
    if window <= 0 or num_tokens <= window:
        return num_tokens * (num_tokens + 1) // 2
    return window * (window + 1) // 2 + (num_tokens - window) * window


def _state_flops_per_token(layer: LayerSpec) -> int:
    if layer.kind not in (LayerKind.LINEAR_ATTENTION, LayerKind.MAMBA):
        return 0
    dk, dv = layer.state_key_dim, layer.state_value_dim
    return 2 * layer.num_state_heads * (2 * dk * dv + STATE_CHUNK_TOKENS * (dk + dv))


def _softmax_layers(model: ModelSpec) -> list[LayerSpec]:
    kinds = (LayerKind.FULL_ATTENTION, LayerKind.MLA, LayerKind.SLIDING_WINDOW)
    return [layer for layer in model.layers if layer.kind in kinds]


def _body_params(model: ModelSpec) -> int:
    return max(model.num_active_params - model.num_embedding_params, 0)


def prefill_matmul_flops(model: ModelSpec, num_tokens: int) -> float:
    """Projection, MLP/MoE and linear-state FLOPs of one prompt (linear in its length)."""
    state = sum(_state_flops_per_token(layer) for layer in model.layers)
    lm_head = 2 * model.vocab_size * model.hidden_size
    return float(2 * _body_params(model) * num_tokens + lm_head + state * num_tokens)


def prefill_attention_flops(model: ModelSpec, num_tokens: int) -> float:
    """Softmax-attention score and value FLOPs of one prompt (quadratic in its length)."""
    total = 0
    for layer in _softmax_layers(model):
        pairs = _attention_pairs(num_tokens, layer.window)
        total += 2 * layer.num_q_heads * (layer.head_dim_k + layer.head_dim_v) * pairs
    return float(total)


def params_touched(model: ModelSpec, num_tokens: int) -> float:
    """Expected weights read by one pass over `num_tokens` tokens (MoE: distinct experts hit)."""
    routed = model.num_routed_expert_params
    if routed == 0 or num_tokens <= 0:
        return float(model.num_total_params)
    if model.num_experts and model.num_experts_per_tok:
        fraction = model.num_experts_per_tok / model.num_experts
    else:
        fraction = model.num_active_params / model.num_total_params
    shared = model.num_total_params - routed
    hit = 1.0 - (1.0 - fraction) ** num_tokens
    return shared + routed * hit


def decode_step_flops(model: ModelSpec, batch_size: int, context_tokens: int) -> float:
    """One decode step of `batch_size` sequences that each hold `context_tokens` tokens."""
    state = sum(_state_flops_per_token(layer) for layer in model.layers)
    lm_head = model.vocab_size * model.hidden_size
    per_seq = 2 * (_body_params(model) + lm_head) + state
    for layer in _softmax_layers(model):
        visible = min(context_tokens, layer.window) if layer.window else context_tokens
        if layer.kind is LayerKind.MLA:
            width = 2 * layer.kv_lora_rank + layer.qk_rope_head_dim  # absorbed QK + PV
        else:
            width = layer.head_dim_k + layer.head_dim_v
        per_seq += 2 * layer.num_q_heads * width * visible
    return float(per_seq * batch_size)


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class CostModel:
    """Latency of one instance of `num_gpus` GPUs of `hardware` serving `model`."""

    model: ModelSpec
    hardware: HardwareSpec
    num_gpus: int
    efficiency: Efficiency = Efficiency()
    compute_dtype: str = "bfloat16"  # "bfloat16" or "fp8": which peak the GEMMs run at
    kv_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ValueError(f"num_gpus must be >= 1, got {self.num_gpus}")

    @property
    def peak_flops(self) -> float:
        return self.num_gpus * self.hardware.peak_flops(self.compute_dtype)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.num_gpus * self.hardware.hbm_bytes_per_s

    def prefill_compute_s(self, num_tokens: int) -> float:
        eff = self.efficiency
        matmul = prefill_matmul_flops(self.model, num_tokens) / (self.peak_flops * eff.matmul)
        attention = prefill_attention_flops(self.model, num_tokens) / self.peak_flops
        return matmul + attention / eff.attention

    def prefill_memory_s(self, num_tokens: int) -> float:
        weights = params_touched(self.model, num_tokens) * self.model.weight_bytes_per_param
        moved = weights + self.model.kv_bytes(num_tokens, self.kv_dtype)
        return moved / (self.hbm_bytes_per_s * self.efficiency.memory)

    def t_prefill_s(self, num_tokens: int) -> float:
        """Prefill latency of one prompt of `num_tokens` tokens, seconds."""
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        busy = max(self.prefill_compute_s(num_tokens), self.prefill_memory_s(num_tokens))
        return self.efficiency.prefill_overhead_s + busy

    def t_decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode step for `batch_size` sequences of `context_tokens` tokens each, seconds."""
        if batch_size < 1 or context_tokens < 0:
            raise ValueError("batch_size must be >= 1 and context_tokens >= 0")
        eff = self.efficiency
        flops = decode_step_flops(self.model, batch_size, context_tokens)
        compute = flops / (self.peak_flops * eff.matmul)
        weights = params_touched(self.model, batch_size) * self.model.weight_bytes_per_param
        cache = batch_size * self.model.kv_bytes(context_tokens, self.kv_dtype)
        memory = (weights + cache) / (self.hbm_bytes_per_s * eff.memory)
        return eff.decode_overhead_s + max(compute, memory)

    def on(self, hardware: HardwareSpec, num_gpus: int | None = None) -> CostModel:
        """The same model and efficiencies on other hardware (the transfer assumption)."""
        return replace(self, hardware=hardware, num_gpus=num_gpus or self.num_gpus)

    def fits_in_memory(self, batch_size: int, context_tokens: int, utilization: float) -> bool:
        """Whether weights plus `batch_size` requests of state fit in `utilization` of HBM."""
        weights = self.model.num_total_params * self.model.weight_bytes_per_param
        cache = batch_size * self.model.kv_bytes(context_tokens, self.kv_dtype)
        return weights + cache <= utilization * self.num_gpus * self.hardware.memory_bytes

    def max_decode_batch(
        self, context_tokens: int, max_step_s: float, memory_utilization: float = 0.9
    ) -> int:
        """BS_max of the paper's Eq. 5: the largest batch whose decode step takes at most
        `max_step_s` (the decode SLO, e.g. 1/40 s for 40 tokens/s) and whose weights and
        per-request state fit in `memory_utilization` of the instance's memory. 0 if none."""
        if max_step_s <= 0 or not 0 < memory_utilization <= 1:
            raise ValueError("max_step_s must be > 0 and memory_utilization in (0, 1]")

        def ok(batch: int) -> bool:
            fast_enough = self.t_decode_step_s(batch, context_tokens) <= max_step_s
            return fast_enough and self.fits_in_memory(batch, context_tokens, memory_utilization)

        if not ok(1):
            return 0
        low, high = 1, 2
        while ok(high):  # step time and memory both grow with the batch
            low, high = high, high * 2
            if high > _MAX_BATCH:
                return low
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if ok(mid) else (low, mid)
        return low

    def max_relative_error(self, profile: PrefillProfile) -> float:
        """Largest |predicted / measured - 1| over the profile's rows."""
        return max(
            abs(self.t_prefill_s(n) / t - 1.0)
            for n, t in zip(profile.lengths, profile.latencies_s, strict=True)
        )


# ---------------------------------------------------------------------------- calibration


def calibrate(
    model: ModelSpec,
    hardware: HardwareSpec,
    num_gpus: int,
    profile: PrefillProfile,
    *,
    base: Efficiency = Efficiency(),
    compute_dtype: str = "bfloat16",
) -> CostModel:
    """Fit the prefill overhead and the matmul / attention efficiencies to a measured profile.

    Model: T_i = overhead + M_i / e_matmul + A_i / e_attention, with M_i and A_i the ideal
    (peak-rate) matmul and attention seconds of row i. Solved by non-negative least squares on
    relative error (each row weighted by 1/T_i). If the profile cannot separate the two
    efficiencies (too few rows, or a non-positive coefficient), one shared efficiency is fitted;
    if the overhead comes out negative it is fixed at 0. Memory efficiency and the decode
    overhead keep their `base` values (a prefill profile does not measure them).
    """
    model_now = CostModel(model, hardware, num_gpus, base, compute_dtype)
    peak = model_now.peak_flops
    matmul = [prefill_matmul_flops(model, n) / peak for n in profile.lengths]
    attention = [prefill_attention_flops(model, n) / peak for n in profile.lengths]
    memory = [model_now.prefill_memory_s(n) for n in profile.lengths]
    memory_bound = [False] * len(matmul)
    for _ in range(_MAX_REFITS):
        overhead, inv_matmul, inv_attention = _fit(
            matmul, attention, memory, list(profile.latencies_s), memory_bound
        )
        fitted = replace(
            base,
            matmul=1.0 / inv_matmul,
            attention=1.0 / inv_attention,
            prefill_overhead_s=overhead,
        )
        model_now = replace(model_now, efficiency=fitted)
        bound = [
            model_now.prefill_memory_s(n) > model_now.prefill_compute_s(n) for n in profile.lengths
        ]
        if bound == memory_bound:
            break
        memory_bound = bound
    return model_now


_MAX_REFITS = 5


def _fit(
    m: list[float], a: list[float], mem: list[float], t: list[float], memory_bound: list[bool]
) -> tuple[float, float, float]:
    """(overhead, 1/e_matmul, 1/e_attention) >= 0, trying the richest model that stays valid.

    Rows flagged memory-bound contribute `t - mem = overhead` only; at least two compute-bound
    rows are needed.
    """
    rows = [i for i in range(len(t)) if not memory_bound[i]]
    if len(rows) < 2:
        rows = list(range(len(t)))
    fixed = [i for i in range(len(t)) if i not in rows]
    target = [t[i] for i in rows] + [t[i] - mem[i] for i in fixed]
    if len(rows) >= 3 and any(a[i] for i in rows):
        design = [[1.0, m[i], a[i]] for i in rows] + [[1.0, 0.0, 0.0] for _ in fixed]
        coef = _weighted_lstsq(design, target)
        if coef[0] >= 0 and coef[1] > 0 and coef[2] > 0:
            return coef[0], coef[1], coef[2]
    combined = [[1.0, m[i] + a[i]] for i in rows] + [[1.0, 0.0] for _ in fixed]
    overhead, inv = _weighted_lstsq(combined, target)
    if inv <= 0:
        raise ValueError("profile latencies do not grow with the model's FLOPs; cannot calibrate")
    if overhead < 0:
        overhead = 0.0
        (inv,) = _weighted_lstsq([[m[i] + a[i]] for i in rows], [t[i] for i in rows])
    return overhead, inv, inv


def _weighted_lstsq(design: list[list[float]], target: list[float]) -> list[float]:
    """Least squares of design @ x ~ target with weights 1/target (relative error)."""
    k = len(design[0])
    scaled = [[v / y for v in row] for row, y in zip(design, target, strict=True)]
    normal = [[sum(r[i] * r[j] for r in scaled) for j in range(k)] for i in range(k)]
    rhs = [sum(r[i] for r in scaled) for i in range(k)]
    return _solve(normal, rhs)


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting on a small dense system."""
    n = len(rhs)
    aug = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(aug[r][col]))
        if abs(aug[pivot][col]) < 1e-300:
            raise ValueError("calibration system is singular: the profile rows are degenerate")
        aug[col], aug[pivot] = aug[pivot], aug[col]
        for r in range(col + 1, n):
            factor = aug[r][col] / aug[col][col]
            aug[r] = [x - factor * y for x, y in zip(aug[r], aug[col], strict=True)]
    solution = [0.0] * n
    for r in range(n - 1, -1, -1):
        rest = sum(aug[r][c] * solution[c] for c in range(r + 1, n))
        solution[r] = (aug[r][n] - rest) / aug[r][r]
    return solution
