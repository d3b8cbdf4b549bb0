"""The long-timescale controller (§3.4.3): re-search t and convert PD instances between roles.

Pure and sans-IO like the rest of `prfaas.policy`: the driver (live router or simulator) feeds it
the incremental length of every routed request (`observe`) and, once a period, what it measured
(`tick(now, Measurements)`); `tick` returns the decisions to carry out, as immutable data. It reads
no clock: `now` is always a parameter.

Each tick, over the sliding window of recent incremental lengths (an empirical length model) and
the measured rates (link capacity B_out, decode step time, mean output length, prefill speed
against the profile):

0. *Window.* Samples older than `window_s` leave it. When the lengths seen since the previous tick
   differ from the older ones by at least `shift_z` standard errors (Welch's z on the mean
   log-length), the older ones are dropped, so a shift in traffic is acted on within a few periods
   instead of after a whole window.

1. *Roles (Eq. 8).* For every split N_p + N_d = const with at least `min_pd_prefill` and
   `min_pd_decode`, Eq. 7's t and Eq. 6's Λ_max. When the best split beats the current one by at
   least `min_role_gain` (prefill binds: Θ_prfaas + Θ_pd-p < Θ_pd-d, the best split has more PD-P;
   decode binds: the reverse), for `persistence_ticks` consecutive period ticks in the same
   direction (a tick the driver makes between periods, for a link report or a hold's end, does
   not count: `_COUNTED_SHARE`), outside the `cooldown_s` after the previous change and with no
   conversion in progress, convert up to `max_instances_per_change` instances one way
   (`RoleChange`). When the link's capacity
   moved by `link_change_share` or more and has held `link_hold_s` since, the best split is
   taken at once and whole (no persistence, no cooldown, no per-change limit, and conversions
   still under way, counted in their new roles, do not hold it back): the change is
   real, not sampling noise, and a link that fell to a tenth cannot wait minutes for the split it
   needs. The hold keeps a short drop from converting anything (a capacity that changes again
   restarts it); `wake_at_s` tells the driver when to tick for it, before the next period. The
   gain margin is the hysteresis: a change and its reverse cannot both clear it on the same
   lengths, so roles do not flap under a constant load. PrfaaS instances are never converted.
2. *Threshold (Eq. 7).* The t that balances the two prefill paths for the (new) split. It is
   adopted (`ThresholdUpdate`) only when it raises the prefill paths' capacity
   min(Θ_prfaas / p, Θ_pd-p / (1 - p)) by at least `threshold_min_gain` over the current t, in the
   same direction for `threshold_persistence_ticks` period ticks, so sampling noise in the
   window rarely moves t under a constant load, while a link drop or a shift in lengths does. It
   is adopted at once after a role change, and when a new link capacity has held `link_hold_s`:
   a capacity change is not sampling noise, and the driver ticks as soon as it learns of one (the
   router when told the link's new rate, the simulator at a bandwidth step) and at `wake_at_s`,
   instead of waiting for the period.

Every decision carries a `reason` (its rule, then the numbers) and `inputs`, the snapshot it was
computed from. The knobs, the measurements and the decision types are `prfaas.policy.control_types`,
the window as a length model `prfaas.policy.window_lengths` (both re-exported here).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from prfaas.policy.control_types import (
    ControlDecision,
    ControlInputs,
    ControllerConfig,
    DecisionKind,
    Measurements,
    PdRole,
    RoleChange,
    ThresholdUpdate,
    decision_dict,
)
from prfaas.policy.throughput import (
    StageCosts,
    StagePoint,
    best_threshold,
    evaluate,
    lambda_max,
    scaled_curve,
)
from prfaas.policy.window_lengths import WindowLengths

_COUNTED_SHARE = 0.9  # a tick counts towards the streaks this share of a period after the last

__all__ = [  # the types live in control_types; importers may take them from here
    "AdaptiveController",
    "ControlDecision",
    "ControlInputs",
    "ControllerConfig",
    "DecisionKind",
    "Measurements",
    "PdRole",
    "RoleChange",
    "SplitPlan",
    "ThresholdUpdate",
    "WindowLengths",
    "decision_dict",
    "measured_costs",
    "prefill_rate",
]


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """One candidate split at Eq. 7's t."""

    num_pd_p: int
    num_pd_d: int
    threshold_tokens: float  # Eq. 7's t for this split
    point: StagePoint  # Eqs. 3-6 at that t


