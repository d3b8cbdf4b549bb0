"""The long-timescale controller: t moves to Eq. 7's, roles change only after persistence and
cooldown, never below one PD-P and one PD-D, never for PrfaaS, and not at all under a constant
load; every decision carries a reason and its inputs."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.policy.controller import (
    AdaptiveController,
    ControlDecision,
    ControlInputs,
    ControllerConfig,
    DecisionKind,
    Measurements,
    PdRole,
    RoleChange,
    ThresholdUpdate,
    WindowLengths,
    decision_dict,
    prefill_rate,
)
from prfaas.policy.throughput import StageCosts, best_threshold, evaluate
from prfaas.workload import TruncatedLogNormal

# Round-number costs, 2 PrfaaS instances and 6 PD instances. With LONG lengths the best split is
# N_p = 4 (Λ_max 5.53 req/s; N_p = 3: 4.91, N_p = 5: 5.00, decode-bound); with SHORT lengths it is
# N_p = 3 (13.5; N_p = 4: 10.0, decode-bound). At 1 GB/s the PrfaaS path is compute-bound, at
# 20 MB/s egress-bound, which raises Eq. 7's t from about 5.4K to about 20K tokens at N_p = 4.
COSTS = StageCosts(
    t_prefill_prfaas_s=lambda n: 0.2 + n / 10_000,
    t_prefill_pd_s=lambda n: 0.4 + n / 4_000 + n * n / 4e8,
    kv_bytes=lambda n: 1e6 + 1e4 * n,
    egress_bytes_per_s=1e9,
    max_batch_size=10,
    t_decode_step_s=0.02,
    num_output_tokens=100,
)
NUM_PRFAAS, NUM_PD = 2, 6
LONG = TruncatedLogNormal(8.0, 1.0, 100, 50_000)
SHORT = TruncatedLogNormal(6.0, 0.8, 50, 10_000)
PERIOD_S = 30.0
PER_PERIOD = 200  # samples observed per period


def measured(
    num_pd_p: int, egress: float = 1e9, converting: int = 0, num_output_tokens: float = 100
) -> Measurements:
    return Measurements(egress, 0.02, num_output_tokens, num_pd_p, NUM_PD - num_pd_p, converting)


def controller(t: float = 5000.0, **knobs: object) -> AdaptiveController:
    return AdaptiveController(ControllerConfig(**knobs), COSTS, NUM_PRFAAS, t)  # type: ignore[arg-type]


class Loop:
    """Drives a controller like a router would: samples every period, then a tick; applies role
    changes to its own counts at once."""

    def __init__(self, ctl: AdaptiveController, num_pd_p: int, seed: int = 0) -> None:
        self.ctl, self.num_pd_p, self.now = ctl, num_pd_p, 0.0
        self.rng = random.Random(seed)
        self.decisions: list[ControlDecision] = []
        self.num_output_tokens = 100.0  # what the router measures as the mean output length
        self.num_converting = 0  # instances the driver is still draining

    def run(
        self, lengths: TruncatedLogNormal, num_ticks: int, egress: float = 1e9
    ) -> Iterator[list[ControlDecision]]:
        for _ in range(num_ticks):
            for k in range(PER_PERIOD):
                self.ctl.observe(
                    self.now + (k + 1) * PERIOD_S / PER_PERIOD, lengths.sample(self.rng)
                )
            self.now += PERIOD_S
            m = measured(self.num_pd_p, egress, self.num_converting, self.num_output_tokens)
            decisions = self.ctl.tick(self.now, m)
            for d in decisions:
                if isinstance(d, RoleChange):
                    step = d.num_instances if d.to_role is PdRole.PD_PREFILL else -d.num_instances
                    self.num_pd_p += step
            self.decisions += decisions
            yield decisions

    def finish(self, lengths: TruncatedLogNormal, num_ticks: int, egress: float = 1e9) -> None:
        for _ in self.run(lengths, num_ticks, egress):
            pass

    def role_changes(self) -> list[RoleChange]:
        return [d for d in self.decisions if isinstance(d, RoleChange)]

    def threshold_updates(self) -> list[ThresholdUpdate]:
        return [d for d in self.decisions if isinstance(d, ThresholdUpdate)]


def eq7(lengths: TruncatedLogNormal, num_pd_p: int, egress: float = 1e9) -> float:
    costs = StageCosts(**{**_fields(COSTS), "egress_bytes_per_s": egress})
    return best_threshold(costs, lengths, NUM_PRFAAS, num_pd_p, 0.0, lengths.max_tokens)


def _fields(costs: StageCosts) -> dict[str, object]:
    return {name: getattr(costs, name) for name in costs.__dataclass_fields__}


# --- threshold ------------------------------------------------------------------------------------


def capacity(t: float, egress: float) -> float:
    """Both prefill paths' capacity at t on the true LONG distribution (N_p = 4)."""
    costs = StageCosts(**{**_fields(COSTS), "egress_bytes_per_s": egress})
    return prefill_rate(evaluate(costs, LONG, t, NUM_PRFAAS, 4, NUM_PD - 4))


