"""The connector's worker side without vLLM: a producer gathers a request's blocks from real cache
tensors and sends them with the real transport over loopback; a consumer scatters them into
other block ids, or refuses and reports a failed load (another model, another layout, a
transfer that never comes, one that comes too late)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from polling import wait_until
from prfaas.messages import KVManifest
from prfaas.transport import ReceivedTransfer, TransportConfig
from prfaas.types import LayerKind
from prfaas.vllm.blocks import CacheLayer, layer_entry
from prfaas.vllm.worker import (
    ConsumerWorker,
    LoadJob,
    ModelIdentity,
    ProducerWorker,
    SendJob,
    TransferCounters,
    TransferLog,
)

NUM_BLOCKS = 16
NUM_TOKENS = 10  # blocks of 4 tokens: the prompt ends mid-block
WAIT_S = 30.0
LAYERS = {
    layer.name: layer
    for layer in (
        CacheLayer("model.layers.0.attn", 0, 0, LayerKind.FULL_ATTENTION, 4, 0, (2, 4, 8),
                   "bfloat16"),
        CacheLayer("model.layers.1.attn", 1, 1, LayerKind.SLIDING_WINDOW, 4, 6, (2, 4, 8),
                   "bfloat16"),
        CacheLayer("model.layers.2.linear_attn", 2, 2, LayerKind.LINEAR_ATTENTION, 64, 0,
                   (1, 1, 96), "int8"),
    )
}  # fmt: skip
IDENTITY = ModelIdentity("tiny", "f" * 64, LAYERS)
PRODUCER_BLOCKS = ([1, 2, 3], [0, 5, 6], [7])  # the SWA group's first block already freed
CONSUMER_BLOCKS = ([3, 4, 5], [0, 8, 9], [2])


def _caches(fill: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    caches = {}
    for layer in LAYERS.values():
        shape = (NUM_BLOCKS, *layer.block_shape)
        if layer.dtype == "int8":
            caches[layer.name] = torch.randint(-128, 127, shape, dtype=torch.int8,
                                               generator=generator)  # fmt: skip
        else:
            caches[layer.name] = torch.randn(shape, generator=generator).to(torch.bfloat16)
        if fill == "zeros":
            caches[layer.name].zero_()
    return caches


def _config() -> TransportConfig:
    return TransportConfig(token="test-token", num_connections=1)


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[ProducerWorker]:
    worker = ProducerWorker(
        IDENTITY, _caches("random"), _config(), TransferCounters(), TransferLog(None)
    )
    yield worker
    worker.close()


def _consumer(tmp_path: Path, identity: ModelIdentity, timeout_s: float = WAIT_S) -> ConsumerWorker:
    return ConsumerWorker(
        identity,
        _caches("zeros"),
        _config(),
        ("127.0.0.1", 0),
        timeout_s,
        TransferCounters(),
        TransferLog(str(tmp_path / "rx.jsonl")),
    )


def _send(producer: ProducerWorker, dest: str, transfer_id: str) -> None:
    job = SendJob("req-p", transfer_id, dest, NUM_TOKENS, PRODUCER_BLOCKS)
    producer.start([job])
    producer.save_layer("model.layers.0.attn")  # as the forward's attention hooks would
    producer.save_layer("model.layers.1.attn")
    producer.finish_step()
    done: set[str] = set()
    wait_until(lambda: bool(done.update(producer.finished_sending({"req-p"})) or done),
               WAIT_S, "the transfer's answer")  # fmt: skip


def _load(consumer: ConsumerWorker, transfer_id: str) -> set[str]:
    consumer.start([LoadJob("req-c", transfer_id, NUM_TOKENS, 0, CONSUMER_BLOCKS)])
    finished: set[str] = set()
    failed: set[str] = set()

    def settled() -> bool:
        now_finished, now_failed = consumer.poll()
        finished.update(now_finished)
        failed.update(now_failed)
        return "req-c" in finished

    wait_until(settled, WAIT_S, "the load to settle")
    return failed


def _log(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "rx.jsonl").read_text().splitlines()]


def test_blocks_arrive_at_the_consumers_block_ids(producer: ProducerWorker, tmp_path: Path) -> None:
    consumer = _consumer(tmp_path, IDENTITY)
    try:
        _send(producer, consumer.address, "t-ok")
        assert _load(consumer, "t-ok") == set()
        full_c, swa_c, state_c = consumer._caches.values()
        full_p, swa_p, state_p = producer._caches.values()
        assert torch.equal(full_c[[3, 4, 5]], full_p[[1, 2, 3]])  # all 3 blocks of 10 tokens
        assert torch.equal(swa_c[[8, 9]], swa_p[[5, 6]])  # tokens 5..9 of the window
        assert torch.equal(state_c[2], state_p[7])  # the one state block
        assert not swa_c[0].any() and not full_c[6].any()  # nothing else written
        record = _log(tmp_path)[0]
        assert record["event"] == "loaded" and record["num_blocks_written"] == 6
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (replace(IDENTITY, fingerprint="0" * 64), "is of another model"),
        (
            replace(
                IDENTITY,
                layers={**LAYERS, "model.layers.0.attn": replace(
                    LAYERS["model.layers.0.attn"], block_shape=(2, 4, 16))},
            ),
            "block_shape: sent [2, 4, 8], here [2, 4, 16]",
        ),
    ],
    ids=["other-model", "other-layout"],
)  # fmt: skip
def test_a_transfer_of_another_model_or_layout_is_refused(
    producer: ProducerWorker, tmp_path: Path, identity: ModelIdentity, reason: str
) -> None:
    consumer = _consumer(tmp_path, identity)
    try:
        _send(producer, consumer.address, "t-other")
        assert _load(consumer, "t-other") == {"req-c"}
        record = _log(tmp_path)[0]
        assert record["event"] == "load_failed" and reason in record["error"]
        assert not any(cache.any() for cache in consumer._caches.values())
    finally:
        consumer.close()


def test_a_transfer_that_never_comes_fails_the_load_and_a_late_one_is_dropped(
    producer: ProducerWorker, tmp_path: Path
) -> None:
    consumer = _consumer(tmp_path, IDENTITY, timeout_s=0.2)
    try:
        assert _load(consumer, "t-late") == {"req-c"}
        assert "no transfer within load_timeout_s=0.2" in _log(tmp_path)[0]["error"]
        _send(producer, consumer.address, "t-late")  # now it comes: dropped, not kept
        counters = consumer._counters
        wait_until(lambda: counters.values.get("num_late_transfers") == 1, WAIT_S,
                   "the late transfer to be dropped")  # fmt: skip
        assert not consumer._arrived
    finally:
        consumer.close()


def test_a_manifest_that_lies_about_its_payload_fails_the_load_not_the_engine(
    tmp_path: Path,
) -> None:
    """A transfer whose tensor shape does not fit its bytes (or whose layer has no buffer) is a
    failed load: an exception here would stop vLLM's worker, and with it every request."""
    consumer = _consumer(tmp_path, IDENTITY)
    try:
        entries, buffers, starts, offset = [], {}, {}, 0
        for layer in LAYERS.values():
            positions = [0, 1] if layer.index == 0 else [0]  # layer 0 says 2 blocks...
            entries.append(layer_entry(layer, positions, offset, NUM_TOKENS))
            buffers[layer.index] = memoryview(bytearray(layer.block_bytes))  # ...carries 1
            starts[layer.index] = offset
            offset += entries[-1].num_bytes
        manifest = KVManifest("t-bad", "r", "tiny", 3, tuple(entries), NUM_TOKENS, None,
                              model_fingerprint=IDENTITY.fingerprint)  # fmt: skip
        consumer._on_transfer(ReceivedTransfer(manifest, buffers, starts))
        assert _load(consumer, "t-bad") == {"req-c"}
        assert "a malformed transfer" in _log(tmp_path)[0]["error"]
    finally:
        consumer.close()


