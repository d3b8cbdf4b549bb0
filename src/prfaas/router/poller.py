"""The router's one polling loop over the instances: every `poll_s`, each instance's stats (into
the `ClusterMonitor`) and then, from an instance that answered, its new KV events (into the
`RouterPrefixIndex`, when the deployment has a prefix cache), then `after_round` (the router
takes the dashboard's samples there).

All instances are polled at once each round; the round's next one starts `poll_s` after the
slowest answer (or time-out). An instance that did not answer its stats poll is not asked for
its events in that round; an answer that cannot be applied is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prfaas.router.monitor import ClusterMonitor, InstanceState
from prfaas.router.prefix_index import RouterPrefixIndex

log = logging.getLogger(__name__)


class InstancePoller:
    """Feeds the monitor's stats and the prefix index's events from one loop."""

    def __init__(
        self,
        monitor: ClusterMonitor,
        prefixes: RouterPrefixIndex,
        poll_s: float = 0.25,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        self.monitor, self.prefixes, self.poll_s = monitor, prefixes, poll_s
        self.after_round = after_round  # called after each round (the dashboard's sampling)
        self.stats_timeout_s = max(2.0, 4 * poll_s)
        self.events_timeout_s = max(5.0, 8 * poll_s)  # a snapshot after a restart can be large
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll_once(self) -> None:
        """One round: every instance at once."""
        await asyncio.gather(*(self._poll(s) for s in self.monitor.states.values()))
        if self.after_round is not None:
            self.after_round()

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_s)

    async def _poll(self, state: InstanceState) -> None:
        answered = await self.monitor.poll(state, self.stats_timeout_s)
        if not (answered and self.prefixes.enabled):
            return
        try:
            await self.prefixes.poll(state.config, self.events_timeout_s)
        except (ValueError, KeyError, TypeError) as exc:  # a malformed answer: skip this round
            log.warning("kv events of %s not applied: %r", state.config.name, exc)
