"""The simulator's prefix pools against the live system's, on a topology with `[prefix_cache]`:

- a hit needs the same prefill instance (the prefix on one of two: the other computes all);
- a prefill looks its pool up when it starts, not when it is queued;
- a run of requests leaves the simulated pool exactly as an emulated engine driven through the
  same requests leaves its own (the byte budget, the export's reservation, eviction order);
- the instance the simulator picks in each cluster, and the cached count the route rule sees,
  are the live router's for the same pools and loads (a real `Dispatcher`, never polled);
- a topology without `[prefix_cache]` caches nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.engine.emulated import EmulatedEngine, make_emulated_engine
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.policy import LinkView
from prfaas.policy.route import RouteTarget, make_route_policy
from prfaas.prefix_cache import GlobalKVIndex, block_hashes
from prfaas.prefix_cache.pool import HybridPrefixPool
from prfaas.router.dispatch import Dispatcher
from prfaas.router.metrics import RouterMetrics
from prfaas.router.monitor import ClusterMonitor
from prfaas.router.prefix_index import RouterPrefixIndex
from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.instances import SimPrefill
from prfaas.sim.prefix import InstancePools, make_prefix_model, place
from prfaas.sim.simulator import Simulator
from prfaas.topology import PrefixCacheConfig, Topology
from prfaas.topology.sim_config import sim_config_of
from topologies import Node, TopologySpec, decode, pd, prfaas

BLOCK = 64
BUDGET_BYTES = 600 << 20  # paper-1t: a 650-token prompt's entries are 193 MB (182 MB of state)
GAP_S = 1000.0  # between arrivals: each request ends before the next arrives


def _homogeneous(*prefill: str, budget_bytes: int = BUDGET_BYTES) -> Topology:
    """PD prefill instances `prefill` and one decode instance, emulated paper-1t, a prefix cache."""
    nodes = (*(Node(name) for name in prefill), decode("d0"))
    spec = TopologySpec(
        (pd(*nodes),),
        engine="emulated",
        deployment="homogeneous",
        threshold=None,
        prefix_cache=PrefixCacheConfig(BLOCK, budget_bytes),
    )
    return spec.topology()


def _prompt(rng: random.Random, num_tokens: int, prefix: Sequence[int] = ()) -> tuple[int, ...]:
    return (*prefix, *(rng.randrange(10, 250) for _ in range(num_tokens - len(prefix))))


def _run(
    config: SimConfig, prompts: Sequence[tuple[int, ...]], times: Sequence[float] = ()
) -> Simulator:
    """One request per prompt, at `times` (default `GAP_S` apart), 2 output tokens each."""
    times = times or [GAP_S * k for k in range(len(prompts))]
    requests = [
        SimRequest(t, len(p), 2, tuple(block_hashes(p, BLOCK)))
        for t, p in zip(times, prompts, strict=True)
    ]
    sim = Simulator(config, requests)
    sim.run()
    assert sim.num_finished == len(requests)
    return sim


def _live_prefills(engine: EmulatedEngine, prompts: Sequence[tuple[int, ...]]) -> list[int]:
    """What a live prefill instance does with each request in turn (`instance.prefill`): prefill
    it alone, export its state, free it once sent; the prompt tokens each one reused."""
    cached = []
    for k, prompt in enumerate(prompts):
        req_id = f"r{k}"
        engine.prefill([GenerateRequest(req_id, prompt, SamplingParams(max_tokens=1, seed=k))])
        cached.append(engine.num_cached_tokens(req_id))
        engine.export(req_id)
        engine.free(req_id)
    return cached


def _entries(pool: HybridPrefixPool) -> set[tuple[int, str]]:
    return {(e.block_hash, e.part.value) for e in pool.snapshot()[1]}


def test_a_hit_needs_the_same_instance() -> None:
    """`shared` prefills on p0, and another prompt arriving meanwhile on the idle p1. A later
    turn of `shared` goes to p0 and reuses it; on p1 it would compute every token. (A budget
    that evicts nothing here.)"""
    rng = random.Random(1)
    shared = _prompt(rng, 650)
    prompts = [shared, _prompt(rng, 650), _prompt(rng, 900, shared)]
    config = sim_config_of(_homogeneous("p0", "p1", budget_bytes=8 << 30))
    sim = _run(config, prompts, [0.0, 0.001, GAP_S])
    log = sim.log
    assert log.prefill_instance == ["pd-p-0", "pd-p-1", "pd-p-0"]  # the holder, for the third
    assert log.num_cached_tokens == [0, 0, 640]
    holder, other = sim.prefill_by_id["pd-p-0"], sim.prefill_by_id["pd-p-1"]
    probe = _prompt(rng, 1000, shared)  # another turn of `shared`, not sent
    req = SimRequest(2 * GAP_S, len(probe), 2, tuple(block_hashes(probe, BLOCK)))
    decision = sim.decisions[2]
    assert decision is not None
    assert sim.prefix.num_computed_tokens(holder, req, decision) == 1000 - 640
    assert sim.prefix.num_computed_tokens(other, req, decision) == 1000  # computes everything


def test_a_prefill_looks_its_pool_up_when_it_starts() -> None:
    """The second request extends the first and queues behind it on the one instance: when it
    was routed nothing was cached, when it starts the first has stored its blocks."""
    rng = random.Random(2)
    first = _prompt(rng, 650)
    config = sim_config_of(_homogeneous("p0"))
    requests = [
        SimRequest(0.0, 650, 2, tuple(block_hashes(first, BLOCK))),
        SimRequest(0.001, 900, 2, tuple(block_hashes(_prompt(rng, 900, first), BLOCK))),
    ]
    sim = Simulator(config, requests)
    sim.run()
    assert sim.decision_log[1].num_cached_tokens_pd == 0  # the route rule saw no hit
    assert sim.log.num_cached_tokens == [0, 640]
    latency = config.deployment.pd_prefill.latency
    prefill_s = sim.log.prefill_done_at[1] - sim.log.prefill_started_at[1]
    assert prefill_s == pytest.approx(latency.t_prefill_s(900 - 640))


def test_a_run_leaves_the_pool_an_emulated_engine_leaves() -> None:
    """Six requests, each prefilled, exported (its KV reserved in the pool until sent) and freed
    in turn, in a budget of three prompts' entries: the simulated pool reuses what the engine's
    reuses (the third request hits; the fifth and sixth find their prefix evicted) and ends
    holding the same entries."""
    rng = random.Random(3)
    a, b, c = _prompt(rng, 650), _prompt(rng, 650), _prompt(rng, 650)
    prompts = [a, b, _prompt(rng, 700, a), c, _prompt(rng, 700, b), _prompt(rng, 800, a)]
    topology = _homogeneous("p0")
    sim = _run(sim_config_of(topology), prompts)
    engine = make_emulated_engine(
        "paper-1t", "h20", 8, sleep=lambda _: None, prefix_cache=topology.prefix_cache
    )
    live = _live_prefills(engine, prompts)
    assert live == [0, 0, 640, 0, 0, 0]  # reused once, then evicted (state first, LRU)
    assert sim.log.num_cached_tokens == live
    assert isinstance(sim.prefix, InstancePools)
    assert engine.prefix is not None
    assert _entries(sim.prefix.pools["pd-p-0"]) == _entries(engine.prefix.pool)


def test_without_a_prefix_cache_nothing_is_reused() -> None:
    rng = random.Random(4)
    shared = _prompt(rng, 650)
    config = sim_config_of(
        TopologySpec(
            (pd(Node("p0"), decode("d0")),),
            engine="emulated",
            deployment="homogeneous",
            threshold=None,
        ).topology()
    )
    assert config.prefix_pools is None
    sim = _run(config, [shared, _prompt(rng, 900, shared)])
    assert sim.log.num_cached_tokens == [0, 0]


# ---- the instance choice against the router's -------------------------------------------------

ROUTER_BLOCK = 4
THRESHOLD = 16
PD_PREFILL = ("p0", "p1", "p2")
PRFAAS_PREFILL = ("r0", "r1")


def _router_topology() -> Topology:
    """Two PrfaaS and three PD prefill instances, every one with a KV receiver, a prefix cache."""
    spec = TopologySpec(
        (
            prfaas(*(Node(name, kv=True) for name in PRFAAS_PREFILL)),
            pd(*(Node(name, kv=True) for name in PD_PREFILL), decode("d0")),
        ),
        engine="emulated",
        threshold=THRESHOLD,
        prefix_cache=PrefixCacheConfig(ROUTER_BLOCK, 8 << 30),
        port_base=18500,
    )
    return spec.topology()


ROUTER_TOPOLOGY = _router_topology()
NAMES = (*PD_PREFILL, *PRFAAS_PREFILL)


def _pools(prompt: list[int], cached_blocks: Sequence[int]) -> dict[str, HybridPrefixPool]:
    """Each instance's pool holding the first `cached_blocks[k]` blocks of `prompt` (attention
    and the state at their end), as a prefill of that many blocks leaves it."""
    config = sim_config_of(ROUTER_TOPOLOGY)
    assert config.prefix_pools is not None
    sizes = config.prefix_pools.sizes
    hashes = block_hashes(prompt, ROUTER_BLOCK)
    pools = {}
    for name, num_blocks in zip(NAMES, cached_blocks, strict=True):
        stored = hashes[:num_blocks]
        pools[name] = sizes.new_pool(config.prefix_pools.budget_bytes)
        sizes.store(pools[name], stored, len(stored) * ROUTER_BLOCK)
    return pools


def _dispatcher(pools: dict[str, HybridPrefixPool], loads: Sequence[int]) -> Dispatcher:
    """A real dispatcher whose instances are ready with these loads, its index fed each pool's
    events as its poller would."""
    monitor = ClusterMonitor(ROUTER_TOPOLOGY, client=None)  # type: ignore[arg-type]  # no polls
    for state in monitor.states.values():
        state.is_ready = True
    for name, load in zip(NAMES, loads, strict=True):
        monitor.states[name].pending_tokens = load
    prefixes = RouterPrefixIndex(ROUTER_TOPOLOGY.prefix_cache, ROUTER_TOPOLOGY.instances, None)  # type: ignore[arg-type]
    prefixes.index = GlobalKVIndex(ROUTER_BLOCK, needs_state=True)
    for name, pool in pools.items():
        prefixes.index.replace(name, pool.snapshot()[1])
    return Dispatcher(ROUTER_TOPOLOGY, monitor, None, RouterMetrics(), prefixes)  # type: ignore[arg-type]


def _sim_instances(loads: Sequence[int]) -> dict[str, SimPrefill]:
    """Simulated prefill instances under the topology's names, `loads` tokens queued each."""
    config = sim_config_of(ROUTER_TOPOLOGY)
    instances = {}
    for name, load in zip(NAMES, loads, strict=True):
        instance = SimPrefill(name, config.deployment.pd_prefill.latency)
        instance.num_queued_tokens = load
        instances[name] = instance
    return instances


