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
