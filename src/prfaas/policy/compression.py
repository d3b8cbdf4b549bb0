"""Which KV codec an offloaded request's attention K/V cross the link with: the pure rule.

`[transport] compression` names a codec (`prfaas.models.kv_codec`) or "auto". A codec applies to
every offloaded request (its KV crosses the inter-cluster link); KV that stays inside the PD
cluster always travels exact. "auto" compresses only while the link, not compute, limits the
deployment: the request's K/V are coded `fp8` when the router's link view says the link binds,
and travel exact otherwise. The link binds when either holds:

- the measured egress utilization is at least `binding_utilization` (0.8): the link carries
  close to its capacity, so every byte saved is throughput gained;
- the KV already queued on the link (the backlog: accepted, not delivered) takes at least
  `binding_backlog_s` (0.1 s) to drain at capacity less retransmissions: the link has fallen
  behind, and a new request's KV would wait behind it.

On an idle or lightly used link the codec would only spend compute and accuracy for bytes the
link moves anyway, so "auto" leaves them exact.

Even on a binding link, "auto" codes only where the codec keeps up with the link: the prefill
instance codes each layer's K/V on its engine thread while the transport sends the layers before
it, so a codec that encodes slower than the link delivers makes coding, not the link, the
request's bottleneck (docs/benchmarks.md, "KV codecs": one CPU thread codes fp8 at 0.2-1.4 GB/s,
a 10 Gbit/s link moves 1.25 GB/s). The rate compared is the prefill instance's own (uncoded
bytes per second, measured once at its start on a tensor of its model's K shape and reported in
its stats; `math.inf` where the engine does not code, as an emulated one) against the link's
goodput, its capacity less the share spent on retransmissions. Below it the KV travels exact.

Every choice carries a reason starting with its rule's name (`configured`, `local`,
`auto-link-bound`, `auto-link-free`, `auto-no-link`, `auto-codec-slower`), as a route decision
does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prfaas.models.kv_codec import COMPRESSION_AUTO, KV_CODEC_NONE
from prfaas.policy.views import LinkView

AUTO_KV_CODEC = "fp8"  # what "auto" codes with while the link binds


@dataclass(frozen=True, slots=True)
class CompressionRule:
    """When "auto" counts the link as binding."""

    binding_utilization: float = 0.8  # measured egress / capacity at or above which it binds
    binding_backlog_s: float = 0.1  # backlog drain time (s) at or above which it binds

    def __post_init__(self) -> None:
        if not 0 < self.binding_utilization <= 1:
            raise ValueError(
                f"binding_utilization must be in (0, 1], got {self.binding_utilization}"
            )
        if math.isnan(self.binding_backlog_s) or self.binding_backlog_s <= 0:
            raise ValueError(f"binding_backlog_s must be > 0, got {self.binding_backlog_s}")


@dataclass(frozen=True, slots=True)
class CodecChoice:
    """The codec of one request's attention K/V and why ("<rule>: <details>")."""

    kv_codec: str
    reason: str


def choose_kv_codec(
    compression: str,
    offloaded: bool,
    link: LinkView | None,
    rule: CompressionRule = CompressionRule(),
    auto_encode_bytes_per_s: float = math.inf,
) -> CodecChoice:
    """The codec of a request's K/V under `[transport] compression` = `compression`: none unless
    `offloaded` (its KV crosses the inter-cluster link); the configured codec; or, for "auto",
    `AUTO_KV_CODEC` while `link` binds and the prefill instance encodes it at
    `auto_encode_bytes_per_s` (uncoded bytes/s) at least as fast as the link's goodput, none
    otherwise (see the module docstring)."""
    if math.isnan(auto_encode_bytes_per_s) or auto_encode_bytes_per_s < 0:
        raise ValueError(f"auto_encode_bytes_per_s must be >= 0, got {auto_encode_bytes_per_s}")
    if not offloaded:
        return CodecChoice(KV_CODEC_NONE, "local: the KV stays inside the PD cluster")
    if compression != COMPRESSION_AUTO:
        return CodecChoice(compression, f"configured: [transport] compression = {compression}")
    if link is None:
        return CodecChoice(KV_CODEC_NONE, "auto-no-link: no measured link to judge")
    bound = _link_bound_reason(link, rule)
    if bound is None:
        return _link_free(link, rule)
    goodput_bytes_per_s = link.bandwidth_bytes_per_s * (1.0 - link.retransmit_rate)
    if auto_encode_bytes_per_s < goodput_bytes_per_s:
        return CodecChoice(
            KV_CODEC_NONE,
            f"auto-codec-slower: {AUTO_KV_CODEC} encodes "
            f"{auto_encode_bytes_per_s / 1e9:.3f} GB/s < link {goodput_bytes_per_s / 1e9:.3f} "
            f"GB/s ({bound})",
        )
    return CodecChoice(AUTO_KV_CODEC, f"auto-link-bound: {bound}")


def _link_bound_reason(link: LinkView, rule: CompressionRule) -> str | None:
    """Why the link binds ("utilization 0.90 >= 0.80"); None while it does not."""
    utilization, backlog_s = link.utilization, link.drain_s()
    if utilization >= rule.binding_utilization:
        return f"utilization {utilization:.2f} >= {rule.binding_utilization:.2f}"
    if backlog_s >= rule.binding_backlog_s:
        return f"backlog drains in {backlog_s:.3f} s >= {rule.binding_backlog_s:.3f} s"
    return None


def _link_free(link: LinkView, rule: CompressionRule) -> CodecChoice:
    utilization, backlog_s = link.utilization, link.drain_s()
    return CodecChoice(
        KV_CODEC_NONE,
        f"auto-link-free: utilization {utilization:.2f} < {rule.binding_utilization:.2f}, "
        f"backlog drains in {backlog_s:.3f} s < {rule.binding_backlog_s:.3f} s",
    )