@settings(max_examples=80, deadline=None)
@given(
    num_prompt_tokens=st.integers(2, 30 * ROUTER_BLOCK),
    cached_blocks=st.lists(st.integers(0, 30), min_size=5, max_size=5),
    loads=st.lists(st.sampled_from([0, 100, 5000]), min_size=5, max_size=5),
)
def test_the_instance_and_cached_count_are_the_routers(
    num_prompt_tokens: int, cached_blocks: list[int], loads: list[int]
) -> None:
    prompt = list(range(1000, 1000 + num_prompt_tokens))
    pools = _pools(prompt, cached_blocks)
    live = _dispatcher(pools, loads).decide("req", prompt)

    config = sim_config_of(ROUTER_TOPOLOGY)
    model = make_prefix_model(config)
    assert isinstance(model, InstancePools)
    instances = _sim_instances(loads)
    for name, pool in pools.items():
        model.pools[name] = pool
    req = SimRequest(0.0, num_prompt_tokens, 2, tuple(block_hashes(prompt, ROUTER_BLOCK)))
    pd_best = model.candidate(RouteTarget.PD_PREFILL, [instances[n] for n in PD_PREFILL], req)
    prfaas_best = model.candidate(RouteTarget.PRFAAS, [instances[n] for n in PRFAAS_PREFILL], req)
    policy = make_route_policy(config.deployment.kind, config.deployment.route_config)
    idle = LinkView(1e9, utilization=0.0, backlog_bytes=0.0)
    decision = policy.choose(
        num_prompt_tokens, pd_best.num_cached_tokens, prfaas_best.num_cached_tokens, idle
    )
    instance, moved_tokens = place(model, decision, pd_best, prfaas_best)

    assert live.route == str(decision.target), live.reason
    assert live.num_best_prefix_tokens == max(
        pd_best.num_cached_tokens, prfaas_best.num_cached_tokens
    )
    assert live.num_incremental_tokens == decision.num_incremental_tokens
    assert live.prefill is not None and instance is not None
    assert live.prefill.config.name == instance.instance_id
    assert (
        live.num_cached_tokens
        == (prfaas_best if decision.target is RouteTarget.PRFAAS else pd_best).num_cached_tokens
    )
    assert (live.prefix_move.num_tokens if live.prefix_move else 0) == moved_tokens
