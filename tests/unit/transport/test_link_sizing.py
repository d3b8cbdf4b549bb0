"""The transport's sizing rule: connections and socket buffers for a link's bandwidth-delay
product within a host's TCP limits, checked against hand-computed links and hosts."""

from __future__ import annotations

import dataclasses

import pytest
from test_host_tcp import STOCK  # this machine's namespace defaults

from prfaas.transport.link_sizing import size_for_link

MIB = 1 << 20
# a tuned host: autotuning to 64 MiB both ways, core maxima left small
TUNED = dataclasses.replace(
    STOCK, rmem_max_bytes=212992, wmem_max_bytes=212992,
    tcp_rmem_bytes=(4096, 131072, 64 * MIB), tcp_wmem_bytes=(4096, 16384, 64 * MIB),
)  # fmt: skip


def test_stock_host_at_50_ms_uses_fixed_4_mib_buffers() -> None:
    """1 Gbit/s x 50 ms = 6.25 MB in flight; x2 headroom = 12.5 MB. Autotuning gives a window
    of 4 MiB / 2 = 2 MiB, fixed 4 MiB buffers (doubled by the kernel) a window of 4 MiB, so
    the rule takes fixed buffers: ceil(12.5 MB / 4 MiB) = 3 connections, raised to the least
    (4): 16 MiB of window, no warning."""
    sizing = size_for_link(1.0, 0.050, STOCK, min_connections=4)
    assert sizing.bdp_bytes == pytest.approx(6.25e6)
    assert sizing.socket_buffer_bytes == 4 * MIB
    assert sizing.window_per_connection_bytes == 4 * MIB
    assert sizing.num_connections == 4
    assert sizing.warning is None


def test_stock_host_at_100_ms_opens_more_connections() -> None:
    """1 Gbit/s x 100 ms = 12.5 MB; x2 = 25 MB over 4 MiB windows: ceil(5.96) = 6."""
    sizing = size_for_link(1.0, 0.100, STOCK, min_connections=4)
    assert (sizing.num_connections, sizing.socket_buffer_bytes) == (6, 4 * MIB)
    assert sizing.warning is None


def test_tuned_host_keeps_autotuning_and_the_least_connections() -> None:
    """Autotuning to 64 MiB: a 32 MiB window a connection, far above fixed buffers clamped to
    208 KiB; 10 Gbit/s x 50 ms x 2 = 125 MB needs ceil(125e6 / 32 MiB) = 4 connections."""
    sizing = size_for_link(10.0, 0.050, TUNED, min_connections=2)
    assert sizing.socket_buffer_bytes == 0
    assert sizing.window_per_connection_bytes == 32 * MIB
    assert sizing.num_connections == 4


def test_zero_rtt_keeps_the_configured_count() -> None:
    sizing = size_for_link(100.0, 0.0, STOCK, min_connections=2)
    assert sizing.num_connections == 2 and sizing.warning is None


def test_a_short_link_the_autotuned_windows_hold_keeps_autotuning() -> None:
    """1 Gbit/s x 10 ms x 2 = 2.5 MB: 4 autotuned windows of 2 MiB hold it."""
    sizing = size_for_link(1.0, 0.010, STOCK, min_connections=4)
    assert (sizing.num_connections, sizing.socket_buffer_bytes) == (4, 0)


def test_a_host_that_forbids_the_window_is_named_with_the_fix() -> None:
    """10 Gbit/s x 200 ms = 250 MB in flight; 32 connections of 4 MiB hold 128 MiB: the
    warning names the sysctls as `prfaas doctor` prints them."""
    sizing = size_for_link(10.0, 0.200, STOCK, min_connections=4)
    assert sizing.num_connections == 32
    assert sizing.warning is not None
    assert "sysctl -w net.core.rmem_max=" in sizing.warning
    assert "sysctl -w net.core.wmem_max=" in sizing.warning
    assert "250.0 MB" not in sizing.warning and "238.4 MiB in flight" in sizing.warning


def test_unreadable_limits_keep_the_configured_count() -> None:
    blind = dataclasses.replace(
        STOCK, rmem_max_bytes=None, wmem_max_bytes=None, tcp_rmem_bytes=None, tcp_wmem_bytes=None
    )
    sizing = size_for_link(1.0, 0.050, blind, min_connections=3)
    assert (sizing.num_connections, sizing.socket_buffer_bytes) == (3, 0)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="connections"):
        size_for_link(1.0, 0.05, STOCK, min_connections=0)
