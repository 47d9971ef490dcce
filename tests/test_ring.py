"""The ring: a corrupt slot or header is reported, never misread and never a hang."""

from __future__ import annotations

import struct

import pytest

import shmbus
from shmbus import _ring

pytestmark = pytest.mark.timeout(30)


def _slot_offset(sub: shmbus.Subscription, seq: int) -> int:
    return _ring.HEADER_SIZE + (seq % sub.capacity) * _ring.SLOT_SIZE


@pytest.mark.parametrize("damage", [
    ("seq", struct.pack("<Q", 12345)),         # a slot that holds another event
    ("kind", struct.pack("<I", 7)),             # an unknown kind of slot
    ("length", struct.pack("<I", 10_000)),      # a length past the slot's end
])
def test_a_corrupt_slot_is_reported_and_not_misread(damage):
    field, raw = damage
    offset = {"seq": 0, "kind": 8, "length": 12}[field]
    with shmbus.EventEmitter("slots") as em, em.subscribe() as sub:
        em.emit("fine")
        em.emit("to be damaged")
        assert sub.recv(timeout=1) == "fine"
        at = _slot_offset(sub, 1) + offset
        sub._ring.buf[at : at + len(raw)] = raw
        with pytest.raises(shmbus.IncompatibleBus, match="corrupt"):
            sub.recv(timeout=1)


def test_a_ring_from_another_version_is_refused_by_the_emitter():
    with shmbus.EventEmitter("versions") as em, em.subscribe() as good, \
            em.subscribe() as foreign:
        struct.pack_into("<I", foreign._ring.buf, 8, _ring.LAYOUT_VERSION + 1)
        assert em.emit("only to the good one") == 1
        assert good.recv(timeout=1) == "only to the good one"


def test_a_truncated_ring_is_refused_by_the_emitter():
    with shmbus.EventEmitter("short") as em, em.subscribe() as good, \
            em.subscribe() as short:
        # A header claiming more slots than the segment holds.
        struct.pack_into("<I", short._ring.buf, 12, short.capacity * 1000)
        assert em.emit("only to the good one") == 1
        assert good.recv(timeout=1) == "only to the good one"


# -- batches: many events pickled as one list, laid across their slots --------------------


def test_plain_events_go_as_one_batch_and_come_out_one_by_one():
    with shmbus.EventEmitter("batched", capacity=64) as em, em.subscribe() as sub:
        events = [{"i": i, "text": "x" * i} for i in range(16)]  # a chunk of 64 // 4
        em.emit_many(events)
        kind, count, _ = sub._reader.slot(0)
        assert (kind, count) == (_ring.KIND_BATCH, 16)  # one slot header for all 16
        assert [sub.recv(timeout=1) for _ in range(16)] == events


def test_a_batch_that_runs_past_the_rings_end_arrives_whole():
    with shmbus.EventEmitter("wrap", capacity=8) as em, em.subscribe() as sub:
        em.emit_many(range(5))  # slots 0..4; chunks of 8 // 4 = 2
        assert sub.recv_many(10, timeout=1) == [0, 1, 2, 3, 4]
        big = [{"n": n, "pad": "y" * 300} for n in range(8)]  # 2 events: more than a slot
        em.emit_many(big)  # chunks from slot 5 on: 5-6, 7-0 (across the end), 1-2, 3-4
        assert sub._reader.slot(7)[:2] == (_ring.KIND_BATCH, 2)
        got = []
        while len(got) < 8:
            got += sub.recv_many(3, timeout=1)
        assert got == big


def test_batches_and_single_events_mix_in_one_order_for_every_reader():
    with shmbus.EventEmitter("mixed", capacity=32) as em, em.subscribe() as one, \
            em.subscribe(capacity=256) as many:  # room for all 160: it reads at the end
        expected = []
        for round_ in range(20):
            em.emit_many(range(round_ * 10, round_ * 10 + 7))
            em.emit(("single", round_))
            expected += [*range(round_ * 10, round_ * 10 + 7), ("single", round_)]
            assert [one.recv(timeout=1) for _ in range(8)] == expected[-8:]
        got = []
        while len(got) < len(expected):
            got += many.recv_many(5, timeout=1)
        assert got == expected


def test_a_raw_read_of_a_batch_gives_each_event_its_number():
    with shmbus.EventEmitter("rawbatch") as em, em.subscribe() as sub:
        em.emit("first")
        em.emit_many([{"k": k} for k in range(5)])
        raw = sub.recv_raw(10, timeout=1)
        assert [r.seq for r in raw] == list(range(6))
        assert [r.decode() for r in raw] == ["first", *({"k": k} for k in range(5))]