@pytest.mark.parametrize(
    ("start_t", "egress", "t_tolerance"),
    [(100.0, 1e9, 0.1), (40_000.0, 1e9, 0.1), (3000.0, 1e8, None)],
)
def test_threshold_moves_to_eq7_of_the_window_distribution(
    start_t: float, egress: float, t_tolerance: float | None
) -> None:
    """From a far-off t, the controller adopts Eq. 7's t of the window: within 10% of the true
    distribution's t, and within `threshold_min_gain` of its capacity. Egress-bound, Eq. 7's t
    depends on the tail of the window (few offloaded samples), so only the capacity is checked."""
    target = eq7(LONG, 4, egress)
    assert capacity(start_t, egress) < 0.9 * capacity(target, egress)  # a move is needed
    loop = Loop(controller(start_t, persistence_ticks=100), num_pd_p=4)  # roles held
    loop.finish(LONG, 12, egress)
    assert capacity(loop.ctl.threshold_tokens, egress) >= 0.95 * capacity(target, egress)
    if t_tolerance is not None:
        assert loop.ctl.threshold_tokens == pytest.approx(target, rel=t_tolerance)
    assert loop.role_changes() == []
    first = loop.threshold_updates()[0]
    assert first.kind is DecisionKind.THRESHOLD and first.old_threshold_tokens == start_t
    assert first.reason.startswith("eq7:")
    assert loop.ctl.metrics()["prfaas:threshold_tokens"] == loop.ctl.threshold_tokens


def test_link_drop_raises_t() -> None:
    loop = Loop(controller(eq7(LONG, 4)), num_pd_p=4)
    loop.finish(LONG, 10)
    before = loop.ctl.threshold_tokens
    loop.finish(LONG, 4, egress=2e7)  # the measured link capacity drops 50x
    assert loop.ctl.threshold_tokens > 3 * before
    drop = loop.threshold_updates()[-1]
    assert drop.inputs.egress_bytes_per_s == 2e7
    assert "B_out 0.16 Gbps" in drop.reason


@pytest.mark.parametrize(("link_change_share", "per_tick"), [(0.2, [1, 0]), (100.0, [0, 1])])
def test_a_link_capacity_change_moves_t_at_the_first_tick(
    link_change_share: float, per_tick: list[int]
) -> None:
    """After B_out drops 50x, t moves at the very next tick; when a change that size does not
    count as a link change (share 100), only after `threshold_persistence_ticks` (2)."""
    ctl = controller(
        eq7(LONG, 4), min_role_gain=10.0, link_change_share=link_change_share, link_hold_s=0.0
    )
    loop = Loop(ctl, num_pd_p=4)
    loop.finish(LONG, 3)  # at 1 GB/s t is already Eq. 7's: nothing to change
    assert loop.threshold_updates() == []
    assert [len(ds) for ds in loop.run(LONG, 2, egress=2e7)] == per_tick
    update = loop.threshold_updates()[0]
    assert update.new_threshold_tokens > 3 * update.old_threshold_tokens
    assert update.inputs.link_changed == (link_change_share < 1)
    assert ("link capacity changed" in update.reason) == (link_change_share < 1)


