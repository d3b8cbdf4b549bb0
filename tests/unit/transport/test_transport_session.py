"""Transfer state machine over an in-memory link: ACK only when complete and verified, NACK exact
gaps, refuse oversize transfers, free buffers on deadline expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transport_factories import make_manifest, views_by_layer

from prfaas.messages import KVManifest, TransferAck
from prfaas.transport.frames import (
    FrameDecoder,
    FrameError,
    FrameType,
    decode_control,
    encode_control,
    payload_header,
)
from prfaas.transport.pool import BufferPool
from prfaas.transport.ranges import PayloadSlice, RangeSet, plan_slices, slices_for_ranges
from prfaas.transport.session import Outcome, ReceiverSession

FRAME_BYTES = 1000


class InMemoryLink:
    """Sender-side encoding into one receiver session, with hooks to drop or corrupt frames."""

    def __init__(self, max_transfer_bytes: int = 1 << 24) -> None:
        self.pool = BufferPool(1 << 26)
        self.session = ReceiverSession("s", self.pool, max_transfer_bytes)
        self.decoder = FrameDecoder(self.session.place, FRAME_BYTES)
        self.outcomes: list[Outcome] = []

    def deliver(self, data: bytes, conn: int = 0, now: float = 0.0) -> None:
        for frame in self.decoder.feed(data):
            if frame.is_placed:
                self.session.end_write(frame.body)
            self.outcomes.append(self.session.handle(conn, frame, now))

    def begin(self, tag: int, manifest: KVManifest, deadline_s: float = 10.0) -> None:
        body = {
            "transfer_id": manifest.transfer_id,
            "req_id": manifest.req_id,
            "deadline_s": deadline_s,
        }
        self.deliver(encode_control(FrameType.BEGIN, tag, body))

    def layer_frames(self, tag: int, manifest: KVManifest, views: list[memoryview]) -> list[bytes]:
        out: list[bytes] = []
        for layer, layer_views in zip(
            manifest.layers, views_by_layer(manifest, views), strict=True
        ):
            out.append(encode_control(FrameType.LAYER, tag, layer.to_dict()))
            out.extend(encode_slice(tag, s) for s in plan_slices(layer, layer_views, FRAME_BYTES))
        return out

    def end(
        self, tag: int, manifest: KVManifest, epoch: int = 0, conns: tuple[int, ...] = (0,)
    ) -> None:
        body = {"manifest": manifest.to_dict(), "conns": list(conns)}
        self.deliver(encode_control(FrameType.END, tag, body, offset=epoch))

    def last_reply(self) -> tuple[FrameType, dict[str, object]]:
        replies = [r for o in self.outcomes for r in o.replies]
        frame = FrameDecoder(lambda h: None, 0).feed(replies[-1][1])[0]
        return frame.header.frame_type, decode_control(frame.body)


def encode_slice(tag: int, s: PayloadSlice) -> bytes:
    head = payload_header(tag, s.layer_index, s.tensor_index, s.offset_bytes, s.view)
    return head + bytes(s.view)


def assert_identical(manifest: KVManifest, views: list[memoryview], link: InMemoryLink) -> None:
    delivered = [d for o in link.outcomes for d in o.delivered]
    assert len(delivered) == 1
    got = delivered[0]
    tensors = [t for layer in manifest.layers for t in layer.tensors]
    for entry, view in zip(tensors, views, strict=True):
        assert got.tensor_view(entry) == view
    assert got.manifest == manifest


SIZES = [[2500, 10], [], [64], [4000, 4000]]


def test_complete_transfer_is_acked_and_byte_identical() -> None:
    manifest, views = make_manifest(SIZES)
    link = InMemoryLink()
    link.begin(1, manifest)
    for data in link.layer_frames(1, manifest, views):
        link.deliver(data)
    link.end(1, manifest)
    kind, body = link.last_reply()
    assert kind is FrameType.ACK and TransferAck.from_dict(body).ok
    assert_identical(manifest, views, link)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_any_lost_or_corrupt_frames_are_nacked_then_completed(data: st.DataObject) -> None:
    manifest, views = make_manifest(SIZES, seed=data.draw(st.integers(0, 100)))
    link = InMemoryLink()
    link.begin(1, manifest)
    frames = link.layer_frames(1, manifest, views)
    payload_ids = [i for i, f in enumerate(frames) if f[5] == FrameType.PAYLOAD]
    lost = set(data.draw(st.lists(st.sampled_from(payload_ids), min_size=1, max_size=4)))
    corrupt = data.draw(st.booleans())
    for i, frame in enumerate(frames):
        if i in lost:
            if not corrupt:
                continue
            frame = frame[:-1] + bytes([frame[-1] ^ 1])
        link.deliver(frame)
    link.end(1, manifest)
    kind, body = link.last_reply()
    assert kind is FrameType.NACK
    raw_ranges: list[list[int]] = body["ranges"]  # type: ignore[assignment]
    ranges = [(int(o), int(n)) for o, n in raw_ranges]
    assert sum(n for _, n in ranges) == sum(len(frames[i]) - 40 for i in lost)
    all_slices = [
        s
        for layer, lv in zip(manifest.layers, views_by_layer(manifest, views), strict=True)
        for s in plan_slices(layer, lv, FRAME_BYTES)
    ]
    for s in slices_for_ranges(all_slices, ranges):
        link.deliver(encode_slice(1, s))
    link.end(1, manifest, epoch=1)
    assert link.last_reply()[0] is FrameType.ACK
    assert_identical(manifest, views, link)


def test_end_waits_for_every_listed_connection() -> None:
    manifest, views = make_manifest([[100]])
    link = InMemoryLink()
    link.begin(1, manifest)
    for f in link.layer_frames(1, manifest, views):
        link.deliver(f)
    link.end(1, manifest, conns=(0, 1))
    assert not any(o.replies for o in link.outcomes)
    link.deliver(encode_control(FrameType.BEGIN, 1, {"transfer_id": "t1", "deadline_s": 1}), conn=1)
    body = {"manifest": manifest.to_dict(), "conns": [0, 1]}
    link.deliver(encode_control(FrameType.END, 1, body), conn=1)
    assert link.last_reply()[0] is FrameType.ACK


def test_oversize_transfer_is_refused_and_frees_nothing_twice() -> None:
    manifest, views = make_manifest([[600], [600]])
    link = InMemoryLink(max_transfer_bytes=1000)
    link.begin(1, manifest)
    for f in link.layer_frames(1, manifest, views):
        link.deliver(f)
    kind, body = link.last_reply()
    assert kind is FrameType.ACK and not body["ok"] and "limit" in str(body["error"])
    assert link.pool.in_use_bytes == 0
    assert link.session.transfers == {}


def test_deadline_expiry_frees_buffers() -> None:
    manifest, views = make_manifest([[5000], [5000]])
    link = InMemoryLink()
    link.begin(1, manifest, deadline_s=2.0)
    for f in link.layer_frames(1, manifest, views)[:3]:
        link.deliver(f)
    assert link.pool.in_use_bytes > 0
    assert link.session.expire(now=1.0).failed == []
    out = link.session.expire(now=2.5)
    assert out.failed == [("t1", "deadline exceeded")]
    assert link.pool.in_use_bytes == 0


def test_buffer_dropped_mid_write_is_reused_only_after_the_write_ends() -> None:
    manifest, views = make_manifest([[5000]])
    link = InMemoryLink()
    link.begin(1, manifest, deadline_s=1.0)
    link.deliver(encode_control(FrameType.LAYER, 1, manifest.layers[0].to_dict()))
    frame = link.layer_frames(1, manifest, views)[1]
    link.deliver(frame[:100])  # header placed, body being written (as on a reader thread)
    link.session.expire(now=2.0)
    assert link.pool.in_use_bytes > 0  # not reusable while a write may still land in it
    target = link.decoder.placed_body()
    assert target is not None
    link.session.end_write(target)
    link.session.expire(now=3.0)
    assert link.pool.in_use_bytes == 0


def test_release_returns_buffers_for_reuse() -> None:
    manifest, views = make_manifest([[5000], [300]])
    link = InMemoryLink()
    for tag in (1, 2):
        link.begin(tag, manifest)
        for f in link.layer_frames(tag, manifest, views):
            link.deliver(f)
        link.end(tag, manifest)
        link.outcomes[-1].delivered[0].release()
    assert link.pool.num_allocations == 2  # the second transfer reused both buffers
    assert link.pool.in_use_bytes == 0


def test_layer_before_begin_and_conflicting_layer_are_protocol_errors() -> None:
    manifest, _ = make_manifest([[100]])
    link = InMemoryLink()
    with pytest.raises(FrameError, match="before its BEGIN"):
        link.deliver(encode_control(FrameType.LAYER, 9, manifest.layers[0].to_dict()))
    link.begin(1, manifest)
    link.deliver(encode_control(FrameType.LAYER, 1, manifest.layers[0].to_dict()))
    other = make_manifest([[200]])[0].layers[0]
    with pytest.raises(FrameError, match="differently"):
        link.deliver(encode_control(FrameType.LAYER, 1, other.to_dict()))


def test_payload_outside_its_tensor_is_discarded() -> None:
    manifest, _ = make_manifest([[100, 100]])
    link = InMemoryLink()
    link.begin(1, manifest)
    link.deliver(encode_control(FrameType.LAYER, 1, manifest.layers[0].to_dict()))
    # tensor 0 spans [0, 100); a frame claiming [50, 150) for it must not be placed
    link.deliver(payload_header(1, 0, 0, 50, memoryview(b"x" * 100)) + b"x" * 100)
    assert link.session.transfers[1].verified.covered_bytes == 0


def test_range_set_merges_and_reports_gaps() -> None:
    r = RangeSet()
    for s, e in [(10, 20), (30, 40), (20, 25), (0, 5), (35, 50)]:
        r.add(s, e)
    assert r.gaps(0, 60) == [(5, 5), (25, 5), (50, 10)]
    assert r.covered_bytes == 5 + 15 + 20


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=30))
def test_range_set_matches_a_naive_model(adds: list[tuple[int, int]]) -> None:
    r, covered = RangeSet(), set[int]()
    for start, n in adds:
        r.add(start, start + n)
        covered.update(range(start, start + n))
    gaps = {b for off, n in r.gaps(0, 260) for b in range(off, off + n)}
    assert gaps == set(range(260)) - covered
    assert r.covered_bytes == len(covered)
