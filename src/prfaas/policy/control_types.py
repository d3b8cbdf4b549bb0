"""What the long-timescale controller (`prfaas.policy.controller`) is configured with, what it
reads from its driver and what it decides: `ControllerConfig` (the knobs), `Measurements` (the
driver's measured rates and the PD roles now), `ControlInputs` (the snapshot a tick decided
from), and the decisions `ThresholdUpdate` and `RoleChange` (`ControlDecision`), immutable, each
with its reason and inputs, and `decision_dict` for logs. Pure data: no clock, I/O or policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class PdRole(StrEnum):
    """Role of an instance of the local PD cluster."""

    PD_PREFILL = "pd_prefill"
    PD_DECODE = "pd_decode"


class DecisionKind(StrEnum):
    """What a controller decision changes."""

    THRESHOLD = "threshold"
    ROLE_CHANGE = "role_change"


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Knobs of the long-timescale controller. Times in seconds, gains as shares (0.05 = 5%)."""

    period_s: float = 30.0  # the driver calls tick() this often
    window_s: float = 300.0  # incremental lengths older than this leave the window
    max_samples: int = 4096  # and at most this many (the most recent) stay in it
    min_samples: int = 50  # fewer samples in the window: no decision
    threshold_min_gain: float = 0.05  # adopt a new t only if prefill capacity rises this much
    min_role_gain: float = 0.05  # convert only if Λ_max of the better split is this much higher
    persistence_ticks: int = 3  # the same conversion must be best for this many ticks in a row
    threshold_persistence_ticks: int = 2  # t must be off the same way for this many ticks
    cooldown_s: float = 60.0  # no conversion within this long after the previous one
    max_instances_per_change: int = 1  # instances converted by one decision
    shift_z: float = 5.0  # lengths shifted: the last period's mean log-length is this many
    #                       standard errors from the rest of the window's (inf: never)
    min_shift_samples: int = 20  # ...with at least this many samples on each side
    min_pd_prefill: int = 1  # no conversion leaves fewer PD-P instances than this
    min_pd_decode: int = 1  # no conversion leaves fewer PD-D instances than this
    link_change_share: float = 0.2  # B_out moved this much since the last tick: a new capacity
    link_hold_s: float = 25.0  # act on a new capacity (t and roles at once) once it held this long

    def __post_init__(self) -> None:
        for name in ("period_s", "window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not self.shift_z > 0:
            raise ValueError(f"shift_z must be > 0, got {self.shift_z}")
        for name in (
            "threshold_min_gain",
            "min_role_gain",
            "cooldown_s",
            "link_change_share",
            "link_hold_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        for name in (
            "max_samples",
            "min_samples",
            "persistence_ticks",
            "threshold_persistence_ticks",
            "max_instances_per_change",
            "min_shift_samples",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_pd_prefill", "min_pd_decode"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (one PD-P and one PD-D at least)")
        if self.min_samples > self.max_samples:
            raise ValueError(
                f"min_samples ({self.min_samples}) must be <= max_samples ({self.max_samples})"
            )


@dataclass(frozen=True, slots=True)
class Measurements:
    """What the driver measured over the last period, and the PD cluster's roles now.

    Instances being converted count in their *new* role; `num_converting` says how many are
    still draining. The prefill time scales are measured time / profiled time (1.0: as profiled).
    """

    egress_bytes_per_s: float  # B_out: the link's capacity as measured now, bytes/s
    t_decode_step_s: float  # decode step time at a full batch, seconds
    num_output_tokens: float  # mean output length of recent requests, tokens
    num_pd_p: int  # PD-P instances (converting ones by their new role)
    num_pd_d: int  # PD-D instances (converting ones by their new role)
    num_converting: int = 0  # PD instances still draining for a role change
    prefill_time_scale_pd: float = 1.0  # measured / profiled prefill time on PD-P
    prefill_time_scale_prfaas: float = 1.0  # measured / profiled prefill time on PrfaaS

    def __post_init__(self) -> None:
        for name in ("egress_bytes_per_s", "t_decode_step_s", "num_output_tokens"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Measurements.{name} must be finite and > 0, got {value}")
        for name in ("prefill_time_scale_pd", "prefill_time_scale_prfaas"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Measurements.{name} must be finite and > 0, got {value}")
        if self.num_pd_p < 1 or self.num_pd_d < 1:
            raise ValueError(
                f"need at least one PD-P and one PD-D, got {self.num_pd_p} / {self.num_pd_d}"
            )
        if self.num_converting < 0:
            raise ValueError(f"num_converting must be >= 0, got {self.num_converting}")


@dataclass(frozen=True, slots=True)
class ControlInputs:
    """The snapshot one tick decided from (rates in requests/s, lengths in tokens)."""

    at_s: float  # the tick's time
    num_samples: int  # incremental lengths in the window
    mean_tokens: float  # their mean
    p90_tokens: float  # their 90th percentile
    egress_bytes_per_s: float  # measured B_out
    t_decode_step_s: float  # measured decode step
    num_output_tokens: float  # measured mean output length
    num_prfaas: int  # PrfaaS instances (fixed)
    num_pd_p: int  # PD-P now
    num_pd_d: int  # PD-D now
    num_converting: int  # conversions in progress
    threshold_tokens: float  # t in force before this tick
    prefill_rate_per_s: float  # min(Θ_prfaas/p, Θ_pd-p/(1-p)) now, at the current t
    decode_rate_per_s: float  # Θ_pd-d now
    lambda_max_per_s: float  # Eq. 6 now (current split, Eq. 7's t)
    best_num_pd_p: int  # the split with the highest Λ_max
    best_lambda_max_per_s: float  # its Λ_max
    streak_ticks: int  # consecutive ticks the same conversion has been best
    shift_z: float  # the last period's mean log-length vs the window's, in standard errors
    window_reset: bool  # |shift_z| crossed the limit: the older samples were dropped
    link_changed: bool  # B_out moved by link_change_share or more since the last tick


@dataclass(frozen=True, slots=True)
class ThresholdUpdate:
    """Set the routing threshold t to `new_threshold_tokens`."""

    at_s: float  # simulated or wall time of the tick that decided it
    old_threshold_tokens: float
    new_threshold_tokens: float
    reason: str  # "<rule>: <numbers>"
    inputs: ControlInputs
    kind: DecisionKind = field(default=DecisionKind.THRESHOLD, init=False)


@dataclass(frozen=True, slots=True)
class RoleChange:
    """Convert `num_instances` PD instances from `from_role` to `to_role` (drain, switch,
    re-register); the driver picks which ones."""

    at_s: float
    from_role: PdRole
    to_role: PdRole
    num_instances: int
    reason: str
    inputs: ControlInputs
    kind: DecisionKind = field(default=DecisionKind.ROLE_CHANGE, init=False)


ControlDecision = ThresholdUpdate | RoleChange


def decision_dict(decision: ControlDecision) -> dict[str, Any]:
    """A decision as plain JSON-ready data (for logs and the simulator's summary)."""
    return asdict(decision)
