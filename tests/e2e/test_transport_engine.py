"""Disaggregation through the project's own transport: the real engine's prefill streams each layer
from its layer callback over KVSender/KVReceiver on 127.0.0.1, a second Engine imports what arrived
and must decode the same greedy tokens as an uninterrupted engine. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from prfaas.bench.shaper import LinkShape, ShapedProxy
from prfaas.engine import Engine, LayerState, load_model
from prfaas.messages import GenerateRequest, KVManifest, SamplingParams
from prfaas.transport.config import TransportConfig
from prfaas.transport.receiver import KVReceiver
from prfaas.transport.sender import KVSender
from prfaas.transport.session import ReceivedTransfer

TOKEN = "engine-e2e-token"
SAMPLING = SamplingParams(max_tokens=8, ignore_eos=True)
PROMPT = tuple(b"Prefill here, decode there: the KV state crosses the link layer by layer. " * 4)


def received_tensors(got: ReceivedTransfer) -> list[bytes]:
    """One copy per tensor: the pooled buffers go back to the receiver's pool after import."""
    return [bytes(got.tensor_view(t)) for layer in got.manifest.layers for t in layer.tensors]


async def stream_prefill(
    engine: Engine, request: GenerateRequest, rate_bytes_per_s: float | None
) -> tuple[KVManifest, ReceivedTransfer, list[float], float]:
    """Prefill on a worker thread, sending each layer from the layer callback; return the exported
    manifest, what the receiver delivered, when each layer was handed over, and prefill's end.

    Over a shaped link, the callback of the last layer first waits (bounded) until the earlier
    layers' bytes have crossed the link: they must be on the wire while prefill is still running.
    """
    cfg = TransportConfig(token=TOKEN, num_connections=2, frame_bytes=64 * 1024, deadline_s=20)
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        rx = await stack.enter_async_context(KVReceiver(cfg))
        tx = await stack.enter_async_context(KVSender(cfg))
        dest, proxy = rx.address, None
        if rate_bytes_per_s is not None:
            host, port = dest.rsplit(":", 1)
            shape = LinkShape(rate_bytes_per_s=rate_bytes_per_s)
            proxy = await stack.enter_async_context(ShapedProxy(host, int(port), shape))
            dest = proxy.address
        transfer = await tx.begin(dest, "xfer-" + request.req_id, request.req_id)
        handed_at: list[float] = []
        last_layer = len(engine.kinds) - 1

        def on_layer(req_id: str, state: LayerState) -> None:  # on the prefill thread
            assert req_id == request.req_id
            if proxy is not None and state.entry.layer_index == last_layer:
                wait_forwarded(proxy, state.entry.tensors[0].offset_bytes, timeout_s=10)
            coro = transfer.send_layer(state.entry, state.buffers)
            asyncio.run_coroutine_threadsafe(coro, loop).result(10)
            handed_at.append(time.perf_counter())

        await asyncio.to_thread(engine.prefill, [request], on_layer)
        prefill_done_at = time.perf_counter()
        exported = engine.export(request.req_id, transfer_id=transfer.transfer_id)
        ack = await transfer.finish(exported.manifest)
        assert ack.ok, ack.error
        got = await asyncio.wait_for(rx.get(), 10)
    return exported.manifest, got, handed_at, prefill_done_at


def wait_forwarded(proxy: ShapedProxy, num_bytes: int, timeout_s: float) -> None:
    """Block this (prefill) thread until the link has carried `num_bytes`, or fail."""
    give_up_at = time.monotonic() + timeout_s
    while proxy.num_forwarded_bytes < num_bytes:
        assert time.monotonic() < give_up_at, "earlier layers were not sent during prefill"
        time.sleep(0.002)


def decode_imported(engine: Engine, manifest: KVManifest, buffers: list[bytes]) -> list[int]:
    state = engine.import_(manifest, buffers, SAMPLING, copy=True)
    while engine.has_unfinished():
        engine.step()
    return list(state.output_token_ids)


@pytest.mark.parametrize("preset", ["qwen3_next", "mimo_v2_flash"])
def test_streamed_layers_decode_like_the_uninterrupted_engine(preset: str) -> None:
    loaded = load_model(preset, "fp32", seed=0)
    reference = Engine(loaded).generate([GenerateRequest("ref", PROMPT, SAMPLING)])["ref"]
    request = GenerateRequest("streamed", PROMPT, SAMPLING)
    prefill_engine = Engine(loaded)

    async def scenario() -> tuple[KVManifest, list[bytes], KVManifest, list[float], float]:
        async with asyncio.timeout(30):
            manifest, got, handed_at, done_at = await stream_prefill(prefill_engine, request, None)
            tensors = received_tensors(got)
            got.release()
            return manifest, tensors, got.manifest, handed_at, done_at

    manifest, tensors, received_manifest, handed_at, _ = asyncio.run(scenario())
    assert received_manifest == manifest
    assert len(handed_at) == manifest.num_layers  # one send_layer per layer, from the callback
    exported = prefill_engine.export(request.req_id)
    assert tensors == [bytes(b) for b in exported.buffers]  # byte-identical state
    tokens = decode_imported(Engine(loaded), received_manifest, tensors)
    assert tokens == reference
    assert len(tokens) == SAMPLING.max_tokens


def test_layers_are_on_the_wire_before_prefill_ends() -> None:
    """Over a slow shaped link, the earlier layers cross the link while the last layer is still
    being computed, and the imported state still decodes like the uninterrupted engine."""
    loaded = load_model("qwen3_next", "fp32", seed=0)
    reference = Engine(loaded).generate([GenerateRequest("ref", PROMPT, SAMPLING)])["ref"]
    request = GenerateRequest("slow", PROMPT, SAMPLING)

    async def scenario() -> tuple[Any, ...]:
        async with asyncio.timeout(30):
            result = await stream_prefill(Engine(loaded), request, rate_bytes_per_s=4e6)
            manifest, got, handed_at, done_at = result
            tensors = received_tensors(got)
            got.release()
            return manifest, tensors, handed_at, done_at

    manifest, tensors, handed_at, prefill_done_at = asyncio.run(scenario())
    assert handed_at[0] < handed_at[-1] <= prefill_done_at
    assert decode_imported(Engine(loaded), manifest, tensors) == reference
