"""The provider choice against costs and TTFTs worked by hand.

Request: 3600 incremental tokens whose KV is 2e9 bytes.
- a: $4.5/GPU-h, 8 GPUs, T(l) = l/3600 = 1 s, queue 0.5 s, link 1e9 B/s metered at $0.02/GB,
  RTT 0: compute 1 x 8 x 4.5 / 3600 = $0.01, transfer 2 GB x 0.02 = $0.04, total $0.05;
  ttft = max(0.5 + 1, 2e9 / 1e9) + 0 = 2 s.
- b: $9/GPU-h, 8 GPUs, T(l) = l/7200 = 0.5 s, no queue, link 0.5e9 B/s unmetered, RTT 100 ms:
  compute 0.5 x 8 x 9 / 3600 = $0.01, ttft = max(0.5, 4) + 0.1 (the ACK, warm) = 4.1 s.
- local: $1/GPU-h, 8 GPUs, T(l) = l/1800 = 2 s, queue 3 s: $0.004444, ttft 5 s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from prfaas.policy.providers import (
    LOCAL,
    LocalOption,
    ProviderOffer,
    choose_provider,
    quote_provider,
)
from prfaas.policy.transfer import LinkPath, WireState

NUM_TOKENS = 3600
KV_BYTES = 2e9

A = ProviderOffer(
    name="a",
    price_per_gpu_hour=4.5,
    gpus_per_instance=8,
    t_prefill_s=lambda n: n / 3600,
    queue_s=0.5,
    link_bytes_per_s=1e9,
    price_per_gb=0.02,
)
B = ProviderOffer(
    name="b",
    price_per_gpu_hour=9.0,
    gpus_per_instance=8,
    t_prefill_s=lambda n: n / 7200,
    queue_s=0.0,
    link_bytes_per_s=0.5e9,
    path=LinkPath(rtt_s=0.1),
)
LOCAL_PD = LocalOption(
    price_per_gpu_hour=1.0, gpus_per_instance=8, t_prefill_s=lambda n: n / 1800, queue_s=3.0
)


def _choose(offers: list[ProviderOffer], target_s: float) -> tuple[str, str]:
    choice = choose_provider(offers, LOCAL_PD, NUM_TOKENS, KV_BYTES, target_s)
    return choice.target, choice.reason


def test_quotes_match_the_hand_computation() -> None:
    qa, qb = (quote_provider(o, NUM_TOKENS, KV_BYTES) for o in (A, B))
    assert qa.compute_usd == pytest.approx(0.01)
    assert qa.transfer_usd == pytest.approx(0.04)
    assert qa.ttft_s == pytest.approx(2.0)
    assert qb.cost_usd == pytest.approx(0.01)
    assert qb.transfer_usd == 0.0
    assert qb.ttft_s == pytest.approx(4.1)


def test_cheapest_provider_that_meets_the_target_wins_and_names_its_cost() -> None:
    assert _choose([A, B], 5.0) == (
        "b",
        "cheapest: provider b $0.0100 (ttft 4.1 s <= 5 s) vs a $0.0500",
    )


def test_a_cheaper_provider_too_slow_for_the_target_is_passed_over() -> None:
    assert _choose([A, B], 3.0) == (
        "a",
        "cheapest: provider a $0.0500 (ttft 2 s <= 3 s) vs b $0.0100 (ttft 4.1 s > 3 s)",
    )


def test_nothing_meeting_the_target_goes_to_the_lowest_predicted_ttft() -> None:
    """Target 1.5 s: b 4.1 s, a 2 s, local 3 + 2 = 5 s all miss it; a is predicted first."""
    choice = choose_provider([A, B], LOCAL_PD, NUM_TOKENS, KV_BYTES, 1.5)
    assert choice.target == "a"
    assert choice.reason == (
        "fastest: no provider meets ttft 1.5 s (b $0.0100 (ttft 4.1 s), a $0.0500 (ttft 2 s)) "
        "nor local $0.0044 (ttft 5 s); provider a is predicted first"
    )
    assert [q.name for q in choice.quotes] == ["b", "a", LOCAL]
    assert choice.quotes[-1].cost_usd == pytest.approx(2 * 8 * 1.0 / 3600)


def test_local_fallback_when_no_provider_but_local_meets_the_target() -> None:
    """Target 1.5 s: an idle local prefill of 0.5 s meets it while neither provider does."""
    idle_local = LocalOption(
        price_per_gpu_hour=1.0, gpus_per_instance=8, t_prefill_s=lambda n: n / 7200, queue_s=0.0
    )
    choice = choose_provider([A, B], idle_local, NUM_TOKENS, KV_BYTES, 1.5)
    assert choice.target == LOCAL
    assert choice.reason == (
        "local: no provider meets ttft 1.5 s (b $0.0100 (ttft 4.1 s), a $0.0500 (ttft 2 s)); "
        "local $0.0011 (ttft 0.5 s)"
    )


def test_local_is_the_fastest_when_it_is_predicted_first() -> None:
    """Nothing meets 0.1 s; local (queue 0, 1 s) beats a (2 s) and b (4.1 s)."""
    quick_local = LocalOption(
        price_per_gpu_hour=1.0, gpus_per_instance=8, t_prefill_s=lambda n: n / 3600, queue_s=0.0
    )
    choice = choose_provider([A, B], quick_local, NUM_TOKENS, KV_BYTES, 0.1)
    assert choice.target == LOCAL
    assert choice.reason.startswith("fastest: ") and choice.reason.endswith(
        "local is predicted first"
    )


def test_local_fallback_without_providers() -> None:
    target, reason = _choose([], 10.0)
    assert target == LOCAL
    assert "(none offered)" in reason


def test_equal_cost_goes_to_the_lower_ttft_whatever_the_order() -> None:
    # b2: b's cost ($0.01) with a faster link: ttft max(0.5, 2e9/1e9) + 0.1 = 2.1 s
    b2 = replace(B, name="b2", link_bytes_per_s=1e9)
    assert _choose([B, b2], 5.0)[0] == "b2"
    assert _choose([b2, B], 5.0)[0] == "b2"


def test_a_full_tie_goes_to_the_first_name() -> None:
    z = replace(B, name="z")
    assert _choose([z, B], 5.0)[0] == "b"
    assert _choose([B, z], 5.0)[0] == "b"


def test_backlog_and_a_cold_link_add_to_the_ttft() -> None:
    backlogged = replace(A, link_backlog_s=1.0, path=LinkPath(rtt_s=0.01), wire_state=WireState.NEW)
    quote = quote_provider(backlogged, NUM_TOKENS, KV_BYTES)
    # drain 1 + 2 = 3 s; NEW: ACK + handshake (2 x 10 ms) + slow start (positive)
    assert quote.ttft_s > 3.0 + 0.02


@pytest.mark.parametrize(
    ("field", "value"),
    [("price_per_gpu_hour", -1.0), ("price_per_gb", math.nan), ("queue_s", math.inf)],
)
def test_bad_offers_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        replace(A, **{field: value})  # type: ignore[arg-type]


def test_duplicate_names_and_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        choose_provider([A, A], LOCAL_PD, NUM_TOKENS, KV_BYTES, 5.0)
    with pytest.raises(ValueError, match="ttft target"):
        choose_provider([A], LOCAL_PD, NUM_TOKENS, KV_BYTES, 0.0)