def test_a_small_capacity_change_is_not_a_link_change() -> None:
    """B_out moving by less than `link_change_share` (here 10% < 20%) keeps the persistence."""
    ctl = controller(100.0, threshold_persistence_ticks=3)
    loop = Loop(ctl, num_pd_p=4)
    per_tick = [len(ds) for ds in loop.run(LONG, 1)] + [len(ds) for ds in loop.run(LONG, 2, 9e8)]
    assert per_tick == [0, 0, 1]
    assert not loop.threshold_updates()[0].inputs.link_changed


def test_threshold_needs_persistence_unless_a_role_changes() -> None:
    ctl = controller(100.0, threshold_persistence_ticks=3)
    loop = Loop(ctl, num_pd_p=4)
    per_tick = [len(ds) for ds in loop.run(LONG, 3)]
    assert per_tick == [0, 0, 1]


# --- roles ----------------------------------------------------------------------------------------


def test_role_change_only_after_persistence() -> None:
    loop = Loop(controller(eq7(LONG, 1)), num_pd_p=1)  # prefill binds: best split is N_p = 4
    ticks = list(loop.run(LONG, 3))
    assert [any(isinstance(d, RoleChange) for d in ds) for ds in ticks] == [False, False, True]
    change = loop.role_changes()[0]
    assert (change.from_role, change.to_role, change.num_instances) == (
        PdRole.PD_DECODE,
        PdRole.PD_PREFILL,
        1,
    )
    assert change.reason.startswith("prefill binds:")
    assert change.inputs.streak_ticks == 3 and change.inputs.best_num_pd_p == 4
    assert change.inputs.prefill_rate_per_s < change.inputs.decode_rate_per_s
    # t is re-searched for the new split in the same tick
    assert isinstance(ticks[2][-1], ThresholdUpdate)
    assert "after role change" in ticks[2][-1].reason


@pytest.mark.parametrize("link_change_share", [0.2, 100.0])
def test_a_link_capacity_change_takes_the_best_split_at_once(link_change_share: float) -> None:
    """Prefill binds at N_p = 1; the link's capacity then halves: the next tick converts straight
    to the best split (several instances, no persistence). Not counted as a link change: nothing
    yet (one tick of streak out of three)."""
    ctl = controller(eq7(LONG, 1), link_change_share=link_change_share, link_hold_s=0.0)
    loop = Loop(ctl, num_pd_p=1)
    loop.finish(LONG, 1)
    assert loop.role_changes() == []
    loop.finish(LONG, 1, egress=5e8)
    if link_change_share > 1:
        assert loop.role_changes() == []
        return
    (change,) = loop.role_changes()
    best = change.inputs.best_num_pd_p
    assert best - 1 > 1 and change.num_instances == best - 1 and loop.num_pd_p == best
    assert change.reason.startswith("prefill binds: link capacity changed, ")


def _tick_at(
    ctl: AdaptiveController, now: float, num_pd_p: int, egress: float, converting: int = 0
) -> list[str]:
    """Samples up to `now`, one tick; the decisions' kinds."""
    rng = random.Random(int(now))
    for k in range(PER_PERIOD):
        ctl.observe(now - 1.0 + k / PER_PERIOD, LONG.sample(rng))
    return [type(d).__name__ for d in ctl.tick(now, measured(num_pd_p, egress, converting))]


