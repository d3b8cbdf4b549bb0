"""`prfaas verify` plumbing shared by both instances: the request/answer framing and the transport.

Requests (which model, which control) and B's answers (tokens, logits) travel as small
length-prefixed messages (`send_message` / `recv_message`: lengths, a JSON header, raw buffers)
beside the KV transport. `LoopThread` runs the transport's asyncio loop on a daemon thread so the
synchronous torch code can call it; `single_thread` and `quiet_transformers` set both processes up
the same way.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

_LEN = struct.Struct("<QQ")  # header bytes, payload bytes
TOKEN_ENV = "PRFAAS_VERIFY_TOKEN"  # the transport's shared token, passed to B out of argv
TRANSFER_TIMEOUT_S = 120.0  # waits on the loop thread; over the transport's 60 s deadline
_T = TypeVar("_T")


def send_message(sock: socket.socket, header: dict[str, Any], buffers: Sequence[Any] = ()) -> None:
    """One message: lengths, a JSON header, then the buffers' bytes back to back (no copies)."""
    head = json.dumps(header).encode()
    views = [memoryview(b).cast("B") for b in buffers]
    sock.sendall(_LEN.pack(len(head), sum(v.nbytes for v in views)) + head)
    for view in views:
        sock.sendall(view)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], bytearray]:
    """The JSON header and the payload, received straight into one preallocated bytearray."""
    head_len, payload_len = _LEN.unpack(_recv_exact(sock, _LEN.size))
    header: dict[str, Any] = json.loads(_recv_exact(sock, head_len))
    payload = bytearray(payload_len)
    view = memoryview(payload)
    got = 0
    while got < payload_len:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed during payload")
        got += n
    return header, payload


def _recv_exact(sock: socket.socket, num_bytes: int) -> bytes:
    buf = bytearray()
    while len(buf) < num_bytes:
        chunk = sock.recv(num_bytes - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


class LoopThread:
    """An asyncio loop on a daemon thread, so the synchronous torch code can use the transport."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="prfaas-verify-io")
        self._thread.daemon = True
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = TRANSFER_TIMEOUT_S) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def transport_config(token: str) -> Any:
    from prfaas.transport.config import TransportConfig

    return TransportConfig(token=token)


def single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging

    hf_logging: Any = logging  # untyped in transformers
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")
