"""`prfaas verify`, instance A's side of the decode peer: start instance B and talk to it.

`DecodePeer` launches B (`python -m prfaas.cli.verify --serve`, see `prfaas.cli._verify_serve`),
streams the prefill's state to it through a `KVSender`, and asks it to decode over the request
socket.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prfaas.cli._verify_io import (
    TOKEN_ENV,
    LoopThread,
    recv_message,
    send_message,
    transport_config,
)
from prfaas.engine.protocol import ExportedState, LayerState, ServingEngine
from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, KVManifest, TransferAck

if TYPE_CHECKING:
    import torch

_T = TypeVar("_T")


class DecodePeer:
    """Instance B: `python -m prfaas.cli.verify --serve`: a KVReceiver and a request socket, both
    on 127.0.0.1, port 0. A sends the state with a KVSender and the request on the socket."""

    def __enter__(self) -> DecodePeer:
        from prfaas.transport.sender import KVSender

        token = secrets.token_hex(16)
        cmd = [sys.executable, "-m", "prfaas.cli.verify", "--serve"]
        env = {**os.environ, TOKEN_ENV: token}
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("port "):
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"decode peer did not start: {line!r}")
        _, request_port, kv_port = line.split()
        self.sock = socket.create_connection(("127.0.0.1", int(request_port)))
        self.kv_dest = f"127.0.0.1:{kv_port}"
        self._io = LoopThread()
        self._sender = KVSender(transport_config(token))
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # the peer may already be gone
            send_message(self.sock, {"op": "bye"})
        self.sock.close()
        with contextlib.suppress(Exception):  # closing must not hide the error that got us here
            self._io.run(self._sender.close(), timeout_s=10)
        self._io.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def stream_prefill(
        self, engine: ServingEngine, request: GenerateRequest, transfer_id: str
    ) -> ExportedState:
        """Prefill `request` on `engine`, handing each layer to the transport from the layer
        callback (as a prefill instance does); then finish the transfer with the final manifest.
        Returns the engine's export, whose bytes equal what was sent."""
        transfer = self._transport(self._sender.begin(self.kv_dest, transfer_id, request.req_id))

        def on_layer(_req_id: str, layer: LayerState) -> None:
            self._transport(transfer.send_layer(layer.entry, layer.buffers))

        engine.prefill([request], on_layer=on_layer)
        exported = engine.export(request.req_id, transfer_id=transfer_id)
        check_ack(self._transport(transfer.finish(exported.manifest)))
        return exported

    def send_state(self, manifest: KVManifest, views: Sequence[memoryview]) -> None:
        """One-shot transfer of a whole state (the negative controls' altered copies)."""
        check_ack(self._transport(self._sender.send(self.kv_dest, manifest, views)))

    def _transport(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return self._io.run(coro)
        except OSError as exc:  # refused or reset: the decode process is gone
            raise UserError(f"decode instance lost ({exc}); see its error above") from exc

    def decode(self, header: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
        """Ask B to decode the transfer `header["transfer_id"]` it received."""
        import torch

        try:
            send_message(self.sock, header)
            reply, payload = recv_message(self.sock)
        except OSError as exc:  # ConnectionError included: the decode process died
            raise UserError(f"decode instance lost ({exc}); see its error above") from exc
        if "error" in reply:
            raise UserError(f"decode instance: {reply['error']}")
        logits = torch.frombuffer(payload, dtype=torch.float32).view(reply["logits_shape"])
        return reply, logits


def check_ack(ack: TransferAck) -> None:
    if not ack.ok:
        raise UserError(f"KV transfer to the decode instance failed: {ack.error}")
