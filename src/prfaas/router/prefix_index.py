"""The router's global KV index: which instance caches which prompt prefix, from their events.

Every instance with a prefix cache publishes its pool's stored/removed events at
`GET /internal/kv_events?after=SEQ` (`prfaas.instance.kv_events`). The router's poller
(`poller.py`) has `RouterPrefixIndex.poll` read them after each instance's stats, into one
`prfaas.prefix_cache.GlobalKVIndex`; the index answers, for a prompt, how many leading tokens
each instance can reuse:

- *compute reuse* (a prefill instance, or a decode instance prefilling itself): full-attention
  blocks plus a fixed-size-state checkpoint at exactly that length (`num_usable_blocks`);
- *receiver reuse* (a decode instance receiving a transfer): full-attention blocks only, since
  the final fixed-size states always travel whole (`num_attention_blocks`).

Both leave at least one prompt token to compute and stay on block boundaries. The index is a hint:
an instance that no longer holds what the index says computes the difference itself (counted by
the router as an index miss). An instance that restarts reports a new epoch and is re-read from
its snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from prfaas.messages import JSONDict
from prfaas.prefix_cache import GlobalKVIndex, PoolEvent, block_hashes
from prfaas.prefix_cache.entries import compute_reuse_tokens, receiver_reuse_tokens
from prfaas.topology import InstanceConfig, PrefixCacheConfig

log = logging.getLogger(__name__)


@dataclass
class _Cursor:
    epoch: str = ""  # the instance's pool identity; a new one means it restarted
    seq: int = 0  # last event applied


class RouterPrefixIndex:
    """The instances' KV events, read when polled, and prefix lookups for the dispatcher."""

    def __init__(
        self,
        config: PrefixCacheConfig | None,
        instances: Sequence[InstanceConfig],
        client: aiohttp.ClientSession,
    ) -> None:
        self.config = config  # None: the instances keep no prefix cache
        self.block_tokens = 0 if config is None else config.block_tokens
        self.instances = tuple(instances)
        self.client = client
        self.index: GlobalKVIndex | None = None  # built on the first answer (needs_state)
        self._cursors = {i.name: _Cursor() for i in self.instances}

    @property
    def enabled(self) -> bool:
        return self.config is not None

    # ---- lookups ---------------------------------------------------------------------------
    def hashes(self, prompt_token_ids: Sequence[int]) -> list[int]:
        """The prompt's chained block hashes (empty when the prefix cache is off)."""
        if not self.enabled:
            return []
        return block_hashes(prompt_token_ids, self.block_tokens)

    def compute_tokens(self, instance: str, hashes: Sequence[int], num_prompt: int) -> int:
        """Prompt tokens `instance` can skip computing (full-attention KV and an exact state)."""
        if self.index is None or not hashes:
            return 0
        match = self.index.match(instance, hashes)
        return compute_reuse_tokens(match, num_prompt, self.block_tokens)

    def receiver_tokens(self, instance: str, hashes: Sequence[int], num_prompt: int) -> int:
        """Prompt tokens whose full-attention KV `instance` already holds as a receiver."""
        if self.index is None or not hashes:
            return 0
        match = self.index.match(instance, hashes)
        return receiver_reuse_tokens(match, num_prompt, self.block_tokens)

    def cursors(self) -> dict[str, dict[str, object]]:
        """Per instance: the epoch and the last event applied (for operators and tests)."""
        return {name: {"epoch": c.epoch, "seq": c.seq} for name, c in self._cursors.items()}

    # ---- polling ---------------------------------------------------------------------------
    def drop(self, instance: str) -> None:
        """Forget what `instance` caches (it went down); re-read from its snapshot later."""
        if self.index is not None:
            self.index.drop(instance)
        self._cursors[instance] = _Cursor()

    async def poll(self, instance: InstanceConfig, timeout_s: float) -> None:
        """Apply `instance`'s new events; a restart or a gap re-reads its snapshot."""
        cursor = self._cursors[instance.name]
        params = {"after": str(cursor.seq), "epoch": cursor.epoch}
        body = await self._get(instance, params, timeout_s)
        if body is None:
            return
        events = [PoolEvent.from_dict(e) for e in body.get("events", ())]
        index = self._index(bool(body.get("needs_state", True)))
        if body.get("snapshot"):
            index.replace(instance.name, events)
        else:
            index.apply(instance.name, events)
        cursor.epoch, cursor.seq = str(body.get("epoch", "")), int(body.get("last_seq", 0))

    def _index(self, needs_state: bool) -> GlobalKVIndex:
        if self.index is None:
            self.index = GlobalKVIndex(self.block_tokens, needs_state)
        return self.index

    async def _get(
        self, instance: InstanceConfig, params: dict[str, str], timeout_s: float
    ) -> JSONDict | None:
        url = f"http://{instance.http}/internal/kv_events"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.client.get(url, params=params, timeout=timeout) as reply:
                if reply.status == 404:  # no prefix cache there
                    return None
                reply.raise_for_status()
                body = await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("kv events of %s: %s", instance.name, exc)
            return None
        return body if isinstance(body, dict) else None
