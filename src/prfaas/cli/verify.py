"""`prfaas verify`: prefill on one instance + decode on another must give one instance's answer.

For each architecture: instance A (this process) prefills a prompt and exports the state; the
manifest and the raw tensor bytes cross a real loopback TCP connection to instance B, a separate
process that rebuilds the same weights (checked by checksum), imports the state and decodes.
B's greedy tokens must equal an uninterrupted run on A, and the largest logit difference is
reported. Two negative controls must change B's output: decoding with an empty cache, and with
every conv / recurrent (linear) state zeroed.

The state moves through the project's transport (`prfaas.transport`: KVSender -> KVReceiver on
127.0.0.1, authenticated by a shared token generated per run and handed to B in its environment):
A streams each layer from the prefill's layer callback, as a prefill instance does, and B imports
what the receiver delivered complete and CRC-verified. Requests (which model, which control) and
B's answers (tokens, logits) use a small length-prefixed socket exchange (`send_message` /
`recv_message`) beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from prfaas.cli._output import add_json_flag, format_table, print_json
from prfaas.errors import UserError

_LEN = struct.Struct("<QQ")  # header bytes, payload bytes
_LINEAR_STATE_ATTRS = ("conv_states", "recurrent_states", "linear_cache")
_CONTROLS = ("empty_cache", "zeroed_linear_state")
_TOKEN_ENV = "PRFAAS_VERIFY_TOKEN"  # the transport's shared token, passed to B out of argv
_TRANSFER_TIMEOUT_S = 120.0  # waits on the loop thread; over the transport's 60 s deadline
_T = TypeVar("_T")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check that disaggregated prefill/decode gives the single-instance answer",
        description="Prefill on one instance, stream the state through the KV transport over "
        "loopback TCP to a second process, decode there, and compare with one uninterrupted "
        "instance (tokens, logits, negative controls). Exit 1 if any architecture fails.",
    )
    parser.add_argument("--arch", default=None, help="comma-separated tiny presets or model dirs")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--prompt-tokens", type=int, default=200, help="prompt length")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens to generate")
    parser.add_argument("--seed", type=int, default=0, help="weight and prompt seed")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


@dataclass
class ArchResult:
    arch: str
    identical: bool
    max_logit_diff: float
    controls_fired: bool
    controls: dict[str, bool | None]  # control -> output changed (None: not applicable)
    weights_match: bool
    transfer_bytes: int

    @property
    def ok(self) -> bool:
        return self.identical and self.controls_fired and self.weights_match


def run(args: argparse.Namespace) -> int:
    archs = _parse_archs(args.arch)
    if args.prompt_tokens < 2:
        raise UserError(f"--prompt-tokens must be >= 2, got {args.prompt_tokens}")
    if args.decode_tokens < 2:
        raise UserError(f"--decode-tokens must be >= 2, got {args.decode_tokens}")
    _quiet_transformers()
    _single_thread()  # both instances reduce in the same order, as on identical hardware
    with DecodePeer() as peer:
        results = [_verify_arch(peer, arch, args) for arch in archs]
    _report(results, args.json)
    return 0 if all(r.ok for r in results) else 1


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging

    hf_logging: Any = logging  # untyped in transformers
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


def _parse_archs(spec: str | None) -> list[str]:
    from pathlib import Path

    from prfaas.engine.presets import PRESETS

    if spec is None:
        return list(PRESETS)
    archs = [a.strip() for a in spec.split(",") if a.strip()]
    if not archs:
        raise UserError("--arch is empty")
    for arch in archs:
        if arch not in PRESETS and not (Path(arch) / "config.json").is_file():
            raise UserError(f"unknown arch {arch!r}; tiny presets: {', '.join(PRESETS)}")
    return archs


def _report(results: list[ArchResult], as_json: bool) -> None:
    if as_json:
        print_json([_result_dict(r) for r in results])
        return
    headers = ["arch", "identical", "max_logit_diff", "empty_cache", "zeroed_linear", "bytes", "ok"]
    rows = [
        [
            r.arch,
            r.identical,
            f"{r.max_logit_diff:.3g}",
            r.controls["empty_cache"],
            r.controls["zeroed_linear_state"],
            r.transfer_bytes,
            "PASS" if r.ok else "FAIL",
        ]
        for r in results
    ]
    print(format_table(headers, rows))


def _result_dict(r: ArchResult) -> dict[str, Any]:
    return {
        "arch": r.arch,
        "identical": r.identical,
        "max_logit_diff": r.max_logit_diff,
        "controls_fired": r.controls_fired,
        "controls": r.controls,
        "weights_match": r.weights_match,
        "transfer_bytes": r.transfer_bytes,
    }


# ---- requests and answers beside the transport -----------------------------------------------
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


# ---- both instances: an event loop thread for the transport ----------------------------------
class _LoopThread:
    """An asyncio loop on a daemon thread, so the synchronous torch code can use the transport."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="prfaas-verify-io")
        self._thread.daemon = True
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = _TRANSFER_TIMEOUT_S) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def _transport_config(token: str) -> Any:
    from prfaas.transport.config import TransportConfig

    return TransportConfig(token=token)


