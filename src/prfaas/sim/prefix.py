"""The simulator's prefix caches: where a request's cached prefix is, which instance prefills it,
how many tokens that prefill computes, and what a prefix move carries.

`make_prefix_model(config)` gives one of two models, asked the same questions by the handlers:

- `ClusterIndexes` (`SimConfig.prefix_pools` None: `prfaas sim`'s presets): one LRU set of block
  hashes per cluster (`BlockPrefixIndex` of `SimConfig.prefix_cache_blocks` blocks), so a hit needs
  only the same cluster. The route rule sees each cluster's longest cached prefix; the instance is
  the least loaded when the job is queued; the prefill computes what the decision says; a prefix
  move carries the decision's `num_prefix_transfer_tokens`; a prefill's blocks join its cluster's
  set when it ends.
- `InstancePools` (`SimConfig.prefix_pools`: a topology's simulation, the bench's replay of a live
  run): what a served deployment does. Every prefill instance keeps its own `HybridPrefixPool` of
  the topology's byte budget and sees what an emulated prefill instance does to its own: the
  prefill ends and stores the prompt's complete blocks and the state checkpoint at its last block
  boundary (`PoolEntrySizes.store`); the export reserves the payload's bytes
  (`PrefixPoolSpec.reserved_share` of the KV sent) until the transfer ends; then the engine frees
  the request, which releases them and stores its prompt's blocks again (touched, no state).
  Eviction is the pool's own LRU, so a hit needs the same instance. As
  `router.dispatch` does, each cluster's candidate is the instance `pick_cached_instance` picks
  (the longest usable prefix there, `compute_reuse_tokens`, then the least load) and that count is
  what the route rule sees; the request prefills on the chosen cluster's candidate. A prefill
  reuses what its instance holds when it starts, as the engine looks then (the router's count is a
  hint). A prefix move (global best prefix) sends the holder's whole usable prefix to the chosen
  instance, which stores it when it lands, if that cluster's prefill instances have a KV receiver
  (`PrefixPoolSpec.receivers`); otherwise nothing moves (`skipped_no_receiver` live) and the
  instance computes what it does not hold.

Loads are the simulator's (tokens queued and not computed); the router's are polled every 0.25 s
and count whole prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prfaas.policy.pick import pick_cached_instance, pick_instance
from prfaas.policy.route import RouteDecision, RouteTarget
from prfaas.policy.views import InstanceLoad
from prfaas.prefix_cache.entries import checkpoint_tokens, compute_reuse_tokens
from prfaas.prefix_cache.index import BlockPrefixIndex
from prfaas.prefix_cache.pool import HybridPrefixPool
from prfaas.sim.config import PrefixPoolSpec, SimConfig, SimRequest
from prfaas.sim.instances import SimPrefill


@dataclass(frozen=True, slots=True)
class Candidate:
    """Where a request would prefill in one cluster, and the cached prefix the route rule counts
    there."""

    instance: SimPrefill | None  # None: no instance, or the least loaded one when queued
    num_cached_tokens: int


class PrefixModel(Protocol):
    """What the handlers ask of a prefix cache (see the module docstring)."""

    def candidate(
        self, target: RouteTarget, instances: Sequence[SimPrefill], req: SimRequest
    ) -> Candidate: ...

    def num_moved_tokens(
        self, decision: RouteDecision, chosen: Candidate, holder: Candidate
    ) -> int: ...

    def on_moved(self, instance: SimPrefill | None, req: SimRequest, num_tokens: int) -> None: ...

    def num_computed_tokens(
        self, instance: SimPrefill, req: SimRequest, decision: RouteDecision
    ) -> int: ...

    def on_prefilled(
        self, target: RouteTarget, instance: SimPrefill, req: SimRequest, sent: SentKV
    ) -> None: ...

    def on_sent(self, instance: SimPrefill, req: SimRequest, sent: SentKV) -> None: ...


@dataclass(frozen=True, slots=True)
class SentKV:
    """A request's KV leaving its prefill instance for its decode instance."""

    req_index: int  # position of the request in the workload: names its reservation
    num_bytes: float  # real bytes sent


def make_prefix_model(config: SimConfig) -> PrefixModel:
    """Per-instance pools when the config has them, else one block set per cluster."""
    if config.prefix_pools is not None:
        return InstancePools(config.prefix_pools)
    return ClusterIndexes(config.prefix_cache_blocks, config.block_tokens)


def place(
    model: PrefixModel, decision: RouteDecision, pd: Candidate, prfaas: Candidate
) -> tuple[SimPrefill | None, int]:
    """(the instance a routed request prefills on, the tokens of a prefix moved to it first)."""
    offloaded = decision.target is RouteTarget.PRFAAS
    chosen, holder = (prfaas, pd) if offloaded else (pd, prfaas)
    return chosen.instance, model.num_moved_tokens(decision, chosen, holder)


def least_loaded(instances: Sequence[SimPrefill]) -> SimPrefill:
    """The instance with the fewest queued tokens (`pick_instance`)."""
    loads = [InstanceLoad(p.instance_id, p.num_queued_tokens) for p in instances]
    return instances[pick_instance(loads)]


