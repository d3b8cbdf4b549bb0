"""`choose_kv_codec`: a configured codec codes every offloaded request; "auto" picks fp8 exactly
while the link view says the link binds (utilization, or a backlog that takes long to drain) and
the prefill instance encodes fp8 at least as fast as the link delivers (its goodput: capacity
less retransmissions), and none otherwise; KV that stays in the PD cluster is never coded."""

from __future__ import annotations

import math

import pytest

from prfaas.policy import CompressionRule, LinkView, choose_kv_codec

GBPS_BYTES_PER_S = 1e9 / 8
RULE = CompressionRule()


def _link(utilization: float, backlog_s: float = 0.0, retransmit_rate: float = 0.0) -> LinkView:
    """A 1 Gbit/s link whose backlog takes `backlog_s` to drain at full capacity (longer when
    part of what is sent is retransmitted)."""
    backlog_bytes = backlog_s * GBPS_BYTES_PER_S
    return LinkView(GBPS_BYTES_PER_S, utilization, backlog_bytes, retransmit_rate=retransmit_rate)


@pytest.mark.parametrize(
    ("link", "rule_name"),
    [
        (_link(0.8), "auto-link-bound"),  # at the utilization boundary
        (_link(0.97), "auto-link-bound"),
        (_link(0.1, backlog_s=0.1), "auto-link-bound"),  # at the backlog boundary
        (_link(0.0, backlog_s=3.0), "auto-link-bound"),  # fell behind (a drop) while idle-looking
        (_link(0.1, backlog_s=0.06, retransmit_rate=0.5), "auto-link-bound"),  # lossy: 0.12 s
    ],
)
def test_auto_picks_fp8_while_the_link_binds(link: LinkView, rule_name: str) -> None:
    choice = choose_kv_codec("auto", True, link)
    assert choice.kv_codec == "fp8"
    assert choice.reason.startswith(f"{rule_name}: ")


@pytest.mark.parametrize(
    "link",
    [
        _link(0.0),  # idle link of the configured capacity (before the first transfer)
        _link(0.79),  # just under the utilization boundary
        _link(0.5, backlog_s=0.099),  # just under the backlog boundary
    ],
)
def test_auto_leaves_the_kv_exact_while_the_link_does_not_bind(link: LinkView) -> None:
    choice = choose_kv_codec("auto", True, link)
    assert choice.kv_codec == "none"
    assert choice.reason.startswith("auto-link-free: utilization ")


def test_auto_without_a_link_view_and_a_dead_link() -> None:
    assert choose_kv_codec("auto", True, None).kv_codec == "none"
    dead = LinkView(GBPS_BYTES_PER_S, 0.0, 1.0, retransmit_rate=1.0)
    assert math.isinf(dead.drain_s())
    assert choose_kv_codec("auto", True, dead).kv_codec == "fp8"


@pytest.mark.parametrize("compression", ["none", "fp8", "int4-rotated"])
def test_a_configured_codec_codes_every_offloaded_request(compression: str) -> None:
    for link in (None, _link(0.0), _link(1.0, backlog_s=5.0)):
        choice = choose_kv_codec(compression, True, link)
        assert choice.kv_codec == compression
        assert choice.reason == f"configured: [transport] compression = {compression}"


@pytest.mark.parametrize("compression", ["fp8", "int4-rotated", "auto"])
def test_kv_that_stays_in_the_pd_cluster_is_never_coded(compression: str) -> None:
    choice = choose_kv_codec(compression, False, _link(1.0, backlog_s=5.0))
    assert choice.kv_codec == "none"
    assert choice.reason.startswith("local: ")


def test_the_rule_refuses_meaningless_boundaries() -> None:
    with pytest.raises(ValueError, match="binding_utilization"):
        CompressionRule(binding_utilization=0.0)
    with pytest.raises(ValueError, match="binding_backlog_s"):
        CompressionRule(binding_backlog_s=math.nan)
    tight = CompressionRule(binding_utilization=0.5, binding_backlog_s=1.0)
    assert choose_kv_codec("auto", True, _link(0.6), tight).kv_codec == "fp8"
    assert choose_kv_codec("auto", True, _link(0.4, backlog_s=0.5), tight).kv_codec == "none"


# ---- "auto" and the codec's encode rate: the link's goodput is 1 Gbit/s = 0.125 GB/s ----------


def test_auto_leaves_the_kv_exact_where_the_codec_encodes_slower_than_the_link() -> None:
    choice = choose_kv_codec("auto", True, _link(0.9), auto_encode_bytes_per_s=0.1e9)
    assert choice.kv_codec == "none"
    assert choice.reason == (
        "auto-codec-slower: fp8 encodes 0.100 GB/s < link 0.125 GB/s (utilization 0.90 >= 0.80)"
    )


def test_auto_codes_where_the_codec_keeps_up_with_the_link() -> None:
    at_the_link = choose_kv_codec("auto", True, _link(0.9), auto_encode_bytes_per_s=0.125e9)
    assert at_the_link.kv_codec == "fp8"
    assert at_the_link.reason == "auto-link-bound: utilization 0.90 >= 0.80"
    unlimited = choose_kv_codec("auto", True, _link(0.9))  # an engine that does not code
    assert unlimited.kv_codec == "fp8"


def test_the_link_goodput_leaves_out_retransmissions() -> None:
    """Half of what is sent is retransmitted: the link delivers 0.0625 GB/s, which a codec at
    0.1 GB/s outpaces, and the backlog of 0.06 s at capacity drains in 0.12 s (binding)."""
    lossy = _link(0.1, backlog_s=0.06, retransmit_rate=0.5)
    choice = choose_kv_codec("auto", True, lossy, auto_encode_bytes_per_s=0.1e9)
    assert choice.kv_codec == "fp8"
    assert choice.reason == "auto-link-bound: backlog drains in 0.120 s >= 0.100 s"
    slower = choose_kv_codec("auto", True, lossy, auto_encode_bytes_per_s=0.05e9)
    assert slower.reason == (
        "auto-codec-slower: fp8 encodes 0.050 GB/s < link 0.062 GB/s "
        "(backlog drains in 0.120 s >= 0.100 s)"
    )


def test_the_encode_rate_matters_only_where_auto_would_code() -> None:
    slow = 1e6  # bytes/s
    assert choose_kv_codec(
        "auto", True, _link(0.3), auto_encode_bytes_per_s=slow
    ).reason.startswith("auto-link-free: ")
    assert choose_kv_codec("fp8", True, _link(0.9), auto_encode_bytes_per_s=slow).kv_codec == "fp8"
    assert choose_kv_codec(
        "auto", False, _link(0.9), auto_encode_bytes_per_s=slow
    ).reason.startswith("local: ")
    with pytest.raises(ValueError, match="auto_encode_bytes_per_s"):
        choose_kv_codec("auto", True, _link(0.9), auto_encode_bytes_per_s=math.nan)
