"""KV transport across two network namespaces joined by a `tc tbf`-shaped veth (needs root)."""

from __future__ import annotations

import pytest

from prfaas.bench.transport import BenchSpec, run_bench
from prfaas.testbed.netns import NetnsLink, netns_unavailable_reason
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
