"""The dispatcher's plan for a cross-cluster prefix move, without processes: which instance holds
the prefix to move, how many tokens it sends, and no move when the target already holds as much.

A real `Dispatcher` over a `ClusterMonitor` whose instances are marked ready (never polled) and a
`RouterPrefixIndex` fed pool events directly, as its poller would. Both directions are planned:
PrfaaS -> PD-P (a short increment over the PrfaaS cache) and PD-P -> PrfaaS (a long increment
over the PD cache), each to a prefill instance with `kv`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.policy import LinkView
from prfaas.prefix_cache import GlobalKVIndex, PoolEvent, block_hashes
from prfaas.prefix_cache.entries import max_reusable_tokens
from prfaas.prefix_cache.pool import EVENT_STORED, PoolPart
from prfaas.router.dispatch import Dispatch, Dispatcher
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.topology import PrefixCacheConfig, Topology
from prfaas.topology.config import DEFAULT_PREFIX_BUDGET_BYTES
from topologies import Node, TopologySpec, decode, pd, prfaas

BLOCK_TOKENS = 4
THRESHOLD = 16
MAX_BLOCKS = 20


def _topology() -> Topology:
    """r0 (PrfaaS prefill), p0 and d0 (PD), every one with a KV receiver, a prefix cache."""
    clusters = (prfaas(Node("r0", kv=True)), pd(Node("p0", kv=True), decode("d0")))
    spec = TopologySpec(
        clusters,
        threshold=THRESHOLD,
        token="secret",
        prefix_cache=PrefixCacheConfig(BLOCK_TOKENS, DEFAULT_PREFIX_BUDGET_BYTES),
        port_base=18000,
    )
    return spec.topology()


TOPOLOGY = _topology()


def _dispatcher(cached_blocks: dict[str, int], prompt: list[int]) -> Dispatcher:
    """All instances ready; each instance caches the first `cached_blocks[name]` blocks of
    `prompt` (attention KV and the state checkpoint at the last of them)."""
    monitor = ClusterMonitor(TOPOLOGY, client=None)  # type: ignore[arg-type]  # never polls
    for state in monitor.states.values():
        state.is_ready = True
    prefixes = RouterPrefixIndex(TOPOLOGY.prefix_cache, TOPOLOGY.instances, client=None)  # type: ignore[arg-type]
    prefixes.index = GlobalKVIndex(BLOCK_TOKENS, needs_state=True)
    hashes = block_hashes(prompt, BLOCK_TOKENS)
    for name, num_blocks in cached_blocks.items():
        prefixes.index.apply(name, _stored(hashes[:num_blocks]))
    metrics = RouterMetrics()
    return Dispatcher(TOPOLOGY, monitor, None, metrics, prefixes)  # type: ignore[arg-type]


def _stored(hashes: list[int]) -> list[PoolEvent]:
    events = [PoolEvent(i + 1, EVENT_STORED, h, PoolPart.ATTENTION) for i, h in enumerate(hashes)]
    if hashes:
        events.append(PoolEvent(len(events) + 1, EVENT_STORED, hashes[-1], PoolPart.STATE))
    return events


def _decide(cached_blocks: dict[str, int], num_prompt_tokens: int) -> Dispatch:
    prompt = list(range(1000, 1000 + num_prompt_tokens))
    return _dispatcher(cached_blocks, prompt).decide("req", prompt)


def test_a_pd_cache_moves_to_the_prfaas_instance_when_the_increment_is_long() -> None:
    d = _decide({"p0": 3}, num_prompt_tokens=12 + THRESHOLD + 5)
    assert d.route == "prfaas" and d.rule == "global-prefix", d.reason
    assert d.prefill is not None and d.prefill.config.name == "r0"
    assert d.prefix_move is not None
    assert d.prefix_move.holder.config.name == "p0"
    assert d.prefix_move.num_tokens == 12 == d.num_prefix_transfer_tokens
    assert d.num_cached_tokens == 0  # what r0 holds itself; the move adds the rest
    assert d.num_incremental_tokens == THRESHOLD + 5


def test_a_prfaas_cache_moves_to_pd_prefill_when_the_increment_is_short() -> None:
    d = _decide({"r0": 10}, num_prompt_tokens=40 + 3)
    assert d.route == "pd_prefill" and d.rule == "global-prefix", d.reason
    assert d.prefix_move is not None
    assert d.prefix_move.holder.config.name == "r0"
    assert d.prefix_move.num_tokens == 40 == d.num_prefix_transfer_tokens


def test_no_move_when_the_target_holds_as_much_or_more() -> None:
    d = _decide({"p0": 3, "r0": 3}, num_prompt_tokens=12 + THRESHOLD + 5)
    assert d.route == "prfaas" and d.prefix_move is None and d.num_prefix_transfer_tokens == 0
    assert d.num_cached_tokens == 12
    d = _decide({"p0": 2, "r0": 5}, num_prompt_tokens=20 + THRESHOLD + 5)
    assert d.route == "prfaas" and d.prefix_move is None


def test_a_partial_move_sends_the_holders_whole_prefix() -> None:
    """The target holds 2 blocks, the holder 6: the holder sends all 6 (its usable prefix, as
    one export); the policy counts the 4 the target lacks."""
    d = _decide({"r0": 2, "p0": 6}, num_prompt_tokens=24 + THRESHOLD + 1)
    assert d.route == "prfaas" and d.prefix_move is not None
    assert d.prefix_move.holder.config.name == "p0" and d.prefix_move.num_tokens == 24
    assert d.num_prefix_transfer_tokens == 24 - 8
    assert d.num_cached_tokens == 8


def test_a_scarce_link_routes_cache_affine_and_moves_nothing() -> None:
    prompt = list(range(1000, 1000 + 12 + THRESHOLD + 5))
    dispatcher = _dispatcher({"p0": 3}, prompt)
    scarce = LinkView(1e9, utilization=0.95, backlog_bytes=0.0)
    dispatcher.monitor.link_view = lambda *_: scarce  # type: ignore[method-assign]
    d = dispatcher.decide("req", prompt)
    assert d.rule == "cache-affine" and d.prefix_move is None, d.reason


@settings(max_examples=60, deadline=None)
@given(
    num_prompt_tokens=st.integers(1, MAX_BLOCKS * BLOCK_TOKENS + 3),
    pd_blocks=st.integers(0, MAX_BLOCKS),
    prfaas_blocks=st.integers(0, MAX_BLOCKS),
)
def test_the_move_is_the_longer_cache_to_the_chosen_cluster(
    num_prompt_tokens: int, pd_blocks: int, prfaas_blocks: int
) -> None:
    d = _decide({"p0": pd_blocks, "r0": prfaas_blocks}, num_prompt_tokens)
    cap = max_reusable_tokens(num_prompt_tokens, BLOCK_TOKENS)
    held = {
        "pd": min(pd_blocks * BLOCK_TOKENS, cap),
        "prfaas": min(prfaas_blocks * BLOCK_TOKENS, cap),
    }
    best = max(held.values())
    route = "pd_prefill" if num_prompt_tokens - best <= THRESHOLD else "prfaas"
    target, other = ("pd", "prfaas") if route == "pd_prefill" else ("prfaas", "pd")
    assert d.route == route, d.reason
    assert d.num_cached_tokens == held[target]
    if held[other] > held[target]:
        assert d.prefix_move is not None
        assert d.prefix_move.holder.config.cluster == other
        assert d.prefix_move.num_tokens == held[other]
        assert d.num_prefix_transfer_tokens == held[other] - held[target]
    else:
        assert d.prefix_move is None and d.num_prefix_transfer_tokens == 0
