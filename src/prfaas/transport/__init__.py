"""KV transport: sans-IO wire format and transfer state machine, plus the asyncio TCP adapter.

    frames.py    versioned binary frames and the incremental decoder (sans-IO)
    session.py   receiver state machine (sans-IO)
    ranges.py    byte-range tracking, sender frame planning (sans-IO)
    pool.py      reusable receive buffers under a byte budget
    channel.py   plain (zero-copy, threaded I/O) and TLS byte channels over one TCP socket
    sender.py    KVSender: the entry point; one Destination per receiver address
    destination.py  N connections per destination, striping, reconnect, replies, link stats
    transfer.py  KVTransfer: layers in, END rounds, NACK resends, deadline, TransferAck out
    receiver.py  KVReceiver: authentication, recv_into pooled buffers, verified hand-over
    linkstats.py TCP_INFO, LinkStats (-> policy LinkView), Prometheus metrics

Its benchmark and test shaper are `prfaas.bench`'s, the namespaced link `prfaas.testbed`'s.
Moves bytes and memoryviews only; never imports torch (the engine converts tensors).
"""

from prfaas.transport.config import TransportConfig
from prfaas.transport.linkstats import LinkStats, TransportMetrics
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender, KVTransfer
from prfaas.transport.session import ReceivedTransfer

__all__ = [
    "KVReceiver",
    "KVSender",
    "KVTransfer",
    "LinkStats",
    "ReceivedTransfer",
    "TransportConfig",
    "TransportMetrics",
]