def test_a_transfer_no_request_claims_is_freed(producer: ProducerWorker, tmp_path: Path) -> None:
    consumer = ConsumerWorker(
        IDENTITY, _caches("zeros"), _config(), ("127.0.0.1", 0), WAIT_S, TransferCounters(),
        TransferLog(None), unclaimed_timeout_s=0.05,
    )  # fmt: skip
    try:
        _send(producer, consumer.address, "t-nobody")

        def dropped() -> bool:
            consumer.poll()
            return consumer._counters.values.get("num_unclaimed_transfers") == 1

        wait_until(dropped, WAIT_S, "the unclaimed transfer to be dropped")
        assert not consumer._arrived
        pool = consumer._receiver.pool
        wait_until(lambda: pool.in_use_bytes == 0, WAIT_S, "its buffers back in the pool")
    finally:
        consumer.close()


def test_sends_and_loads_are_counted(producer: ProducerWorker, tmp_path: Path) -> None:
    consumer = _consumer(tmp_path, IDENTITY)
    try:
        _send(producer, consumer.address, "t-counted")
        assert _load(consumer, "t-counted") == set()
        sent, loaded = producer._counters.take(), consumer._counters.take()
        assert sent == {"num_sent": 1, "sent_bytes": loaded["loaded_bytes"]}
        assert loaded["num_loaded"] == 1 and loaded["loaded_bytes"] > 0
        assert producer._counters.take() == {}  # taken once: the next report starts from zero
    finally:
        consumer.close()