@pytest.mark.parametrize("converting", [False, True])
def test_a_new_link_capacity_is_acted_on_once_it_held_link_hold_s(converting: bool) -> None:
    """Prefill binds at N_p = 1 and t is Eq. 7's: the link halves at 30 s. Nothing moves at that
    tick; the controller asks for a tick at 30 + 20 s, where it takes the best split and its t
    at once (no persistence: it is 10 ticks here, so nothing else could move), even with a
    conversion still under way then."""
    ctl = controller(
        eq7(LONG, 1), link_hold_s=20.0, persistence_ticks=10, threshold_persistence_ticks=10
    )
    assert _tick_at(ctl, 0.0, 1, 1e9) == [] and ctl.wake_at_s() is None
    assert _tick_at(ctl, 30.0, 1, 5e8) == []
    assert ctl.wake_at_s() == 50.0
    assert _tick_at(ctl, 49.0, 1, 5e8) == []  # not yet held long enough
    assert _tick_at(ctl, 50.0, 1, 5e8, converting=int(converting)) == [
        "RoleChange",
        "ThresholdUpdate",
    ]
    assert ctl.wake_at_s() is None


@pytest.mark.parametrize("link_hold_s", [0.0, 20.0])
def test_a_link_capacity_that_returns_within_the_hold_changes_nothing(link_hold_s: float) -> None:
    """The link drops 50x at 30 s and comes back at 40 s. Held 20 s: the hold restarts at 40 s,
    and at 60 s the capacity is the one t was made for: no decision. Not held: t jumps at 30 s."""
    ctl = controller(
        eq7(LONG, 4), min_role_gain=10.0, threshold_min_gain=0.2, link_hold_s=link_hold_s
    )
    _tick_at(ctl, 0.0, 4, 1e9)
    at_drop = _tick_at(ctl, 30.0, 4, 2e7)
    if not link_hold_s:
        assert at_drop == ["ThresholdUpdate"]
        return
    assert at_drop == []
    assert _tick_at(ctl, 40.0, 4, 1e9) == []
    assert ctl.wake_at_s() == 60.0
    assert _tick_at(ctl, 60.0, 4, 1e9) == []
    assert ctl.num_threshold_updates == 0 and ctl.wake_at_s() is None


def test_cooldown_and_conversions_in_progress_hold_the_next_change() -> None:
    ctl = controller(eq7(LONG, 1), persistence_ticks=1, cooldown_s=90.0)
    loop = Loop(ctl, num_pd_p=1)
    changes_at = [
        loop.now for ds in loop.run(LONG, 8) if any(isinstance(d, RoleChange) for d in ds)
    ]
    assert changes_at == [30.0, 120.0, 210.0]  # one per cooldown until N_p = 4
    assert loop.num_pd_p == 4
    busy = Loop(controller(eq7(LONG, 1), persistence_ticks=1), num_pd_p=1)
    busy.num_converting = 1  # the driver is still draining an instance
    busy.finish(LONG, 3)
    assert busy.role_changes() == []
    busy.num_converting = 0
    busy.finish(LONG, 1)
    assert len(busy.role_changes()) == 1


def test_decode_binds_converts_prefill_to_decode() -> None:
    loop = Loop(controller(eq7(SHORT, 5)), num_pd_p=5)
    loop.finish(SHORT, 12)
    assert loop.num_pd_p == 3
    assert all(c.from_role is PdRole.PD_PREFILL for c in loop.role_changes())
    assert all(c.reason.startswith("decode binds:") for c in loop.role_changes())
    assert loop.ctl.metrics()["prfaas:role_changes_total"] == 2


def test_no_flapping_under_constant_load() -> None:
    """200 ticks (100 minutes) at the best split: no role change, t stays near Eq. 7's and moves
    only a few times; from a wrong split the changes all go one way and stop at the best."""
    loop = Loop(controller(eq7(LONG, 4)), num_pd_p=4, seed=3)
    loop.finish(LONG, 200)
    assert loop.role_changes() == []
    assert len(loop.threshold_updates()) <= 6
    assert loop.ctl.threshold_tokens == pytest.approx(eq7(LONG, 4), rel=0.15)
    wrong = Loop(controller(eq7(LONG, 1)), num_pd_p=1, seed=4)
    wrong.finish(LONG, 200)
    assert {c.to_role for c in wrong.role_changes()} == {PdRole.PD_PREFILL}
    assert wrong.num_pd_p == 4 and wrong.ctl.num_role_changes == 3