def prefill_rate(point: StagePoint) -> float:
    """Capacity of the two prefill paths together: Eq. 6 without the decode term."""
    return lambda_max(
        point.theta_prfaas_per_s, point.theta_pd_p_per_s, math.inf, point.offload_fraction
    )


def _mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and sample variance (n - 1) of at least two values."""
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def measured_costs(costs: StageCosts, measured: Measurements) -> StageCosts:
    """The profiled stage costs with the measured link, decode and prefill rates swapped in."""
    return replace(
        costs,
        t_prefill_pd_s=scaled_curve(costs.t_prefill_pd_s, measured.prefill_time_scale_pd),
        t_prefill_prfaas_s=scaled_curve(
            costs.t_prefill_prfaas_s, measured.prefill_time_scale_prfaas
        ),
        egress_bytes_per_s=measured.egress_bytes_per_s,
        t_decode_step_s=measured.t_decode_step_s,
        num_output_tokens=measured.num_output_tokens,
    )


class AdaptiveController:
    """State of the long-timescale loop: the window, the threshold in force, the persistence
    streak and the time of the last conversion. See the module docstring for the rules."""

    def __init__(
        self,
        config: ControllerConfig,
        costs: StageCosts,
        num_prfaas: int,
        threshold_tokens: float,
    ) -> None:
        if num_prfaas < 1:
            raise ValueError(f"the controller needs a PrfaaS cluster, got {num_prfaas} instances")
        if not (math.isfinite(threshold_tokens) and threshold_tokens >= 0):
            raise ValueError(f"threshold_tokens must be finite and >= 0, got {threshold_tokens}")
        self.config = config
        self.costs = costs
        self.num_prfaas = num_prfaas
        self.threshold_tokens = float(threshold_tokens)
        self.num_role_changes = 0  # instances converted so far (prfaas:role_changes_total)
        self.num_threshold_updates = 0
        self._samples: deque[tuple[float, float]] = deque()  # (time, incremental tokens)
        self._streak_direction = 0  # +1: toward more PD-P, -1: toward more PD-D, 0: none
        self._streak_ticks = 0
        self._t_direction = 0  # +1: Eq. 7 wants a higher t, -1: lower, 0: t is fine
        self._t_streak_ticks = 0
        self._last_change_at: float | None = None
        self._last_time = -math.inf
        self._last_tick_s = -math.inf
        self._last_counted_s = -math.inf  # the last tick that counted towards the streaks
        self._last_egress_bytes_per_s: float | None = None  # B_out at the previous tick
        self._link_changed_at: float | None = None  # a capacity change not yet acted on by roles

    # --- inputs -----------------------------------------------------------------------------

    def observe(self, now: float, num_incremental_tokens: float) -> None:
        """One routed request's incremental length (prompt minus its best usable prefix)."""
        self._advance(now)
        if not (math.isfinite(num_incremental_tokens) and num_incremental_tokens >= 0):
            raise ValueError(f"incremental length must be >= 0, got {num_incremental_tokens}")
        self._samples.append((now, float(num_incremental_tokens)))
        if len(self._samples) > self.config.max_samples:
            self._samples.popleft()

    def window(self, now: float) -> list[float]:
        """The incremental lengths in the window at `now`."""
        lo = now - self.config.window_s
        return [tokens for at, tokens in self._samples if at > lo]

    def metrics(self) -> dict[str, float]:
        """The controller's gauges and counters, under their exported names."""
        return {
            "prfaas:threshold_tokens": self.threshold_tokens,
            "prfaas:role_changes_total": float(self.num_role_changes),
        }

    # --- the tick ---------------------------------------------------------------------------

    def tick(self, now: float, measured: Measurements) -> list[ControlDecision]:
        """Decide at `now`: at most one role change, then at most one threshold update."""
        self._advance(now)
        self._prune(now)
        shift_z = self._shift_z()
        window_reset = abs(shift_z) >= self.config.shift_z
        if window_reset:
            while self._samples and self._samples[0][0] <= self._last_tick_s:
                self._samples.popleft()
        self._last_tick_s = now
        counted = now - self._last_counted_s >= _COUNTED_SHARE * self.config.period_s
        if counted:
            self._last_counted_s = now
        link_changed = self._link_changed(measured.egress_bytes_per_s)
        if link_changed:
            self._link_changed_at = now
        link_settled = self._link_settled(now)
        if link_settled:
            self._link_changed_at = None  # answered now, or by the usual rules from here on
        values = [tokens for _, tokens in self._samples]
        if len(values) < self.config.min_samples or max(values) <= 0:
            self._streak_direction, self._streak_ticks = 0, 0
            self._t_direction, self._t_streak_ticks = 0, 0
            return []
        lengths = WindowLengths(values)
        costs = measured_costs(self.costs, measured)
        plans = self._plans(costs, lengths, measured.num_pd_p + measured.num_pd_d)
        current = plans[measured.num_pd_p]
        best = max(
            self._allowed(plans.values(), current),
            key=lambda p: (p.point.lambda_max_per_s, -abs(p.num_pd_p - current.num_pd_p)),
        )
        direction = self._direction(current, best)
        if counted:
            self._update_streak(direction)
        inputs = self._inputs(
            now, measured, lengths, costs, current, best, shift_z, window_reset, link_changed
        )
        decisions: list[ControlDecision] = []
        target = current
        change = self._role_change(
            now, measured, current, best, plans, inputs, link_settled, direction, counted
        )
        if change is not None:
            decisions.append(change[0])
            target = change[1]
        update = self._threshold_update(
            now, costs, lengths, target, inputs, change is not None, link_settled, counted
        )
        if update is not None:
            decisions.append(update)
        return decisions

    def _inputs(
        self,
        now: float,
        measured: Measurements,
        lengths: WindowLengths,
        costs: StageCosts,
        current: SplitPlan,
        best: SplitPlan,
        shift_z: float,
        window_reset: bool,
        link_changed: bool,
    ) -> ControlInputs:
        in_force = evaluate(
            costs,
            lengths,
            self.threshold_tokens,
            self.num_prfaas,
            current.num_pd_p,
            current.num_pd_d,
        )
        return ControlInputs(
            at_s=now,
            num_samples=len(lengths),
            mean_tokens=lengths.mean(),
            p90_tokens=lengths.quantile(0.9),
            egress_bytes_per_s=measured.egress_bytes_per_s,
            t_decode_step_s=measured.t_decode_step_s,
            num_output_tokens=measured.num_output_tokens,
            num_prfaas=self.num_prfaas,
            num_pd_p=measured.num_pd_p,
            num_pd_d=measured.num_pd_d,
            num_converting=measured.num_converting,
            threshold_tokens=self.threshold_tokens,
            prefill_rate_per_s=prefill_rate(in_force),
            decode_rate_per_s=in_force.theta_pd_d_per_s,
            lambda_max_per_s=current.point.lambda_max_per_s,
            best_num_pd_p=best.num_pd_p,
            best_lambda_max_per_s=best.point.lambda_max_per_s,
            streak_ticks=self._streak_ticks,
            shift_z=shift_z,
            window_reset=window_reset,
            link_changed=link_changed,
        )

    def _link_changed(self, egress_bytes_per_s: float) -> bool:
        """Whether B_out moved by `link_change_share` or more since the previous tick."""
        last, self._last_egress_bytes_per_s = self._last_egress_bytes_per_s, egress_bytes_per_s
        if last is None:
            return False
        return abs(egress_bytes_per_s / last - 1.0) >= self.config.link_change_share

    def _link_settled(self, now: float) -> bool:
        """A capacity change has held `link_hold_s` and the roles have not answered it."""
        at = self._link_changed_at
        return at is not None and now - at >= self.config.link_hold_s

    def wake_at_s(self) -> float | None:
        """When the driver should tick before its period: once a capacity change it holds has
        lasted `link_hold_s`; None when none is held."""
        at, hold_s = self._link_changed_at, self.config.link_hold_s
        return None if at is None or hold_s <= 0 else at + hold_s

    def _advance(self, now: float) -> None:
        if not math.isfinite(now) or now < self._last_time:
            raise ValueError(f"time must be finite and not go backwards: {now} < {self._last_time}")
        self._last_time = now

    def _shift_z(self) -> float:
        """Welch's z of the mean log-length since the last tick against the older samples
        (log: lengths are heavy-tailed, their logs close to normal); 0 with too few samples."""
        recent = [math.log1p(x) for at, x in self._samples if at > self._last_tick_s]
        older = [math.log1p(x) for at, x in self._samples if at <= self._last_tick_s]
        if min(len(recent), len(older)) < self.config.min_shift_samples:
            return 0.0
        (m1, v1), (m2, v2) = _mean_var(recent), _mean_var(older)
        se = math.sqrt(v1 / len(recent) + v2 / len(older))
        if se == 0:
            return 0.0 if m1 == m2 else math.copysign(math.inf, m1 - m2)
        return (m1 - m2) / se

    def _prune(self, now: float) -> None:
        lo = now - self.config.window_s
        while self._samples and self._samples[0][0] <= lo:
            self._samples.popleft()

    def _plans(
        self, costs: StageCosts, lengths: WindowLengths, num_pd: int
    ) -> dict[int, SplitPlan]:
        """Eq. 7's t and Eq. 6's Λ_max for every split with one PD-P and one PD-D at least."""
        plans = {}
        for num_pd_p in range(1, num_pd):
            t = best_threshold(costs, lengths, self.num_prfaas, num_pd_p, 0.0, lengths.max_tokens)
            point = evaluate(costs, lengths, t, self.num_prfaas, num_pd_p, num_pd - num_pd_p)
            plans[num_pd_p] = SplitPlan(num_pd_p, num_pd - num_pd_p, t, point)
        return plans

    def _allowed(self, plans: Iterable[SplitPlan], current: SplitPlan) -> list[SplitPlan]:
        """The splits within `min_pd_prefill` / `min_pd_decode`, and the current one."""
        cfg = self.config
        return [
            p
            for p in plans
            if p is current
            or (p.num_pd_p >= cfg.min_pd_prefill and p.num_pd_d >= cfg.min_pd_decode)
        ]

    def _direction(self, current: SplitPlan, best: SplitPlan) -> int:
        """+1 (more PD-P) or -1 (more PD-D) when the best split beats the current one by
        `min_role_gain`, else 0."""
        gain_needed = (1 + self.config.min_role_gain) * current.point.lambda_max_per_s
        if best.point.lambda_max_per_s >= gain_needed and best.num_pd_p != current.num_pd_p:
            return 1 if best.num_pd_p > current.num_pd_p else -1
        return 0

    def _update_streak(self, direction: int) -> None:
        if direction == 0 or direction != self._streak_direction:
            self._streak_ticks = 0
        self._streak_direction = direction
        if direction != 0:
            self._streak_ticks += 1

    def _role_change(
        self,
        now: float,
        measured: Measurements,
        current: SplitPlan,
        best: SplitPlan,
        plans: dict[int, SplitPlan],
        inputs: ControlInputs,
        link_settled: bool,
        direction: int,
        counted: bool,
    ) -> tuple[RoleChange, SplitPlan] | None:
        """The conversion due now and the split it leads to, or None. Once a new link capacity
        has held, the best split is taken at once, whole: no persistence, no cooldown, and the
        conversions still under way (counted in their new roles) do not hold it back."""
        cfg = self.config
        if not link_settled:  # the usual rule, on the period's ticks only
            direction = self._streak_direction
            if not counted or direction == 0 or measured.num_converting > 0:
                return None
            if self._streak_ticks < cfg.persistence_ticks:
                return None
            if self._last_change_at is not None and now - self._last_change_at < cfg.cooldown_s:
                return None
        if direction == 0:
            return None
        distance = abs(best.num_pd_p - current.num_pd_p)
        step = distance if link_settled else min(cfg.max_instances_per_change, distance)
        target = plans[current.num_pd_p + direction * step]
        num = abs(target.num_pd_p - current.num_pd_p)
        grow_prefill = direction > 0
        side = "prefill binds" if grow_prefill else "decode binds"
        why = "link capacity changed, " if link_settled else ""
        sign = "<" if grow_prefill else ">"
        reason = (
            f"{side}: {why}prefill {prefill_rate(current.point):.3f} req/s {sign} decode "
            f"{current.point.theta_pd_d_per_s:.3f} req/s (Eq. 8) for {self._streak_ticks} ticks; "
            f"N_p/N_d {current.num_pd_p}/{current.num_pd_d} -> {target.num_pd_p}/"
            f"{target.num_pd_d} raises Λ_max {current.point.lambda_max_per_s:.3f} -> "
            f"{target.point.lambda_max_per_s:.3f} req/s (best split N_p={best.num_pd_p})"
        )
        from_role, to_role = PdRole.PD_DECODE, PdRole.PD_PREFILL
        if not grow_prefill:
            from_role, to_role = to_role, from_role
        self._last_change_at = now
        self._streak_direction, self._streak_ticks = 0, 0
        self.num_role_changes += num
        return RoleChange(now, from_role, to_role, num, reason, inputs), target

    def _threshold_update(
        self,
        now: float,
        costs: StageCosts,
        lengths: WindowLengths,
        target: SplitPlan,
        inputs: ControlInputs,
        after_role_change: bool,
        link_settled: bool,
        counted: bool,
    ) -> ThresholdUpdate | None:
        kept = evaluate(
            costs,
            lengths,
            self.threshold_tokens,
            self.num_prfaas,
            target.num_pd_p,
            target.num_pd_d,
        )
        gain = prefill_rate(target.point) / prefill_rate(kept) - 1 if prefill_rate(kept) else 1.0
        direction = 0
        if gain >= self.config.threshold_min_gain:
            direction = 1 if target.threshold_tokens > self.threshold_tokens else -1
        at_once = after_role_change or link_settled
        if not (counted or at_once):  # a tick off the period: it moves t only at once
            return None
        if direction == 0 or direction != self._t_direction:
            self._t_streak_ticks = 0
        self._t_direction = direction
        if direction == 0:
            return None
        self._t_streak_ticks += 1
        needed = 1 if at_once else self.config.threshold_persistence_ticks
        if self._t_streak_ticks < needed:
            return None
        self._t_direction, self._t_streak_ticks = 0, 0
        old = self.threshold_tokens
        new = target.threshold_tokens
        why = "after role change, " if after_role_change else ""
        if link_settled:
            why += "link capacity changed, "
        if inputs.window_reset:
            why += f"lengths shifted (z={inputs.shift_z:.1f}, older samples dropped), "
        reason = (
            f"eq7: {why}{len(lengths)} lengths (mean {lengths.mean():.0f}), "
            f"B_out {costs.egress_bytes_per_s * 8 / 1e9:.3g} Gbps, N_p={target.num_pd_p}: "
            f"t {old:.0f} -> {new:.0f} raises prefill capacity by {gain:.1%} "
            f"({prefill_rate(kept):.3f} -> {prefill_rate(target.point):.3f} req/s)"
        )
        self.threshold_tokens = new
        self.num_threshold_updates += 1
        return ThresholdUpdate(now, old, new, reason, inputs)
