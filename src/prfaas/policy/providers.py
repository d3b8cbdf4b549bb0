"""Which prefill provider a long request goes to: the cheapest that meets its TTFT target.

Prefill capacity may be bought from several providers (PrfaaS clusters with their own GPUs,
price per GPU-hour and link). For one request this module prices each provider and predicts its
TTFT, then picks the cheapest provider whose TTFT meets the target. When none does, local prefill
takes the request if it meets the target; when nothing does, the option (provider or local) with
the lowest predicted TTFT takes it, so a target the load has made unreachable costs as little
tail as it can (sending the longest prompts to the slow local prefill would make the tail worst
exactly where it is already missed). The live router and the simulator call `choose_provider`
when a topology holds several PrfaaS clusters (`prfaas.router.providers` and
`prfaas.sim.providers` build the offers). Pure: no clock, sockets, torch or global randomness.

For a request of `l` incremental tokens whose KV and state are `kv_bytes` bytes:

    compute_usd  = T_prefill(l) x gpus_per_instance x price_per_gpu_hour / 3600
    transfer_usd = kv_bytes / 1e9 x price_per_gb              (a metered link; 0 otherwise)
    ttft_s       = max(queue_s + T_prefill(l), link_backlog_s + kv_bytes / goodput)
                   + the transfer's unhidden round trips       (`prfaas.policy.transfer`)

which is the offload path of the route rule (`prfaas.policy.route.path_delays`): the KV streams
layer by layer while later layers compute, so the request is ready when both the prefill and the
link's drain are done, plus the acknowledgment (and, on a cold connection, handshake and slow
start). The local option costs its compute only and is ready after its queue and its prefill.

A tie in cost goes to the lower TTFT, then to the name first in alphabetical order (a tie in
TTFT, when nothing meets the target, to the lower cost, then the name), so the choice never
depends on the order the providers are listed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prfaas.policy.throughput import LatencyCurve
from prfaas.policy.transfer import (
    LinkPath,
    WireState,
    goodput_bytes_per_s,
    unhidden_latency_s,
)

BYTES_PER_GB = 1e9  # clouds meter egress in decimal gigabytes
SECONDS_PER_HOUR = 3600.0
LOCAL = "local"  # the target of the fallback
MAX_PRICE_USD = 1e6  # bound of a price per GPU-hour or per GB: far above any real one


def _check_non_negative(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class ProviderOffer:
    """One prefill provider as the policy sees it at the moment of a request."""

    name: str  # the provider (its cluster's name)
    price_per_gpu_hour: float  # USD per GPU-hour, >= 0
    gpus_per_instance: int  # GPUs one prefill instance occupies while it computes
    t_prefill_s: LatencyCurve  # one instance's prefill latency, tokens -> seconds
    queue_s: float  # seconds of prefill queued ahead of this request on its best instance
    link_bytes_per_s: float  # the wire bandwidth to the local cluster (this request's share)
    path: LinkPath = field(default_factory=LinkPath)  # RTT, loss, payload efficiency of that link
    price_per_gb: float = 0.0  # USD per transferred GB (1e9 payload bytes); 0: unmetered
    link_backlog_s: float = 0.0  # seconds of KV already queued on the link ahead of this one
    wire_state: WireState = WireState.WARM  # how warm the link's connections are

    def __post_init__(self) -> None:
        for name in ("price_per_gpu_hour", "price_per_gb", "queue_s", "link_backlog_s"):
            _check_non_negative(f"provider {self.name}", name, getattr(self, name))
        if self.gpus_per_instance < 1:
            raise ValueError(
                f"provider {self.name}: gpus_per_instance must be >= 1, got "
                f"{self.gpus_per_instance}"
            )
        if not self.link_bytes_per_s > 0:
            raise ValueError(
                f"provider {self.name}: link bandwidth must be > 0, got {self.link_bytes_per_s}"
            )


@dataclass(frozen=True, slots=True)
class LocalOption:
    """The local PD cluster's prefill: no link, its own queue and hardware."""

    price_per_gpu_hour: float  # USD per GPU-hour, >= 0
    gpus_per_instance: int
    t_prefill_s: LatencyCurve
    queue_s: float

    def __post_init__(self) -> None:
        for name in ("price_per_gpu_hour", "queue_s"):
            _check_non_negative(LOCAL, name, getattr(self, name))
        if self.gpus_per_instance < 1:
            raise ValueError(f"local: gpus_per_instance must be >= 1, got {self.gpus_per_instance}")


@dataclass(frozen=True, slots=True)
class Quote:
    """One option's price and predicted TTFT for the request."""

    name: str
    compute_usd: float
    transfer_usd: float
    ttft_s: float

    @property
    def cost_usd(self) -> float:
        return self.compute_usd + self.transfer_usd

    def text(self) -> str:
        return f"{self.name} ${self.cost_usd:.4f} (ttft {self.ttft_s:.3g} s)"


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """Where the request prefills, why, and every quote the choice compared."""

    target: str  # a provider's name, or LOCAL
    reason: str  # starts with the rule: "cheapest:", "local:" or "fastest:"
    quotes: tuple[Quote, ...]  # the providers' quotes, cheapest first, then the local one