def test_lengths_shift_resets_the_window_and_changes_roles() -> None:
    loop = Loop(controller(eq7(SHORT, 3)), num_pd_p=3)
    loop.finish(SHORT, 12)
    assert loop.role_changes() == []
    loop.finish(LONG, 1)
    assert len(loop.ctl.window(loop.now)) == PER_PERIOD  # only the lengths since the shift
    loop.finish(LONG, 7)
    assert loop.num_pd_p == 4  # LONG's best split, reached within 8 periods of the shift
    resets = [d.inputs.shift_z for d in loop.decisions if d.inputs.window_reset]
    assert all(z > 5 for z in resets)
    quiet = Loop(controller(eq7(LONG, 4)), num_pd_p=4)
    quiet.finish(LONG, 100)
    assert not any(d.inputs.window_reset for d in quiet.decisions)


def test_minimum_one_pd_p_and_one_pd_d() -> None:
    loop = Loop(controller(5000.0, persistence_ticks=1, cooldown_s=0.0), num_pd_p=2)
    loop.num_output_tokens = 5000  # decode binds hard
    loop.finish(SHORT, 10)
    assert loop.num_pd_p == 1
    huge = TruncatedLogNormal(10.5, 0.3, 10_000, 50_000)  # prefill binds hard
    loop = Loop(controller(30_000.0, persistence_ticks=1, cooldown_s=0.0), num_pd_p=4)
    loop.finish(huge, 10)
    assert loop.num_pd_p == NUM_PD - 1
    with pytest.raises(ValueError):
        ControllerConfig(min_pd_prefill=0)
    with pytest.raises(ValueError):
        measured(NUM_PD)  # no PD-D left


def test_prfaas_never_changes_role() -> None:
    """Whatever the lengths and the link, decisions only ever move PD instances."""
    loop = Loop(controller(5000.0, persistence_ticks=1, cooldown_s=0.0), num_pd_p=3)
    for lengths, egress in ((LONG, 2e7), (SHORT, 1e9), (LONG, 1e9), (SHORT, 1e6)):
        loop.finish(lengths, 5, egress)
    assert loop.role_changes()
    for change in loop.role_changes():
        assert {change.from_role, change.to_role} == {PdRole.PD_PREFILL, PdRole.PD_DECODE}
        assert change.inputs.num_prfaas == NUM_PRFAAS
    assert set(PdRole) == {PdRole.PD_PREFILL, PdRole.PD_DECODE}
    assert loop.ctl.num_prfaas == NUM_PRFAAS


def test_every_decision_has_a_reason_and_its_inputs() -> None:
    loop = Loop(controller(eq7(SHORT, 3)), num_pd_p=3)
    loop.finish(SHORT, 6)
    loop.finish(LONG, 10, egress=2e7)
    assert loop.role_changes() and loop.threshold_updates()
    for d in loop.decisions:
        rule = d.reason.split(":")[0]
        assert rule in {"eq7", "prefill binds", "decode binds"}
        assert isinstance(d.inputs, ControlInputs) and d.inputs.at_s == d.at_s
        assert d.inputs.num_samples >= ControllerConfig().min_samples
        record = json.loads(json.dumps(decision_dict(d)))
        assert record["kind"] == d.kind and record["reason"] == d.reason
        assert "lambda_max_per_s" in record["inputs"]


# --- inputs and invariants ------------------------------------------------------------------------


