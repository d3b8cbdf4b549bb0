"""`prfaas verify`, instance B: the `--serve` process that imports the state and decodes.

B holds a `KVReceiver` and a request socket, both on 127.0.0.1, port 0, and prints both ports.
For each request it takes the transfer the receiver delivered complete and CRC-verified, imports
it into an engine built from the same weights (checked by checksum) and answers with its greedy
tokens and logits.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from prfaas.cli._verify_io import (
    TOKEN_ENV,
    LoopThread,
    quiet_transformers,
    recv_message,
    send_message,
    single_thread,
    transport_config,
)
from prfaas.errors import UserError


class StateInbox:
    """B's KVReceiver on its loop thread; `take` returns one delivered transfer's manifest and a
    copy of its tensors' bytes, and gives the pooled buffers back."""

    def __init__(self, io: LoopThread, token: str) -> None:
        from prfaas.transport.receiver import KVReceiver

        self._io = io
        self._rx = KVReceiver(transport_config(token), host="127.0.0.1", port=0)
        io.run(self._rx.__aenter__(), timeout_s=30)
        self.port = int(self._rx.address.rsplit(":", 1)[1])
        self._early: dict[str, Any] = {}  # transfer_id -> delivered before it was asked for

    def take(self, transfer_id: str) -> tuple[Any, bytearray]:
        while transfer_id not in self._early:
            got = self._io.run(self._rx.get())
            self._early[got.manifest.transfer_id] = got
        got = self._early.pop(transfer_id)
        payload = bytearray(got.manifest.total_bytes)  # B's engine owns this copy after import
        for layer in got.manifest.layers:
            for t in layer.tensors:
                payload[t.offset_bytes : t.offset_bytes + t.num_bytes] = got.tensor_view(t)
        self._io.loop.call_soon_threadsafe(got.release)  # the pool is the loop's
        return got.manifest, payload

    def close(self) -> None:
        self._io.run(self._rx.__aexit__(None, None, None), timeout_s=30)


def serve() -> None:
    import torch

    single_thread()
    quiet_transformers()
    io = LoopThread()
    inbox = StateInbox(io, os.environ[TOKEN_ENV])
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]} {inbox.port}", flush=True)
    conn, _ = listener.accept()
    models: dict[tuple[str, str, int], Any] = {}
    try:
        with conn:
            while True:
                header, _ = recv_message(conn)
                if header["op"] == "bye":
                    return
                try:
                    manifest, payload = inbox.take(str(header["transfer_id"]))
                    reply, logits = decode_request(header, manifest, payload, models)
                except UserError as exc:
                    send_message(conn, {"error": str(exc)})
                    continue
                send_message(conn, reply, [logits.contiguous().view(torch.uint8).numpy()])
    finally:
        inbox.close()
        io.close()


def decode_request(
    header: dict[str, Any],
    manifest: Any,
    payload: bytearray,
    models: dict[tuple[str, str, int], Any],
) -> tuple[dict[str, Any], Any]:
    import torch

    from prfaas.engine.loading import load_model, weights_checksum
    from prfaas.engine.runner import Engine
    from prfaas.messages import SamplingParams

    key = (header["arch"], header["dtype"], int(header["seed"]))
    if key not in models:
        loaded = load_model(*key)
        models[key] = (loaded, weights_checksum(loaded.model))
    loaded, checksum = models[key]
    engine = Engine(loaded, record_logits=True)
    sampling = SamplingParams.from_dict(header["sampling"])
    if header.get("control") == "empty_cache":
        state = engine.import_empty(manifest, sampling)
    else:
        state = engine.import_(manifest, [payload], sampling)
    while engine.has_unfinished():
        engine.step()
    logits = torch.stack(state.logits) if state.logits else torch.empty(0, 0)
    reply = {
        "tokens": state.output_token_ids[1:],
        "logits_shape": list(logits.shape),
        "weights_match": checksum == header["weights_checksum"],
    }
    return reply, logits.float()