def compute_usd(seconds: float, gpus_per_instance: int, price_per_gpu_hour: float) -> float:
    """What `gpus_per_instance` GPUs cost for `seconds` at `price_per_gpu_hour`."""
    return seconds * gpus_per_instance * price_per_gpu_hour / SECONDS_PER_HOUR


def quote_provider(offer: ProviderOffer, num_tokens: int, kv_bytes: float) -> Quote:
    """Cost and TTFT of prefilling `num_tokens` on `offer` and sending its `kv_bytes` home."""
    prefill_s = offer.t_prefill_s(num_tokens)
    goodput = goodput_bytes_per_s(offer.link_bytes_per_s, offer.path)
    drain_s = offer.link_backlog_s + kv_bytes / goodput
    round_trip_s = unhidden_latency_s(kv_bytes, goodput, offer.path, offer.wire_state)
    ttft_s = max(offer.queue_s + prefill_s, drain_s) + round_trip_s
    return Quote(
        name=offer.name,
        compute_usd=compute_usd(prefill_s, offer.gpus_per_instance, offer.price_per_gpu_hour),
        transfer_usd=kv_bytes / BYTES_PER_GB * offer.price_per_gb,
        ttft_s=ttft_s,
    )


def quote_local(local: LocalOption, num_tokens: int) -> Quote:
    """Cost and TTFT of prefilling `num_tokens` locally (no transfer)."""
    prefill_s = local.t_prefill_s(num_tokens)
    return Quote(
        name=LOCAL,
        compute_usd=compute_usd(prefill_s, local.gpus_per_instance, local.price_per_gpu_hour),
        transfer_usd=0.0,
        ttft_s=local.queue_s + prefill_s,
    )


def _order(quote: Quote) -> tuple[float, float, str]:
    return (quote.cost_usd, quote.ttft_s, quote.name)


def choose_provider(
    offers: tuple[ProviderOffer, ...] | list[ProviderOffer],
    local: LocalOption,
    num_tokens: int,
    kv_bytes: float,
    ttft_target_s: float,
) -> ProviderChoice:
    """The cheapest provider whose predicted TTFT is <= `ttft_target_s`, else local prefill.

    `num_tokens`: the request's incremental (uncached) length; `kv_bytes`: the KV and state the
    chosen provider would send to the local cluster."""
    if not (math.isfinite(ttft_target_s) and ttft_target_s > 0):
        raise ValueError(f"ttft target must be a finite number > 0, got {ttft_target_s}")
    names = [o.name for o in offers]
    if len(set(names)) != len(names) or LOCAL in names:
        raise ValueError(f"provider names must be distinct and not {LOCAL!r}, got {names}")
    quotes = sorted((quote_provider(o, num_tokens, kv_bytes) for o in offers), key=_order)
    local_quote = quote_local(local, num_tokens)
    meeting = [q for q in quotes if q.ttft_s <= ttft_target_s]
    every = (*quotes, local_quote)
    if not meeting:
        return _fallback(quotes, local_quote, ttft_target_s)
    best, others = meeting[0], [q for q in quotes if q is not meeting[0]]
    reason = (
        f"cheapest: provider {best.name} ${best.cost_usd:.4f} (ttft {best.ttft_s:.3g} s <= "
        f"{ttft_target_s:g} s)"
    )
    if others:
        reason += " vs " + ", ".join(_other_text(q, ttft_target_s) for q in others)
    return ProviderChoice(best.name, reason, every)


def _other_text(quote: Quote, ttft_target_s: float) -> str:
    text = f"{quote.name} ${quote.cost_usd:.4f}"
    if quote.ttft_s > ttft_target_s:
        text += f" (ttft {quote.ttft_s:.3g} s > {ttft_target_s:g} s)"
    return text


def _fallback(quotes: list[Quote], local_quote: Quote, ttft_target_s: float) -> ProviderChoice:
    """No provider meets the target: local if it does, else the lowest predicted TTFT."""
    every = (*quotes, local_quote)
    listed = ", ".join(q.text() for q in quotes) or "none offered"
    missed = f"no provider meets ttft {ttft_target_s:g} s ({listed})"
    if local_quote.ttft_s <= ttft_target_s or not quotes:
        return ProviderChoice(LOCAL, f"local: {missed}; {local_quote.text()}", every)
    fastest = min(every, key=lambda q: (q.ttft_s, q.cost_usd, q.name))
    reason = (
        f"fastest: {missed} nor {local_quote.text()}; "
        f"{'local' if fastest is local_quote else 'provider ' + fastest.name} is predicted first"
    )
    return ProviderChoice(fastest.name, reason, every)
