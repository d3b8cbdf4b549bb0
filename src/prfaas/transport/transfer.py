"""One transfer on its way to one destination: queueing layers, END rounds, NACK resends, deadline.

`KVTransfer` decides what to send and when the transfer is settled; its destination owns the
connections that carry the frames. The transfer sees the destination only as a `TransferLink`
(what `Destination` in destination.py offers it), so this module does not import that one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prfaas.messages import KVManifest, LayerEntry, TransferAck
from prfaas.transport.config import TransportConfig
from prfaas.transport.ranges import PayloadSlice, plan_slices, slices_for_ranges

log = logging.getLogger(__name__)
RECONNECT_BACKOFF_S = 0.05


class TransferFailedError(Exception):
    """A transfer could not be completed (deadline, receiver refusal, too many resends)."""


@dataclass
class Reply:
    """What `finish` waits for: an ACK, the NACK of one END round, or a lost connection."""

    kind: str  # "ack" | "nack" | "conn_lost"
    ack: TransferAck | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    epoch: int = 0  # the END round a NACK answers


def drop_conn_lost(replies: asyncio.Queue[Reply]) -> None:
    """Coalesce queued connection-loss notices into the END round about to be sent."""
    kept = []
    while not replies.empty():
        r = replies.get_nowait()
        if r.kind != "conn_lost":
            kept.append(r)
    for r in kept:
        replies.put_nowait(r)


class TransferLink(Protocol):
    """What a transfer needs of its destination: the settings, the open transfers by tag, a
    frame queue, END and CANCEL to the receiver, and the record of a settled transfer."""

    config: TransportConfig
    transfers: dict[int, KVTransfer]

    async def enqueue(self, t: KVTransfer, slices: Sequence[PayloadSlice]) -> None: ...

    async def send_end(self, t: KVTransfer, manifest: KVManifest, epoch: int) -> None: ...

    async def send_cancel(self, t: KVTransfer) -> None: ...

    def record(self, t: KVTransfer, ack: TransferAck, num_bytes: int) -> None: ...


class KVTransfer:
    """One request's state on its way to one destination. Made by `KVSender.begin`."""

    def __init__(
        self, dest: TransferLink, tag: int, transfer_id: str, req_id: str, deadline_s: float
    ) -> None:
        self._dest, self.tag = dest, tag
        self.transfer_id, self.req_id = transfer_id, req_id
        self.deadline_s = deadline_s
        self.started_at = time.monotonic()
        self.layers: dict[int, LayerEntry] = {}
        self.slices: list[PayloadSlice] = []
        self.num_pending = 0
        self.num_resent_bytes = 0
        self.replies: asyncio.Queue[Reply] = asyncio.Queue()
        self.drained = asyncio.Event()
        self.drained.set()
        self.is_closed = False

    def begin_body(self) -> dict[str, object]:
        return {
            "transfer_id": self.transfer_id,
            "req_id": self.req_id,
            "deadline_s": self.deadline_s,
        }

    async def send_layer(self, layer: LayerEntry, views: Sequence[memoryview]) -> None:
        """Queue one final layer (views[i] = bytes of layer.tensors[i]); returns once queued."""
        if layer.layer_index in self.layers:
            raise ValueError(f"layer {layer.layer_index} sent twice in {self.transfer_id}")
        slices = plan_slices(layer, views, self._dest.config.frame_bytes)
        self.layers[layer.layer_index] = layer
        self.slices.extend(slices)
        await self._dest.enqueue(self, slices)

    async def finish(self, manifest: KVManifest) -> TransferAck:
        """Send END, resend what the receiver NACKs, and return its ACK (ok or not)."""
        remaining_s = self.deadline_s - (time.monotonic() - self.started_at)
        try:
            async with asyncio.timeout(max(remaining_s, 0.0)):
                ack = await self._settle(manifest)
        except TimeoutError:
            ack = TransferAck(self.transfer_id, ok=False, error="deadline exceeded")
        except TransferFailedError as exc:
            ack = TransferAck(self.transfer_id, ok=False, error=str(exc))
        await self._close(ack, manifest.total_bytes)
        return ack

    async def cancel(self, reason: str = "cancelled") -> None:
        await self._close(TransferAck(self.transfer_id, ok=False, error=reason), 0)

    async def _settle(self, manifest: KVManifest) -> TransferAck:
        for layer in manifest.layers:
            if layer.tensors and layer.layer_index not in self.layers:
                raise TransferFailedError(f"layer {layer.layer_index} in manifest was never sent")
        num_nacks, epoch = 0, 0
        while True:
            await self.drained.wait()
            await self._dest.send_end(self, manifest, epoch)
            reply = await self.replies.get()
            while reply.kind == "nack" and reply.epoch != epoch:
                reply = await self.replies.get()  # answer to an END already superseded
            epoch += 1
            if reply.kind == "ack" and reply.ack is not None:
                return reply.ack
            if reply.kind == "nack":
                num_nacks += 1
                if num_nacks > self._dest.config.max_resends:
                    raise TransferFailedError(f"data still missing after {num_nacks} NACKs")
                await self._resend(reply.ranges)
                continue
            # a connection died: END again on the live ones once they are back
            await asyncio.sleep(RECONNECT_BACKOFF_S)
            drop_conn_lost(self.replies)

    async def _resend(self, ranges: list[tuple[int, int]]) -> None:
        again = slices_for_ranges(self.slices, ranges)
        self.num_resent_bytes += sum(len(s.view) for s in again)
        log.info("transfer_id=%s resending %d frames", self.transfer_id, len(again))
        await self._dest.enqueue(self, again)

    async def _close(self, ack: TransferAck, num_bytes: int) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._dest.transfers.pop(self.tag, None)
        if not ack.ok:
            await self._dest.send_cancel(self)
        self._dest.record(self, ack, num_bytes)
