"""The long-timescale controller against decisions worked out by hand: a window of four lengths,
round-number costs, and the threshold update and role change each tick must give.

The other controller tests (and the live/simulator parity and controller-services tests) take
their expected t from `best_threshold`, the code under test; here every number is derived in the
comments from Eqs. 3-8 alone.

Setup. Window: 1000, 1000, 4000, 4000 tokens. PrfaaS prefills 4000 tokens/s per instance, PD-P
1000 tokens/s; KV is 1 byte/token on a 1 GB/s link (never binding); a decode step takes 1 s for
a batch of `batch` requests of 1 output token: Θ_pd-d = N_d x batch req/s. Three PD instances.

Length split at t (P(L > t) = p, means of the long and short sides):
    t < 1000:          p = 1,   l_long = 2500
    1000 <= t < 4000:  p = 0.5, l_long = 4000, l_short = 1000
    t >= 4000:         p = 0,   l_short = 2500
Prefill paths, Θ_prfaas / p and Θ_pd-p / (1 - p), with N_prfaas PrfaaS and N_p PD-P instances:
    t < 1000:          N_prfaas / 0.625 = 1.6 N_prfaas   and inf
    1000 <= t < 4000:  (N_prfaas / 1) / 0.5 = 2 N_prfaas and (N_p / 1) / 0.5 = 2 N_p
    t >= 4000:         inf                               and N_p / 2.5 = 0.4 N_p
Eq. 7 bisects t on [0, 4000] for where the two balance, to within a token, and keeps the end of
the last bracket whose slower path is faster:
    N_prfaas = 1, N_p = 1: 2 = 2 on [1000, 4000): the bracket closes on [999.02, 1000];
        min(1.6, inf) = 1.6 at 999.02 < min(2, 2) = 2 at 1000: t = 1000.
    N_prfaas = 1, N_p = 2: 2 < 4 below 4000, inf above: bracket [3999.0234375, 4000];
        min(2, 4) = 2 there > min(inf, 0.8) at 4000: t = 3999.0234375 (p = 0.5).
    N_prfaas = 2, N_p = 1: 4 > 2 on [1000, 4000), 3.2 < inf below: bracket [999.0234375, 1000];
        min(3.2, inf) = 3.2 at 999.02 > min(4, 2) = 2 at 1000: t = 999.0234375 (p = 1).
    N_prfaas = 2, N_p = 2: 4 = 4 on [1000, 4000): t = 1000.
Λ_max (Eq. 6) = min(both prefill paths at that t, Θ_pd-d) per split N_p / N_d:
    N_prfaas = 1, batch 1:   1/2: min(2, 2, 2) = 2;    2/1: min(2, 4, 1) = 1
    N_prfaas = 2, batch 100: 1/2: min(3.2, 200) = 3.2; 2/1: min(4, 4, 100) = 4
Knobs: 4 samples suffice, one tick of persistence for either rule, 5% gains (the defaults).
"""

from __future__ import annotations

import pytest

from prfaas.policy.controller import (
    AdaptiveController,
    ControlDecision,
    ControllerConfig,
    Measurements,
    PdRole,
    RoleChange,
    ThresholdUpdate,
)
from prfaas.policy.throughput import StageCosts

WINDOW = (1000.0, 1000.0, 4000.0, 4000.0)
CONFIG = ControllerConfig(min_samples=4, persistence_ticks=1, threshold_persistence_ticks=1)
PREFILL, DECODE = PdRole.PD_PREFILL, PdRole.PD_DECODE


def _costs(batch: int) -> StageCosts:
    return StageCosts(
        t_prefill_prfaas_s=lambda n: n / 4000,
        t_prefill_pd_s=lambda n: n / 1000,
        kv_bytes=lambda n: float(n),
        egress_bytes_per_s=1e9,
        max_batch_size=batch,
        t_decode_step_s=1.0,
        num_output_tokens=1.0,
    )


def _first_tick(
    num_prfaas: int, batch: int, t: float, num_pd_p: int, num_pd_d: int
) -> list[ControlDecision]:
    controller = AdaptiveController(CONFIG, _costs(batch), num_prfaas, t)
    for tokens in WINDOW:
        controller.observe(1.0, tokens)
    return controller.tick(30.0, Measurements(1e9, 1.0, 1.0, num_pd_p, num_pd_d))


def _summary(decision: ControlDecision) -> tuple[object, ...]:
    if isinstance(decision, RoleChange):
        return ("roles", decision.from_role, decision.to_role, decision.num_instances)
    assert isinstance(decision, ThresholdUpdate)
    return ("t", decision.old_threshold_tokens, decision.new_threshold_tokens)


