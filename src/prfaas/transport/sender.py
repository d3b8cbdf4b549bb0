"""KV sender: the public entry point. One `Destination` (N TCP connections) per receiver address,
opened lazily; `begin` starts a `KVTransfer`, `send` does a whole manifest at once.

The caller's views must stay valid and unchanged until the transfer's `finish` returns: ranges the
receiver NACKs are resent from them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prfaas.messages import KVManifest, TransferAck
from prfaas.policy import LinkView
from prfaas.transport.channel import client_tls_context
from prfaas.transport.config import TransportConfig
from prfaas.transport.destination import Destination
from prfaas.transport.link_sizing import LinkSizing
from prfaas.transport.linkstats import LinkStats, TransportMetrics
from prfaas.transport.transfer import KVTransfer, TransferFailedError

__all__ = ["KVSender", "KVTransfer", "TransferFailedError", "parse_address"]


class KVSender:
    """Sends transfers to any number of destinations ("host:port"), connecting lazily."""

    def __init__(self, config: TransportConfig, metrics: TransportMetrics | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._tls = None
        if config.tls_cert is not None and config.tls_key and config.tls_ca:
            self._tls = client_tls_context(config.tls_cert, config.tls_key, config.tls_ca)
        self._dests: dict[str, Destination] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> KVSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, dest: str) -> None:
        """Open the destination's connections now instead of on the first transfer."""
        await self._destination(dest)

    async def begin(
        self, dest: str, transfer_id: str, req_id: str, deadline_s: float | None = None
    ) -> KVTransfer:
        d = await self._destination(dest)
        return d.new_transfer(transfer_id, req_id, deadline_s or self.config.deadline_s)

    async def send(
        self, dest: str, manifest: KVManifest, views: Sequence[memoryview]
    ) -> TransferAck:
        """One-shot: every layer of `manifest`, views in manifest tensor order."""
        t = await self.begin(dest, manifest.transfer_id, manifest.req_id)
        pos = 0
        for layer in manifest.layers:
            n = len(layer.tensors)
            await t.send_layer(layer, views[pos : pos + n])
            pos += n
        return await t.finish(manifest)

    def link_stats(self, dest: str) -> LinkStats | None:
        """What has been measured about the link to `dest` (None before the first connect)."""
        d = self._dests.get(dest)
        return None if d is None else d.link_stats()

    def sizing(self, dest: str) -> LinkSizing | None:
        """The connections and buffers chosen for `dest` (None: not sized to a link)."""
        d = self._dests.get(dest)
        return None if d is None else d.sizing

    def link_view(self, dest: str, capacity_bytes_per_s: float) -> LinkView | None:
        """The scheduler's view of the link to `dest`, whose capacity the caller knows."""
        stats = self.link_stats(dest)
        return None if stats is None else stats.to_link_view(capacity_bytes_per_s)

    async def close(self) -> None:
        for d in self._dests.values():
            await d.close()
        self._dests.clear()

    async def _destination(self, dest: str) -> Destination:
        async with self._lock:
            if dest not in self._dests:
                host, port = parse_address(dest)
                d = Destination(host, port, self.config, self._tls, self._metrics)
                await d.start()
                self._dests[dest] = d
            return self._dests[dest]


def parse_address(dest: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port); ValueError if malformed."""
    host, sep, port = dest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"destination must be host:port, got {dest!r}")
    return host.strip("[]"), int(port)