def test_no_decision_without_enough_samples() -> None:
    ctl = controller(100.0)
    for k in range(10):
        ctl.observe(float(k), 20_000.0)
    assert ctl.tick(30.0, measured(1)) == []
    assert ctl.window(30.0) == [20_000.0] * 10
    assert ctl.window(400.0) == []


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError):
        ControllerConfig(window_s=0)
    with pytest.raises(ValueError):
        ControllerConfig(min_samples=10, max_samples=5)
    with pytest.raises(ValueError):
        Measurements(math.nan, 0.02, 100, 1, 1)
    with pytest.raises(ValueError):
        AdaptiveController(ControllerConfig(), COSTS, 0, 1000.0)
    ctl = controller()
    with pytest.raises(ValueError):
        ctl.observe(1.0, -5)
    ctl.observe(10.0, 5)
    with pytest.raises(ValueError):
        ctl.observe(9.0, 5)  # time went backwards
    with pytest.raises(ValueError):
        WindowLengths([])


def test_window_lengths_match_the_definitions() -> None:
    w = WindowLengths([30.0, 10.0, 20.0, 40.0])
    assert w.prob_greater(20) == 0.5 and w.mean() == 25.0 and w.max_tokens == 40.0
    assert w.mean_between(10, 30) == 25.0 and w.quantile(0.5) == 20.0 and w.quantile(1.0) == 40.0
    with pytest.raises(ValueError):
        w.mean_between(40, 100)


@settings(max_examples=25, deadline=None)
@given(
    mu=st.floats(4.0, 10.0),
    egress=st.sampled_from([1e6, 2e7, 1e9]),
    num_pd_p=st.integers(1, NUM_PD - 1),
    seed=st.integers(0, 1000),
)
def test_decisions_respect_the_invariants(
    mu: float, egress: float, num_pd_p: int, seed: int
) -> None:
    lengths = TruncatedLogNormal(mu, 1.0, 10, 50_000)
    loop = Loop(controller(5000.0, persistence_ticks=1, cooldown_s=0.0), num_pd_p, seed)
    loop.finish(lengths, 4, egress)
    assert 1 <= loop.num_pd_p <= NUM_PD - 1
    for d in loop.decisions:
        if isinstance(d, RoleChange):
            assert d.num_instances == 1 and d.from_role is not d.to_role
        else:
            assert 0 <= d.new_threshold_tokens <= lengths.max_tokens
            point_new = evaluate(COSTS, lengths, d.new_threshold_tokens, NUM_PRFAAS, 1, 1)
            assert point_new.offload_fraction <= 1


def test_configured_minimums_are_never_crossed() -> None:
    """min_pd_decode = 3 of 6: prefill binds on LONG (best N_p = 4), but N_p stops at 3. A split
    that starts outside the minimums is never pushed further out."""
    knobs: dict[str, Any] = {"persistence_ticks": 1, "cooldown_s": 0.0, "min_pd_decode": 3}
    loop = Loop(controller(eq7(LONG, 1), **knobs), num_pd_p=1)
    loop.finish(LONG, 10)
    assert loop.num_pd_p == 3
    outside = Loop(controller(eq7(LONG, 5), **knobs), num_pd_p=5)
    outside.finish(LONG, 10)
    assert all(c.to_role is PdRole.PD_DECODE for c in outside.role_changes())


def test_ticks_off_the_period_do_not_count_towards_persistence() -> None:
    """Prefill binds at N_p = 1 (3 ticks of persistence, one instance per change). A tick the
    driver makes between two periods (a link report at 45 s: a 1% change, not a new capacity)
    decides nothing and does not count: the change comes at the third period tick, 60 s, not
    at the third tick."""
    ctl = controller(eq7(LONG, 1), persistence_ticks=3, threshold_persistence_ticks=10)
    kinds = {at: _tick_at(ctl, at, 1, 1e9 if at != 45.0 else 0.99e9) for at in (0.0, 30.0, 45.0)}
    assert kinds == {0.0: [], 30.0: [], 45.0: []}
    assert "RoleChange" in _tick_at(ctl, 60.0, 1, 1e9)