@pytest.mark.parametrize(
    ("num_prfaas", "batch", "t", "num_pd_p", "num_pd_d", "decisions"),
    [
        # 1/2 is the best split (2 > 1). At t = 500 everything is offloaded: capacity
        # Θ_prfaas / p = 1.6; Eq. 7's 1000 gives 2, 25% more: t moves
        (1, 1, 500.0, 1, 2, [("t", 500.0, 1000.0)]),
        # t = 2500 gives min(2, 2) = 2, as Eq. 7's 1000 does: nothing to gain, nothing changes
        (1, 1, 2500.0, 1, 2, []),
        # t = 4000 offloads nothing: 0.4 on PD-P; 2 at 1000 is 400% more
        (1, 1, 4000.0, 1, 2, [("t", 4000.0, 1000.0)]),
        # at 2/1 decode binds (Λ_max 1, Θ_pd-d = 1 < prefill 2); 1/2 doubles it: one PD-P
        # becomes PD-D. t = 2500 already gives 1/2 its capacity of 2: t stays
        (1, 1, 2500.0, 2, 1, [("roles", PREFILL, DECODE, 1)]),
        # the same conversion; at t = 4000 the new split's capacity would be 0.4, not 2
        (1, 1, 4000.0, 2, 1, [("roles", PREFILL, DECODE, 1), ("t", 4000.0, 1000.0)]),
        # two PrfaaS instances, fast decode: at 1/2 prefill binds (3.2 < Θ_pd-d 200); 2/1
        # gives 4, 25% more: one PD-D becomes PD-P. At t = 2500, 2/1 runs min(4, 4) = 4 already
        (2, 100, 2500.0, 1, 2, [("roles", DECODE, PREFILL, 1)]),
        # the same, from t = 4000 (0.8 on two PD-P): t moves to 2/1's Eq. 7, 1000
        (2, 100, 4000.0, 1, 2, [("roles", DECODE, PREFILL, 1), ("t", 4000.0, 1000.0)]),
    ],
)
def test_each_window_and_split_gives_the_hand_worked_decisions(
    num_prfaas: int,
    batch: int,
    t: float,
    num_pd_p: int,
    num_pd_d: int,
    decisions: list[tuple[object, ...]],
) -> None:
    got = _first_tick(num_prfaas, batch, t, num_pd_p, num_pd_d)
    assert [_summary(d) for d in got] == decisions


@pytest.mark.parametrize(
    ("num_prfaas", "batch", "t", "num_pd_p", "capacity", "lambda_now", "best_pd_p", "lambda_best"),
    [
        # inputs: capacity of both prefill paths at the t in force (current split), Λ_max of the
        # current split at its Eq. 7 t, and the best split with its Λ_max
        (1, 1, 500.0, 1, 1.6, 2.0, 1, 2.0),
        (1, 1, 4000.0, 2, 0.8, 1.0, 1, 2.0),  # 2/1 at t = 4000: 2 PD-P / 2.5 s = 0.8
        (2, 100, 4000.0, 1, 0.4, 3.2, 2, 4.0),
    ],
)
def test_decisions_carry_the_hand_worked_rates(
    num_prfaas: int,
    batch: int,
    t: float,
    num_pd_p: int,
    capacity: float,
    lambda_now: float,
    best_pd_p: int,
    lambda_best: float,
) -> None:
    inputs = _first_tick(num_prfaas, batch, t, num_pd_p, 3 - num_pd_p)[0].inputs
    assert inputs.num_samples == 4 and inputs.mean_tokens == 2500.0
    assert inputs.prefill_rate_per_s == pytest.approx(capacity)
    assert inputs.lambda_max_per_s == pytest.approx(lambda_now)
    assert inputs.best_num_pd_p == best_pd_p
    assert inputs.best_lambda_max_per_s == pytest.approx(lambda_best)


def test_reasons_quote_the_hand_worked_numbers() -> None:
    change, update = _first_tick(1, 1, 4000.0, 2, 1)
    assert change.reason == (
        "decode binds: prefill 2.000 req/s > decode 1.000 req/s (Eq. 8) for 1 ticks; "
        "N_p/N_d 2/1 -> 1/2 raises Λ_max 1.000 -> 2.000 req/s (best split N_p=1)"
    )
    assert update.reason == (
        "eq7: after role change, 4 lengths (mean 2500), B_out 8 Gbps, N_p=1: t 4000 -> 1000 "
        "raises prefill capacity by 400.0% (0.400 -> 2.000 req/s)"
    )
