"""The ring protocol's contract, held by both cores: `_protocol` (Python) and `_ringcore` (C).

Each test builds a real control block and real rings in shared memory, drives `Fanout` and
`Reader` directly, and runs once per core (the compiled one is skipped, with the reason,
where it was not built). The last tests pair the two cores on one ring, in both
directions: they share a layout and doorbell rules, not just an API.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import posix_ipc
import pytest

import shmbus
from shmbus import _codec, _control, _names, _platform, _protocol, _ring
from shmbus._errors import DeserializationError

pytestmark = pytest.mark.timeout(30)



def tokens(sem) -> int:
    """How many tokens `sem` holds, counted by taking them and giving them back (its
    `value` does not exist where macOS's rules are played)."""
    count = 0
    while True:
        try:
            sem.acquire(0)
        except posix_ipc.BusyError:
            break
        count += 1
    for _ in range(count):
        sem.release()
    return count

def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("shmbus._ringcore")
    except ImportError:
        return None


_RINGCORE = _compiled()
_NOT_BUILT = pytest.mark.skipif(_RINGCORE is None, reason="shmbus._ringcore was not built")
CORES = [pytest.param(_protocol, id="python"),
         pytest.param(_RINGCORE, id="c", marks=_NOT_BUILT)]
PAIRS = [pytest.param(_protocol, _RINGCORE, id="python-emitter-c-reader", marks=_NOT_BUILT),
         pytest.param(_RINGCORE, _protocol, id="c-emitter-python-reader", marks=_NOT_BUILT)]
VALUES = pytest.mark.skipif(not posix_ipc.SEMAPHORE_VALUE_SUPPORTED,
                            reason="this platform cannot read a semaphore's value")
UNLOADABLE = b"\x80\x05\x8c\x0bno_such_mod\x94\x8c\x01X\x94\x93\x94."
"""A pickle naming a class in a module that does not exist: `pickle.loads` refuses it."""


@dataclass
class Bus:
    """A control block and rings, made as the registry makes them, unlinked at the end."""

    token: str
    control: _control.ControlBlock
    rings: list[_ring.Ring]

    def ring(self, capacity: int, start: int = 0) -> _ring.Ring:
        ring = _ring.Ring.create(self.token, len(self.rings), capacity, _ring.SLOT_SIZE)
        ring.adopt(start)
        self.rings.append(ring)
        return ring


@pytest.fixture
def bus() -> Iterator[Bus]:
    token = os.urandom(4).hex()
    mapping = _platform.create_segment(_names.control_name(token), _control.SIZE)
    made = Bus(token, _control.ControlBlock.initialize(mapping, _ring.SLOT_SIZE, 256, 1 << 20),
               [])
    try:
        yield made
    finally:
        for ring in made.rings:
            ring.detach()
            _ring.unlink_ring(token, ring.sub_id)
        made.control.close()
        _platform.unlink_segment(_names.control_name(token))


def take(reader: Any, max_n: int = 100, loads: Any = pickle.loads,
         load_large: Any = None, large_limit: int = 1 << 20) -> list[Any]:
    into: list[Any] = []
    taken = reader.take(into, max_n, loads, _codec.decode, load_large or _no_large,
                        large_limit)
    assert taken == len(into)
    return into


def _no_large(seq: int, kind: int, ref: bytes) -> Any:
    raise AssertionError(f"no large event was sent, but event {seq} is one")


def publish(fanout: Any, *events: Any) -> int:
    """Publish `events`, one by one (inline), as the emitter does."""
    reached = 0
    for event in events:
        reached = fanout.publish_inline(pickle.dumps(event, 5))
    return reached


# -- events in, events out -------------------------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_events_come_out_once_in_order_and_move_the_counters(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    assert len(fanout) == 1 and reader.ready() is None
    assert publish(fanout, "a", {"b": 2}) == 1
    block = _ring.inline_slot(2, pickle.dumps(3.5, 5))
    assert fanout.publish(block, 1, len(block) - _ring.SLOT_HEADER_SIZE) == 1
    assert fanout.committed == 3 and bus.control.committed == 3
    assert reader.ready() == 0 and reader.available() == 3
    assert take(reader, max_n=2) == ["a", {"b": 2}]
    assert reader.tail == 2 and ring.tail == 2 and reader.ready() == 2
    assert take(reader) == [3.5]
    assert take(reader) == [] and reader.ready() is None
    assert bus.control.words[_control.BYTES_WORD] == 3 * 0 + sum(
        len(pickle.dumps(e, 5)) for e in ("a", {"b": 2}, 3.5))


@pytest.mark.parametrize("core", CORES)
def test_a_ring_adopted_later_starts_at_its_start(core: ModuleType, bus: Bus):
    early, late = bus.ring(4), bus.ring(4, start=2)
    fanout = core.Fanout(bus.control)
    fanout.add(early, 0)
    publish(fanout, 0, 1)
    fanout.add(late, 2)
    publish(fanout, 2, 3)
    reader = core.Reader(late, bus.control)
    assert reader.start == 2 and reader.ready() == 2
    assert take(reader) == [2, 3]
    assert take(core.Reader(early, bus.control)) == [0, 1, 2, 3]


@pytest.mark.parametrize("core", CORES)
def test_a_full_ring_refuses_the_whole_publish_everywhere(core: ModuleType, bus: Bus):
    roomy, small = bus.ring(8), bus.ring(2)
    fanout = core.Fanout(bus.control)
    fanout.add(roomy, 0)
    fanout.add(small, 0)
    assert publish(fanout, 0, 1) == 2
    assert not fanout.has_room(small.sub_id, 2) and fanout.has_room(roomy.sub_id, 2)
    assert fanout.unread(small.sub_id, 2) == 2
    before = bytes(roomy.buf[_ring.HEADER_SIZE:])
    assert publish(fanout, 2) == -1 - small.sub_id
    assert fanout.committed == 2
    assert bytes(roomy.buf[_ring.HEADER_SIZE:]) == before  # nothing written anywhere
    assert take(core.Reader(small, bus.control), max_n=1) == [0]
    assert fanout.has_room(small.sub_id, 2) and fanout.unread(small.sub_id, 2) == 1
    assert publish(fanout, 2) == 2
    assert take(core.Reader(roomy, bus.control)) == [0, 1, 2]


@pytest.mark.parametrize("core", CORES)
def test_oldest_unread_follows_tail_and_pinned(core: ModuleType, bus: Bus):
    ring = bus.ring(4, start=10)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    bus.control.commit(10)
    fanout.add(ring, 10)
    publish(fanout, 10, 11)
    assert fanout.oldest_unread(ring.sub_id) == 10
    reader.pin(10)
    assert take(reader) == [10, 11]
    assert fanout.oldest_unread(ring.sub_id) == 10  # read, but still read in place
    reader.pin(_ring.NO_PIN)
    assert fanout.oldest_unread(ring.sub_id) == 12


@pytest.mark.parametrize("core", CORES)
def test_a_batch_past_the_rings_end_comes_out_whole(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 0, 1, 2)
    assert take(reader) == [0, 1, 2]
    events = [{"n": n, "pad": chr(ord("a") + n) * 300} for n in range(3, 6)]  # not memoized
    batch = pickle.dumps(events, 5)
    assert _ring.batch_fits(3, batch) and len(batch) > _ring.SLOT_SIZE  # over two slots
    assert fanout.publish(_ring.batch_slot(3, 3, batch), 3, len(batch)) == 1
    assert take(reader, max_n=1) == events  # a batch whole, even past max_n
    assert reader.tail == 6


@pytest.mark.parametrize("core", CORES)
def test_a_batch_fills_the_ring_by_its_count(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout = core.Fanout(bus.control)
    fanout.add(ring, 0)
    batch = pickle.dumps([1, 2, 3], 5)
    assert fanout.publish(_ring.batch_slot(0, 3, batch), 3, len(batch)) == 1
    assert publish(fanout, 4) == 1
    assert publish(fanout, 5) == -1 - ring.sub_id  # four events held: full


# -- what cannot be decoded, and interruptions -------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_an_undecodable_event_is_reported_alone_and_consumed(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 1, 2)
    fanout.publish_inline(UNLOADABLE)
    publish(fanout, 4)
    assert take(reader) == [1, 2]  # stops before it: reported by the next call
    alone = take(reader)
    assert len(alone) == 1 and isinstance(alone[0], _protocol.Undecodable)
    assert isinstance(alone[0].error, DeserializationError)
    assert "no_such_mod" in str(alone[0].error)
    assert take(reader) == [4]


@pytest.mark.parametrize("core", CORES)
def test_a_real_interruption_in_loads_goes_on_once_the_taken_are_consumed(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, "a", "b", "c", "d")
    calls = []

    def interrupted_once(data: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C landing in the unpickler
        return pickle.loads(data)

    into: list[Any] = []
    with pytest.raises(KeyboardInterrupt):
        reader.take(into, 10, interrupted_once, _codec.decode, _no_large, 1 << 20)
    assert into == ["a", "b"] and reader.tail == 2 and ring.tail == 2
    assert take(reader) == ["c", "d"]  # the interrupted one was not consumed


@pytest.mark.parametrize("core", CORES)
def test_an_event_that_raises_keyboardinterrupt_itself_is_undecodable(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, "a")
    fanout.publish_inline(pickle.dumps(_Interrupting(), 5))
    assert take(reader) == ["a"]
    alone = take(reader)
    assert len(alone) == 1 and isinstance(alone[0], _protocol.Undecodable)


class _Interrupting:
    """Unpickling it raises KeyboardInterrupt, every time: the event's doing."""

    def __reduce__(self) -> Any:
        return (_interrupt, ())


def _interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("core", CORES)
def test_a_corrupt_slot_is_reported_and_nothing_consumed(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, "a", "b")
    struct.pack_into("<Q", ring.buf, _ring.HEADER_SIZE + _ring.SLOT_SIZE, 999)
    assert take(reader, max_n=1) == ["a"]
    into: list[Any] = []
    with pytest.raises(shmbus.IncompatibleBus, match="corrupt"):
        reader.take(into, 10, pickle.loads, _codec.decode, _no_large, 1 << 20)
    assert into == [] and reader.tail == 1


# -- large events ---------------------------------------------------------------------


def _large(seq: int, size: int) -> bytes:
    ref = struct.pack("<QQQ", 7, 0, size)  # where it lies, then its size (`large_length`)
    return _ring.large_slot(seq, _ring.KIND_ARENA, ref)


@pytest.mark.parametrize("core", CORES)
def test_large_events_are_loaded_by_the_callback_up_to_the_limit(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    for seq in range(3):
        slot = _large(seq, 600)
        assert fanout.publish(slot, 1, 600) == 1
    loaded = []

    def load_large(seq: int, kind: int, ref: bytes) -> Any:
        loaded.append((seq, kind, _ring.large_length(ref)))
        return f"large {seq}"

    # The limit is looked at before each event: 0 and 600 are under 1000, 1200 is not.
    assert take(reader, load_large=load_large, large_limit=1000) == ["large 0", "large 1"]
    assert loaded == [(0, _ring.KIND_ARENA, 600), (1, _ring.KIND_ARENA, 600)]
    assert take(reader, load_large=load_large, large_limit=1000) == ["large 2"]


@pytest.mark.parametrize("core", CORES)
def test_a_large_event_that_cannot_be_loaded_is_undecodable(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    fanout.publish(_large(0, 100), 1, 100)

    def refuse(seq: int, kind: int, ref: bytes) -> Any:
        raise DeserializationError("cannot load it here")

    alone = take(reader, load_large=refuse)
    assert len(alone) == 1 and isinstance(alone[0], _protocol.Undecodable)
    assert reader.tail == 1


# -- doorbells -------------------------------------------------------------------------


@VALUES
@pytest.mark.parametrize("core", CORES)
def test_a_subscribers_doorbell_is_posted_only_while_it_sleeps_and_once_per_wait(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 0)
    assert tokens(ring.data) == 0  # nobody sleeps: nothing is posted
    assert take(reader) == [0]
    assert reader.before_wait() is None  # flag up, nothing there
    publish(fanout, 1, 2)
    assert tokens(ring.data) == 1  # once for this wait, not once per event
    reader.after_wait()
    publish(fanout, 3)
    assert tokens(ring.data) == 1
    assert reader.before_wait() == 1  # something there already: look, do not sleep
    reader.after_wait()
    assert reader.before_wait() == 1
    publish(fanout, 4)
    assert tokens(ring.data) == 2  # a new wait is posted again
    fanout.repost()
    assert tokens(ring.data) == 3  # even if it was posted for this wait already
    reader.after_wait()


@VALUES
@pytest.mark.parametrize("core", CORES)
def test_the_emitters_doorbell_is_posted_only_while_it_sleeps_and_once_per_wait(
        core: ModuleType, bus: Bus):
    ring = bus.ring(2)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 0, 1)
    start = tokens(ring.space)
    assert take(reader, max_n=1) == [0]
    assert tokens(ring.space) == start  # the emitter does not sleep: nothing is posted
    fanout.before_wait(ring.sub_id)
    publish(fanout, 2)
    assert take(reader, max_n=1) == [1]
    assert tokens(ring.space) == start + 1
    assert take(reader, max_n=1) == [2]
    assert tokens(ring.space) == start + 1  # once per wait
    fanout.after_wait(ring.sub_id)
    fanout.after_wait(12345)  # a ring that is gone: nothing to lower


@pytest.mark.parametrize("core", CORES)
def test_wanting_names_the_subscribers_listening_on_their_wake_pipe(core: ModuleType,
                                                                  bus: Bus):
    quiet, listening = bus.ring(4), bus.ring(4)
    fanout = core.Fanout(bus.control)
    fanout.add(quiet, 0)
    fanout.add(listening, 0)
    publish(fanout, 0)
    assert list(fanout.wanting) == []
    listening.flags[_ring.SUB_WAITING] = 1
    publish(fanout, 1)
    assert list(fanout.wanting) == [listening.sub_id]
    listening.flags[_ring.SUB_WAITING] = 0
    publish(fanout, 2)
    assert list(fanout.wanting) == []


@pytest.mark.parametrize("core", CORES)
def test_reader_sees_the_emitter_waiting_on_its_wake_pipe(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 0, 1)
    take(reader, max_n=1)
    assert not reader.emitter_waiting
    ring.flags[_ring.EMITTER_WAITING] = 1
    reader.advance(1)
    assert reader.emitter_waiting


# -- membership and closing --------------------------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_a_removed_ring_is_no_longer_written(core: ModuleType, bus: Bus):
    kept, gone = bus.ring(4), bus.ring(1)
    fanout = core.Fanout(bus.control)
    fanout.add(kept, 0)
    fanout.add(gone, 0)
    publish(fanout, 0)
    fanout.remove(gone.sub_id)
    fanout.remove(gone.sub_id)  # twice: nothing happens
    assert len(fanout) == 1
    assert publish(fanout, 1, 2) == 1  # the full ring is not in the way any more
    with pytest.raises(KeyError):
        fanout.has_room(gone.sub_id, 3)
    assert take(core.Reader(kept, bus.control)) == [0, 1, 2]


@pytest.mark.parametrize("core", CORES)
def test_close_lets_go_of_the_rings(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    assert not fanout.closed
    fanout.close()
    fanout.close()
    reader.close()
    assert fanout.closed and len(fanout) == 0


@_NOT_BUILT
def test_the_compiled_core_keeps_its_memory_mapped_until_it_lets_go(bus: Bus):
    assert _RINGCORE is not None
    ring = bus.ring(4)
    fanout = _RINGCORE.Fanout(bus.control)
    fanout.add(ring, 0)
    ring.detach()  # closes the mapping: the core holds it, so it is unmapped later
    assert ring.mapping.closed and ring.mapping._address is not None
    assert publish(fanout, "still mapped") == 1
    fanout.remove(ring.sub_id)
    assert ring.mapping._address is None  # unmapped as it let go
    reader = _RINGCORE.Reader(bus.ring(4), bus.control)
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.ready()
    fanout.close()
    with pytest.raises(ValueError, match="closed"):
        fanout.publish_inline(b"x")


# -- the two cores on one ring -----------------------------------------------------------


@pytest.mark.parametrize("writer,reader_core", PAIRS)
def test_either_core_reads_what_the_other_wrote(writer: ModuleType, reader_core: ModuleType,
                                                bus: Bus):
    ring = bus.ring(4)
    fanout, reader = writer.Fanout(bus.control), reader_core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    events: list[Any] = []
    for lap in range(5):  # round and round the ring, single events and batches
        single = {"lap": lap, "text": "x" * lap * 50}
        batch = [lap, [lap] * 3]
        pickled = pickle.dumps(batch, 5)
        assert fanout.publish_inline(pickle.dumps(single, 5)) == 1
        seq = fanout.committed
        assert fanout.publish(_ring.batch_slot(seq, 2, pickled), 2, len(pickled)) == 1
        events += [single, *batch]
        assert take(reader) == events[-3:]


@VALUES
@pytest.mark.parametrize("writer,reader_core", PAIRS)
def test_either_core_posts_the_others_doorbells(writer: ModuleType, reader_core: ModuleType,
                                                bus: Bus):
    ring = bus.ring(1)
    fanout, reader = writer.Fanout(bus.control), reader_core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    assert reader.before_wait() is None
    publish(fanout, "wake")
    assert tokens(ring.data) == 1
    reader.after_wait()
    space = tokens(ring.space)
    fanout.before_wait(ring.sub_id)
    assert take(reader) == ["wake"]
    assert tokens(ring.space) == space + 1
    fanout.after_wait(ring.sub_id)


# -- the usual emit and recv, in one call each -------------------------------------------


class _HeldElsewhere:
    """An RLock held by another thread for the `with` block (this thread's own hold
    would not count: the lock is re-entrant)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self._taken, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with self.lock:
            self._taken.set()
            self._done.wait(10)

    def __enter__(self) -> "_HeldElsewhere":
        self._thread.start()
        assert self._taken.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)


def _generation(bus: Bus) -> int:
    return bus.control.words[_control.GENERATION_WORD]


@pytest.mark.parametrize("core", CORES)
def test_fast_emit_publishes_only_while_the_rings_are_fresh_and_the_lock_free(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    lock = threading.RLock()
    pickled = pickle.dumps("a", 5)
    assert fanout.fast_emit("a", None, lock) == pickled  # never told the rings are fresh
    assert not fanout.fresh
    fanout.fresh_for(_generation(bus), 60.0)
    assert fanout.fresh
    assert fanout.fast_emit("a", 1.5, lock) == 1
    assert fanout.fast_emit("b", 0, lock) == 1
    with _HeldElsewhere(lock):
        assert fanout.fast_emit("c", None, lock) == pickle.dumps("c", 5)
    bus.control.words[_control.GENERATION_WORD] += 1  # a subscriber came or went
    assert not fanout.fresh
    assert fanout.fast_emit("c", None, lock) == pickle.dumps("c", 5)
    fanout.fresh_for(_generation(bus), 0.0)  # a sweep is due
    assert fanout.fast_emit("c", None, lock) == pickle.dumps("c", 5)
    fanout.fresh_for(-1, 60.0)  # look again, whatever the generation
    assert fanout.fast_emit("c", None, lock) == pickle.dumps("c", 5)
    assert fanout.committed == 2 and take(reader) == ["a", "b"]
    assert lock.acquire(False), "fast_emit left the lock held"
    lock.release()


@pytest.mark.parametrize("core", CORES)
def test_fast_emit_leaves_what_it_cannot_publish_to_the_general_way(
        core: ModuleType, bus: Bus, monkeypatch: pytest.MonkeyPatch):
    ring = bus.ring(2)
    fanout = core.Fanout(bus.control)
    fanout.add(ring, 0)
    fanout.fresh_for(_generation(bus), 60.0)
    lock = threading.RLock()
    for timeout in (-1, float("nan"), "1", True, [1]):
        assert fanout.fast_emit("a", timeout, lock) is None  # `emit` says what is wrong
    assert fanout.fast_emit(lambda: 1, None, lock) is None  # pickled by value only
    import __main__
    local = type("Local", (), {"__module__": "__main__", "__qualname__": "Local"})
    monkeypatch.setattr(__main__, "Local", local, raising=False)
    assert fanout.fast_emit(local(), None, lock) is None  # names __main__: by value
    big = "x" * (_ring.SLOT_SIZE - _ring.SLOT_HEADER_SIZE)
    assert fanout.fast_emit(big, None, lock) == pickle.dumps(big, 5)  # not in a slot
    with pytest.raises(KeyboardInterrupt):
        fanout.fast_emit(_InterruptingPickle(), None, lock)
    assert fanout.committed == 0
    assert fanout.fast_emit(1, None, lock) == 1 and fanout.fast_emit(2, None, lock) == 1
    assert fanout.fast_emit(3, None, lock) == pickle.dumps(3, 5)  # the ring is full
    assert fanout.committed == 2


class _InterruptingPickle:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt  # as a Ctrl-C landing in the pickler


@pytest.mark.parametrize("core", CORES)
def test_take_one_parks_the_next_event_then_consumes_it(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    lock = threading.RLock()
    assert reader.take_one(lock, None) == 0 and reader.parked is None  # nothing ready
    publish(fanout, "a", "b")
    assert reader.take_one(lock, 2.5) == 1
    assert reader.parked == (0, ["a"], None) and reader.handing == threading.get_ident()
    assert reader.tail == 1 and ring.tail == 1
    assert reader.take_one(lock, None) == 0  # "a" is not handed out yet
    assert reader.tail == 1
    reader.parked, reader.handing = None, 0
    reader.surplus = (0, ["left over"], None)  # an interrupted call's: they come first
    assert reader.take_one(lock, None) == 0 and reader.tail == 1
    reader.surplus = None
    assert reader.take_one(lock, 0) == 1 and reader.parked == (1, ["b"], None)
    assert lock.acquire(False), "take_one left the lock held"
    lock.release()


@pytest.mark.parametrize("core", CORES)
def test_take_one_leaves_the_rest_to_the_general_way(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    lock = threading.RLock()
    fanout.publish_inline(UNLOADABLE)
    fanout.publish_inline(pickle.dumps(_Interrupting(), 5))
    batch = pickle.dumps([1, 2], 5)
    fanout.publish(_ring.batch_slot(2, 2, batch), 2, len(batch))
    for timeout in (-1, float("nan"), "1", True):
        assert reader.take_one(lock, timeout) == 0
    with _HeldElsewhere(lock):
        assert reader.take_one(lock, None) == 0
    assert reader.take_one(lock, None) == 0  # undecodable: reported the general way
    assert reader.tail == 0 and reader.parked is None and reader.handing == 0
    take(reader, max_n=1)
    assert reader.take_one(lock, None) == 0  # raises KeyboardInterrupt itself: likewise
    assert reader.tail == 1 and reader.parked is None
    take(reader, max_n=1)
    assert reader.take_one(lock, None) == 0  # a batch: the general way splits it
    assert reader.tail == 2 and take(reader) == [1, 2]


@pytest.mark.parametrize("core", CORES)
def test_an_interruption_in_take_ones_unpickling_consumes_nothing(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    _InterruptedOnce.left = 1
    fanout.publish_inline(pickle.dumps(_InterruptedOnce(), 5))
    lock = threading.RLock()
    with pytest.raises(KeyboardInterrupt):
        reader.take_one(lock, None)
    assert reader.tail == 0 and reader.parked is None and reader.handing == 0
    assert reader.take_one(lock, None) == 1 and reader.parked[1] == ["again"]
    assert lock.acquire(False)
    lock.release()


class _InterruptedOnce:
    """Its first unpickling is interrupted, as by a Ctrl-C; the next one works."""

    left = 0

    def __reduce__(self) -> Any:
        return (_interrupted_once, ())


def _interrupted_once() -> str:
    if _InterruptedOnce.left:
        _InterruptedOnce.left -= 1
        raise KeyboardInterrupt
    return "again"


@pytest.mark.parametrize("core", CORES)
def test_take_one_says_when_the_emitter_waits_on_its_wake_pipe(core: ModuleType, bus: Bus):
    ring = bus.ring(4)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    publish(fanout, 0)
    ring.flags[_ring.EMITTER_WAITING] = 1
    assert reader.take_one(threading.RLock(), None) == 2


@pytest.mark.parametrize("core", CORES)
def test_a_fork_child_leaves_the_fast_paths_alone(core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    fanout.fresh_for(_generation(bus), 60.0)
    publish(fanout, "a")
    pid = os.fork()
    if pid == 0:
        lock = threading.RLock()
        os._exit(0 if fanout.fast_emit("b", None, lock) is None
                 and reader.take_one(lock, None) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a fork child used a parent's fast path"
    assert fanout.committed == 1 and reader.tail == 0


class _Emitting:
    """A stand-in emitter for `emit_method`: its general ways only record the call."""

    def __init__(self, fanout: Any) -> None:
        self._f, self._l = fanout, threading.RLock()
        self._large, self._in_flight, self._history = False, collections.deque(), False
        self.woken = 0
        self.general: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.declined: list[tuple[Any, Any, Any]] = []

    def _wake(self) -> None:
        self.woken += 1

    def _declined(self, event: Any, pickled: Any, timeout: Any) -> str:
        self.declined.append((event, pickled, timeout))
        return "declined"

    def emit(self, *args: Any, **kwargs: Any) -> str:
        self.general.append((args, kwargs))
        return "general"


def _emitting(core: ModuleType, fanout: Any) -> _Emitting:
    method = core.emit_method(_Emitting.emit, fanout="_f", lock="_l", wake="_wake",
                              declined="_declined",
                              unless=("_large", "_in_flight", "_history"))
    return type("Emitting", (_Emitting,), {"emit": method})(fanout)


@pytest.mark.parametrize("core", CORES)
def test_emit_method_leaves_every_call_it_does_not_finish_to_the_general_way(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout = core.Fanout(bus.control)
    fanout.add(ring, 0)
    fanout.fresh_for(_generation(bus), 60.0)
    em = _emitting(core, fanout)
    calls = [(("a", 1.0), {}), ((), {"event": "a"}), (("a",), {"timeout": 1, "view": 0}),
             (("a",), {"wait": 1})]
    for args, kwargs in calls:
        assert em.emit(*args, **kwargs) == "general"
    for gate in ("_large", "_history"):
        setattr(em, gate, True)
        assert em.emit("b") == "general"
        setattr(em, gate, False)
    em._in_flight.append(1)  # a large event not read by everyone
    assert em.emit("b", timeout=2) == "general"
    assert em.general[-3:] == [((("b",)), {}), ((("b",)), {}), ((("b",)), {"timeout": 2})]
    assert len(em.general) == len(calls) + 3
    assert fanout.committed == 0  # nothing published on the way
    if core is _protocol:
        assert core.emit_method(_Emitting.emit, fanout="", lock="", wake="", declined="",
                                unless=()) is _Emitting.emit


@_NOT_BUILT
def test_emit_method_finishes_the_usual_call_in_the_compiled_core(bus: Bus):
    core = _RINGCORE
    ring = bus.ring(2)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    em = _emitting(core, fanout)
    assert em.emit("a") == "declined"  # the rings were never listed: not fresh
    assert em.declined == [("a", pickle.dumps("a", 5), None)]  # pickled once, handed on
    fanout.fresh_for(_generation(bus), 60.0)
    assert em.emit("a") == 1 and em.emit("b", timeout=0.5) == 1
    assert em.general == [] and fanout.committed == 2 and em.woken == 0
    assert em._l.acquire(False), "emit_method left the lock held"
    em._l.release()
    assert em.emit("c", timeout=0) == "declined"  # the ring is full: the general way waits
    assert em.declined[-1] == ("c", pickle.dumps("c", 5), 0)
    assert em.emit(lambda: 0) == "declined" and em.declined[-1][1] is None  # not plain
    assert take(reader) == ["a", "b"]
    ring.flags[_ring.SUB_WAITING] = 1  # a subscriber listens on its wake pipe
    assert em.emit("d") == 1 and em.woken == 1
    python_fanout = _protocol.Fanout(bus.control)
    assert _emitting(core, python_fanout).emit("e") == "general"  # the other core's
    python_fanout.close()


@_NOT_BUILT
def test_emit_method_reads_as_the_method_it_stands_for():
    assert shmbus.EventEmitter.emit.__name__ == "emit"
    assert "Deliver `event`" in (shmbus.EventEmitter.emit.__doc__ or "")
    assert list(inspect.signature(shmbus.EventEmitter.emit).parameters) == [
        "self", "event", "timeout"]


# -- the lock ---------------------------------------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_the_lock_is_re_entrant_and_only_its_holder_releases_it(core: ModuleType):
    lock = core.Lock()
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire() and lock.acquire(False) and lock.acquire(timeout=1)
    with lock:
        pass
    released: list[BaseException] = []

    def release_elsewhere() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            released.append(exc)

    elsewhere = threading.Thread(target=release_elsewhere)
    elsewhere.start()
    elsewhere.join(10)
    assert len(released) == 1  # not the other thread's to release
    for _ in range(3):
        lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.parametrize("core", CORES)
def test_the_lock_waits_as_asked_while_another_thread_holds_it(core: ModuleType):
    lock = core.Lock()
    with _HeldElsewhere(lock) as held:
        assert lock.acquire(False) is False and lock.acquire(blocking=False) is False
        began = time.monotonic()
        assert lock.acquire(timeout=0.05) is False
        assert time.monotonic() - began >= 0.05
        threading.Timer(0.05, held.__exit__).start()
        assert lock.acquire(timeout=10) is True  # as soon as the holder lets go
    lock.release()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("args, kwargs, error", [
    ((False, 1), {}, ValueError), ((), {"timeout": -2}, ValueError),
    ((), {"timeout": float("nan")}, ValueError), ((), {"timeout": 1e300}, OverflowError),
    ((), {"timeout": "1"}, TypeError), ((), {"wait": 1}, TypeError)])
def test_the_lock_refuses_what_an_rlock_refuses(core: ModuleType, args: tuple[Any, ...],
                                                 kwargs: dict[str, Any], error: type):
    lock = core.Lock()
    with pytest.raises(error):
        lock.acquire(*args, **kwargs)
    assert lock.acquire(False)  # nothing was taken
    lock.release()


@pytest.mark.parametrize("core", CORES)
def test_a_signal_interrupts_a_wait_for_the_lock_as_for_an_rlock(core: ModuleType):
    lock = core.Lock()
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        if len(seen) == 2:
            signal.setitimer(signal.ITIMER_REAL, 0)  # no third, however late the test runs
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with _HeldElsewhere(lock):
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # a handler that returns,
            with pytest.raises(KeyboardInterrupt):           # then one that raises
                lock.acquire()
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert lock.acquire(False) is False  # the interrupted wait took nothing
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen == [signal.SIGALRM] * 2
    assert lock.acquire(False)
    lock.release()


@pytest.mark.parametrize("core", CORES)
def test_the_fast_paths_step_aside_while_another_thread_holds_the_cores_lock(
        core: ModuleType, bus: Bus):
    ring = bus.ring(8)
    fanout, reader = core.Fanout(bus.control), core.Reader(ring, bus.control)
    fanout.add(ring, 0)
    fanout.fresh_for(_generation(bus), 60.0)
    lock = core.Lock()
    with _HeldElsewhere(lock):
        assert fanout.fast_emit("a", None, lock) == pickle.dumps("a", 5)
        publish(fanout, "a")
        assert reader.take_one(lock, None) == 0
    assert fanout.fast_emit("b", None, lock) == 1 and reader.take_one(lock, None) == 1
    with lock:  # this thread's own hold: re-entered, as an RLock is
        assert fanout.fast_emit("c", None, lock) == 1
    assert lock.acquire(False), "a fast path left the lock held"
    lock.release()
