"""KV transport across two network namespaces joined by a `tc tbf`-shaped veth (needs root)."""

from __future__ import annotations

import pytest

from prfaas.bench.transport import BenchSpec, run_bench
from prfaas.testbed.netns import NetnsLink, call_in_netns, netns_unavailable_reason
from prfaas.transport.host_tcp import read_host_tcp
from prfaas.transport.link_sizing import size_for_link
from prfaas.types import MIB

pytestmark = pytest.mark.netns

_REASON = netns_unavailable_reason()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@needs_netns
@pytest.mark.slow
def test_transfer_over_a_shaped_link_in_two_processes() -> None:
    spec = BenchSpec(16 * MIB, connections=2, repeats=1, rounds=1, link_gbps=1.0, modes=("kv",))
    result = run_bench(spec)
    # the link is real: the transfer completed and the kernel held it to about 1 Gbit/s
    assert 0.3 < result["goodput_over_link"] < 1.1


@needs_netns
def test_namespaces_are_deleted_even_when_the_body_fails() -> None:
    import subprocess

    with pytest.raises(RuntimeError, match="boom"), NetnsLink(rate_gbps=1.0) as link:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert link.sender_ns in names and link.receiver_ns in names
        raise RuntimeError("boom")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert link.sender_ns not in names and link.receiver_ns not in names


@needs_netns
def test_transfer_over_a_delayed_link_uses_the_sized_settings() -> None:
    """35 ms one way (70 ms RTT) through the delay line at 1 Gbit/s: the sender sizes its
    connections and buffers from the RTT its first connection measured, within the namespace's
    TCP limits, and the transfers complete with them."""
    spec = BenchSpec(16 * MIB, connections=2, repeats=1, rounds=1, link_gbps=1.0,
                     modes=("kv",), delay_ms=35.0)  # fmt: skip
    result = run_bench(spec)
    kv = result["modes"]["kv"]
    assert len(kv["gbps_runs"]) == 1 and kv["gbps"] > 0
    rtt_s = kv["sizing_bdp_bytes"] * 8 / 1e9
    assert 0.070 <= rtt_s < 0.5  # the delay line's round trip, measured by TCP_INFO
    with NetnsLink(rate_gbps=None) as fresh:  # a namespace's TCP limits, as the sender saw them
        host = call_in_netns(fresh.sender_ns, read_host_tcp)
    expected = size_for_link(1.0, rtt_s, host, min_connections=2)
    assert kv["num_connections"] == expected.num_connections > 2
    assert kv["socket_buffer_bytes"] == expected.socket_buffer_bytes
    assert result["delay_line"]["settings"]["delay_ms"] == 35.0
