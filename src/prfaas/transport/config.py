"""Transport configuration: one frozen dataclass, cheap range checks only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prfaas.types import MIB

MAX_FRAME_BYTES = 64 * MIB  # largest payload frame on the wire; receivers accept up to this
_CONGESTION_CONTROL_NAME = re.compile(r"[a-z0-9_]{1,15}")  # Linux TCP_CA_NAME_MAX is 16


def is_congestion_control_name(name: str) -> bool:
    """Whether `name` can name a kernel TCP congestion control algorithm (`cubic`, `bbr`)."""
    return _CONGESTION_CONTROL_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Settings shared by KVSender and KVReceiver. Defaults were chosen by measurement
    (docs/benchmarks/transport.md)."""

    num_connections: int = field(
        default=4,
        metadata={"help": "TCP connections per destination (the least, when sized to the link)"},
    )
    frame_bytes: int = field(default=4 * MIB, metadata={"help": "payload bytes per frame"})
    max_inflight_bytes: int = field(
        default=64 * MIB,
        metadata={"help": "sender: queued, unwritten payload bytes per destination"},
    )
    max_transfer_bytes: int = field(
        default=4096 * MIB, metadata={"help": "receiver: largest transfer accepted"}
    )
    max_buffer_bytes: int = field(
        default=8192 * MIB, metadata={"help": "receiver: pool budget, in use + idle"}
    )
    deadline_s: float = field(default=60.0, metadata={"help": "per-transfer deadline"})
    connect_timeout_s: float = field(default=10.0, metadata={"help": "connect + handshake limit"})
    max_resends: int = field(default=8, metadata={"help": "NACK rounds before a transfer fails"})
    token: str | None = field(
        default=None, repr=False, metadata={"help": "shared secret when TLS is off"}
    )
    tls_cert: str | None = field(default=None, metadata={"help": "PEM certificate of this side"})
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key of this side"})
    tls_ca: str | None = field(default=None, metadata={"help": "PEM CA that signs the peers"})
    payload_checksum: bool = field(
        default=True,
        metadata={"help": "CRC-32C every payload frame; False only with TLS, on both sides"},
    )
    io_threads: bool = field(
        default=False,
        metadata={"help": "plain TCP: send/receive and CRC on threads, for hosts with spare cores"},
    )
    socket_buffer_bytes: int = field(
        default=0, metadata={"help": "SO_SNDBUF/SO_RCVBUF; 0 keeps the kernel's autotuning"}
    )
    congestion_control: str | None = field(
        default=None,
        metadata={"help": "sender: TCP congestion control (e.g. cubic, bbr); None: the kernel's"},
    )
    link_gbps: float = field(
        default=0.0,
        metadata={"help": "sender: the link's rate; > 0 sizes connections and buffers to it"},
    )
    link_rtt_s: float = field(
        default=0.0,
        metadata={"help": "sender: the link's RTT when the first connection measures none"},
    )
    size_to_link: bool = field(
        default=True,
        metadata={"help": "sender: size connections and buffers from the link (link_sizing)"},
    )

    def __post_init__(self) -> None:
        if self.num_connections < 1:
            raise ValueError(f"num_connections must be >= 1, got {self.num_connections}")
        if not 4096 <= self.frame_bytes <= MAX_FRAME_BYTES:
            raise ValueError(f"frame_bytes must be in [4 KiB, 64 MiB], got {self.frame_bytes}")
        cc = self.congestion_control
        if cc is not None and not is_congestion_control_name(cc):
            raise ValueError(f"congestion_control must be a kernel algorithm name, got {cc!r}")
        if not (self.link_gbps >= 0 and self.link_rtt_s >= 0):
            raise ValueError("link_gbps and link_rtt_s must be >= 0")
        if self.max_inflight_bytes < self.frame_bytes:
            raise ValueError("max_inflight_bytes must be >= frame_bytes")
        if self.deadline_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("deadline_s and connect_timeout_s must be > 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("TLS needs tls_ca to authenticate the peer")
        if not self.payload_checksum and self.tls_cert is None:
            raise ValueError("payload_checksum=False needs TLS (its AEAD then protects the bytes)")

    @property
    def is_tls(self) -> bool:
        return self.tls_cert is not None
