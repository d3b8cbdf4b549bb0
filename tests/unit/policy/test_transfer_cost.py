"""The transfer cost model (`prfaas.policy.transfer`) against hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest

from prfaas.policy.transfer import (
    LinkPath,
    WireState,
    draw_jitter_s,
    effective_bandwidth_bytes_per_s,
    mathis_bytes_per_s,
    transfer_time_s,
    wire_state,
)

# 100 MB over 10 Gbit/s (1.25e9 B/s of wire) at 50 ms RTT, efficiency 0.9, two connections.
NUM_BYTES = 100e6
WIRE_BYTES_PER_S = 10e9 / 8
PATH = LinkPath(rtt_s=0.050, payload_efficiency=0.9)


def test_warm_transfer_is_bytes_at_goodput_plus_one_rtt() -> None:
    # goodput 0.9 x 1.25e9 = 1.125e9 B/s: 1e8 / 1.125e9 = 0.088889 s, plus the 50 ms ACK
    assert transfer_time_s(NUM_BYTES, WIRE_BYTES_PER_S, PATH) == pytest.approx(0.1388889, abs=1e-6)


def test_cold_transfer_adds_handshake_and_slow_start_by_hand() -> None:
    # per connection: 5e7 B at 5.625e8 B/s; BDP = 2.8125e7 B; W0 = 10 x 1448 = 14,480 B.
    # BDP / W0 = 1942.3 -> 11 doublings; 5e7 / W0 + 1 = 3454 -> 12 rounds to send, so the ramp
    # lasts 11 rounds: 11 x 0.05 - 14,480 x (2^11 - 1) / 5.625e8 = 0.55 - 0.0526943 = 0.4973057 s
    ramp_s = 0.55 - 14_480 * 2047 / 5.625e8
    idle = transfer_time_s(NUM_BYTES, WIRE_BYTES_PER_S, PATH, WireState.IDLE)
    new = transfer_time_s(NUM_BYTES, WIRE_BYTES_PER_S, PATH, WireState.NEW)
    assert idle == pytest.approx(0.0888889 + 0.05 + ramp_s, abs=1e-6)
    assert new == pytest.approx(0.0888889 + 0.10 + ramp_s, abs=1e-6)
    assert new == pytest.approx(0.6861946, abs=1e-6)


def test_a_transfer_inside_the_first_window_has_no_ramp() -> None:
    small = 2 * 10 * 1448  # one initial window per connection
    assert transfer_time_s(small, WIRE_BYTES_PER_S, PATH, WireState.IDLE) == pytest.approx(
        small / 1.125e9 + 0.05
    )


def test_defaults_cost_bytes_over_share_exactly() -> None:
    ideal = LinkPath()
    assert transfer_time_s(NUM_BYTES, WIRE_BYTES_PER_S, ideal, WireState.NEW) == (
        NUM_BYTES / WIRE_BYTES_PER_S
    )
    assert effective_bandwidth_bytes_per_s(WIRE_BYTES_PER_S, ideal) == WIRE_BYTES_PER_S


def test_loss_caps_goodput_at_the_mathis_bound_per_connection() -> None:
    lossy = LinkPath(rtt_s=0.050, loss_rate=0.001, payload_efficiency=0.9)
    # 1448 / (0.05 x sqrt(2 x 0.001 / 3)) = 1,121,621 B/s per connection, two connections
    per_connection = 1448 / (0.05 * math.sqrt(0.002 / 3))
    assert mathis_bytes_per_s(lossy) == pytest.approx(per_connection)
    assert effective_bandwidth_bytes_per_s(WIRE_BYTES_PER_S, lossy) == pytest.approx(
        2 * per_connection
    )
    assert effective_bandwidth_bytes_per_s(WIRE_BYTES_PER_S, lossy, num_flows=4) == pytest.approx(
        8 * per_connection
    )
    warm = transfer_time_s(NUM_BYTES, WIRE_BYTES_PER_S, lossy)
    assert warm == pytest.approx(NUM_BYTES / (2 * per_connection) + 0.05)


def test_cold_rule_new_idle_warm() -> None:
    assert wire_state(None, 5.0, False, PATH) is WireState.NEW
    assert wire_state(4.9, 5.0, False, PATH) is WireState.WARM  # 100 ms < 200 ms minimum RTO
    assert wire_state(4.7, 5.0, False, PATH) is WireState.IDLE
    assert wire_state(0.0, 5.0, True, PATH) is WireState.WARM  # busy: never idle
    long_rtt = LinkPath(rtt_s=0.5)
    assert wire_state(4.7, 5.0, False, long_rtt) is WireState.WARM  # idle 300 ms < one RTT


@pytest.mark.parametrize("distribution", ["normal", "pareto", "uniform"])
def test_jitter_comes_from_the_given_rng_and_is_non_negative(distribution: str) -> None:
    path = LinkPath(rtt_s=0.05, jitter_s=0.01, jitter_distribution=distribution)
    a = [draw_jitter_s(path, random.Random(7)) for _ in range(3)]
    rng = random.Random(7)
    b = [draw_jitter_s(path, rng) for _ in range(200)]
    assert a[0] == a[1] == a[2] == b[0]
    assert min(b) >= 0
    assert 0.004 < sum(b) / len(b) < 0.02  # half-normal 0.8 x 10 ms; Lomax 10 ms; uniform 5 ms
    if distribution == "uniform":
        assert max(b) <= 0.01
    assert draw_jitter_s(LinkPath(), random.Random(7)) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rtt_s": -0.001},
        {"rtt_s": math.nan},
        {"rtt_s": math.inf},
        {"jitter_s": -1.0},
        {"loss_rate": 1.0},
        {"loss_rate": -0.1},
        {"loss_rate": math.nan},
        {"payload_efficiency": 0.0},
        {"payload_efficiency": 1.1},
        {"payload_efficiency": math.nan},
        {"jitter_distribution": "gamma"},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LinkPath(**kwargs)  # type: ignore[arg-type]