class ClusterIndexes:
    """One LRU block set per cluster: a hit needs only the same cluster."""

    def __init__(self, max_blocks: int, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.indexes = {t: BlockPrefixIndex(max_blocks) for t in RouteTarget}

    def candidate(
        self, target: RouteTarget, instances: Sequence[SimPrefill], req: SimRequest
    ) -> Candidate:
        """The cluster's longest cached prefix, leaving a token to compute; the instance is
        picked when the job is queued."""
        if not instances or not req.block_hashes:
            return Candidate(None, 0)
        num_blocks = self.indexes[target].num_prefix_hit_blocks(req.block_hashes)
        return Candidate(
            None, max(0, min(num_blocks * self.block_tokens, req.num_prompt_tokens - 1))
        )

    def num_moved_tokens(
        self, decision: RouteDecision, chosen: Candidate, holder: Candidate
    ) -> int:
        return decision.num_prefix_transfer_tokens

    def on_moved(self, instance: SimPrefill | None, req: SimRequest, num_tokens: int) -> None:
        """Nothing: the chosen cluster counts the moved prefix as its own until the prefill
        inserts the request's blocks."""

    def num_computed_tokens(
        self, instance: SimPrefill, req: SimRequest, decision: RouteDecision
    ) -> int:
        return decision.num_incremental_tokens

    def on_prefilled(
        self, target: RouteTarget, instance: SimPrefill, req: SimRequest, sent: SentKV
    ) -> None:
        self.indexes[target].insert(req.block_hashes)

    def on_sent(self, instance: SimPrefill, req: SimRequest, sent: SentKV) -> None:
        """Nothing: a cluster's set holds no transfers."""


class InstancePools:
    """Every prefill instance's own byte-budgeted pool: a hit needs the same instance."""

    def __init__(self, spec: PrefixPoolSpec) -> None:
        self.spec = spec
        self.block_tokens = spec.sizes.block_tokens
        self.pools: dict[str, HybridPrefixPool] = {}  # by instance id, made on first use

    def pool(self, instance: SimPrefill) -> HybridPrefixPool:
        if instance.instance_id not in self.pools:
            self.pools[instance.instance_id] = self.spec.sizes.new_pool(self.spec.budget_bytes)
        return self.pools[instance.instance_id]

    def reuse_tokens(self, instance: SimPrefill, req: SimRequest) -> int:
        """Prompt tokens a prefill of `req` on `instance` would skip now."""
        if not req.block_hashes:
            return 0
        match = self.pool(instance).match(req.block_hashes)
        return compute_reuse_tokens(match, req.num_prompt_tokens, self.block_tokens)

    def candidate(
        self, target: RouteTarget, instances: Sequence[SimPrefill], req: SimRequest
    ) -> Candidate:
        """The router's pick (`router.dispatch._prefill_candidates`): the longest usable prefix,
        then the least load."""
        if not instances:
            return Candidate(None, 0)
        cached = [self.reuse_tokens(p, req) for p in instances]
        loads = [InstanceLoad(p.instance_id, p.num_queued_tokens) for p in instances]
        k = pick_cached_instance(loads, cached)
        return Candidate(instances[k], cached[k])

    def num_moved_tokens(
        self, decision: RouteDecision, chosen: Candidate, holder: Candidate
    ) -> int:
        """The holder's whole usable prefix, when the decision moves one, the holder's is the
        longer and the chosen cluster receives moved prefixes (`router.dispatch._prefix_move`)."""
        if decision.num_prefix_transfer_tokens <= 0 or chosen.instance is None:
            return 0
        if str(decision.target) not in self.spec.receivers:
            return 0
        if holder.instance is None or holder.num_cached_tokens <= chosen.num_cached_tokens:
            return 0
        return holder.num_cached_tokens

    def on_moved(self, instance: SimPrefill | None, req: SimRequest, num_tokens: int) -> None:
        """The moved prefix's blocks and the state at their end, into the receiving pool."""
        assert instance is not None  # a move goes to the candidate it was planned for
        blocks = req.block_hashes[: num_tokens // self.block_tokens]
        self.spec.sizes.store(self.pool(instance), blocks, len(blocks) * self.block_tokens)

    def num_computed_tokens(
        self, instance: SimPrefill, req: SimRequest, decision: RouteDecision
    ) -> int:
        return req.num_prompt_tokens - self.reuse_tokens(instance, req)

    def on_prefilled(
        self, target: RouteTarget, instance: SimPrefill, req: SimRequest, sent: SentKV
    ) -> None:
        """The prompt's complete blocks and the state checkpoint at its last block boundary,
        then the export's reservation (not made when it cannot fit, as `PrefixBook.reserve_for`)."""
        num_tokens = req.num_prompt_tokens
        blocks = self._prompt_blocks(req)
        at_tokens = checkpoint_tokens(num_tokens, self.block_tokens, self.spec.sizes.needs_state)
        if at_tokens > len(blocks) * self.block_tokens:  # hashes short of the prompt: no state
            at_tokens = 0
        pool = self.pool(instance)
        self.spec.sizes.store(pool, blocks, at_tokens)
        pool.reserve_transfer(str(sent.req_index), round(sent.num_bytes * self.spec.reserved_share))

    def on_sent(self, instance: SimPrefill, req: SimRequest, sent: SentKV) -> None:
        """The transfer ended: the engine frees the request, releasing its reservation and
        keeping its prompt's blocks (`EngineCore.free`: stored again, no state)."""
        pool = self.pool(instance)
        pool.release_transfer(str(sent.req_index))
        self.spec.sizes.store(pool, self._prompt_blocks(req))

    def _prompt_blocks(self, req: SimRequest) -> tuple[int, ...]:
        """Hashes of the prompt's complete blocks."""
        return req.block_hashes[: req.num_prompt_tokens // self.block_tokens]