# ---- instance A (this process) ------------------------------------------------------------------
class DecodePeer:
    """Instance B: `python -m prfaas.cli.verify --serve`: a KVReceiver and a request socket, both
    on 127.0.0.1, port 0. A sends the state with a KVSender and the request on the socket."""

    def __enter__(self) -> DecodePeer:
        from prfaas.transport.sender import KVSender

        token = secrets.token_hex(16)
        cmd = [sys.executable, "-m", "prfaas.cli.verify", "--serve"]
        env = {**os.environ, _TOKEN_ENV: token}
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
        self._io = _LoopThread()
        self._sender = KVSender(_transport_config(token))
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

    def stream_prefill(self, engine: Any, request: Any, transfer_id: str) -> Any:
        """Prefill `request` on `engine`, handing each layer to the transport from the layer
        callback (as a prefill instance does); then finish the transfer with the final manifest.
        Returns the engine's export, whose bytes equal what was sent."""
        transfer = self._transport(self._sender.begin(self.kv_dest, transfer_id, request.req_id))

        def on_layer(_req_id: str, layer: Any) -> None:
            self._transport(transfer.send_layer(layer.entry, layer.buffers))

        engine.prefill([request], on_layer=on_layer)
        exported = engine.export(request.req_id, transfer_id=transfer_id)
        _check_ack(self._transport(transfer.finish(exported.manifest)))
        return exported

    def send_state(self, manifest: Any, views: Sequence[memoryview]) -> None:
        """One-shot transfer of a whole state (the negative controls' altered copies)."""
        _check_ack(self._transport(self._sender.send(self.kv_dest, manifest, views)))

    def _transport(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return self._io.run(coro)
        except OSError as exc:  # refused or reset: the decode process is gone
            raise UserError(f"decode instance lost ({exc}); see its error above") from exc

    def decode(self, header: dict[str, Any]) -> tuple[dict[str, Any], Any]:
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


def _check_ack(ack: Any) -> None:
    if not ack.ok:
        raise UserError(f"KV transfer to the decode instance failed: {ack.error}")


def _prompt(seed: int, num_tokens: int) -> tuple[int, ...]:
    import random

    rng = random.Random(seed)
    return tuple(rng.randrange(256) for _ in range(num_tokens))


def _verify_arch(peer: DecodePeer, arch: str, args: argparse.Namespace) -> ArchResult:
    import torch

    from prfaas.engine.loading import load_model, weights_checksum
    from prfaas.engine.runner import Engine
    from prfaas.messages import GenerateRequest, SamplingParams

    loaded = load_model(arch, args.dtype, args.seed)
    sampling = SamplingParams(max_tokens=args.decode_tokens, ignore_eos=True)
    request = GenerateRequest("verify", _prompt(args.seed, args.prompt_tokens), sampling)
    reference = Engine(loaded, record_logits=True)
    reference.generate([request])
    ref = reference.requests["verify"]
    ref_logits = torch.stack(ref.logits[1:])  # [decode_tokens - 1, vocab]

    transfer_id = f"verify-{arch}-{secrets.token_hex(4)}"
    exported = peer.stream_prefill(Engine(loaded), request, transfer_id)
    header = {
        "op": "decode",
        "arch": arch,
        "dtype": args.dtype,
        "seed": args.seed,
        "weights_checksum": weights_checksum(loaded.model),
        "sampling": sampling.to_dict(),
        "transfer_id": transfer_id,
    }
    reply, logits = peer.decode(header)
    tokens = [exported.manifest.first_token_id, *reply["tokens"]]
    identical = tokens == ref.output_token_ids and reply["weights_match"]
    diff = float((logits - ref_logits).abs().max()) if logits.shape == ref_logits.shape else 1e30
    controls = _run_controls(peer, header, exported, tokens)
    applicable = [fired for fired in controls.values() if fired is not None]
    return ArchResult(
        arch=arch,
        identical=identical,
        max_logit_diff=diff,
        controls_fired=bool(applicable) and all(applicable),
        controls=controls,
        weights_match=bool(reply["weights_match"]),
        transfer_bytes=exported.manifest.total_bytes,
    )


def _run_controls(
    peer: DecodePeer, header: dict[str, Any], exported: Any, tokens: list[int]
) -> dict[str, bool | None]:
    controls: dict[str, bool | None] = {}
    for control in _CONTROLS:
        payload = _control_payload(control, exported)
        if payload is None:
            controls[control] = None
            continue
        transfer_id = f"{header['transfer_id']}-{control}"
        manifest = replace(exported.manifest, transfer_id=transfer_id)
        peer.send_state(manifest, _tensor_views(manifest, payload))
        reply, _ = peer.decode({**header, "control": control, "transfer_id": transfer_id})
        controls[control] = [tokens[0], *reply["tokens"]] != tokens
    return controls


def _tensor_views(manifest: Any, payload: bytearray) -> list[memoryview]:
    whole = memoryview(payload)
    tensors = [t for layer in manifest.layers for t in layer.tensors]
    return [whole[t.offset_bytes : t.offset_bytes + t.num_bytes] for t in tensors]


def _control_payload(control: str, exported: Any) -> bytearray | None:
    payload = bytearray(b"".join(exported.buffers))
    if control == "empty_cache":
        return payload
    linear = [
        t
        for layer in exported.manifest.layers
        for t in layer.tensors
        if t.name.split("/")[1] in _LINEAR_STATE_ATTRS
    ]
    if not linear:
        return None
    for t in linear:
        payload[t.offset_bytes : t.offset_bytes + t.num_bytes] = bytes(t.num_bytes)
    return payload


# ---- instance B (the --serve process) ---------------------------------------------------------
class _StateInbox:
    """B's KVReceiver on its loop thread; `take` returns one delivered transfer's manifest and a
    copy of its tensors' bytes, and gives the pooled buffers back."""

    def __init__(self, io: _LoopThread, token: str) -> None:
        from prfaas.transport.receiver import KVReceiver

        self._io = io
        self._rx = KVReceiver(_transport_config(token), host="127.0.0.1", port=0)
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


def _serve() -> None:
    import torch

    _single_thread()
    _quiet_transformers()
    io = _LoopThread()
    inbox = _StateInbox(io, os.environ[_TOKEN_ENV])
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
                    reply, logits = _decode_request(header, manifest, payload, models)
                except UserError as exc:
                    send_message(conn, {"error": str(exc)})
                    continue
                send_message(conn, reply, [logits.contiguous().view(torch.uint8).numpy()])
    finally:
        inbox.close()
        io.close()


def _decode_request(
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


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
