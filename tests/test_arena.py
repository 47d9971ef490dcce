"""Large events: one arena mapped once, bounded, given back; views without a copy."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import shmbus
from shmbus import _arena, _names, _platform
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode"), pytest.mark.timeout(60)]

MiB = 1 << 20


def _large_segments(token: str) -> dict[str, int]:
    """The large-event segments of bus `token`, and their sizes, as the ledger has them."""
    ledger = os.environ[_platform.LEDGER_ENV]
    return {name: os.path.getsize(os.path.join(helpers.SHM_DIR, name.lstrip("/")))
            for kind, name in _platform.ledger_leftovers(ledger)
            if name.startswith((_names.arena_name(token, 0)[:-8],
                                _names.oversized_name(token, 0)[:-8]))}


def test_a_large_event_is_written_once_into_one_arena_whatever_the_subscribers():
    big = os.urandom(4 * MiB)
    with shmbus.EventEmitter("large") as em:
        subs = [em.subscribe() for _ in range(3)]
        token = helpers.token_of(em)
        em.emit({"blob": big})
        first = _large_segments(token)
        assert len(first) == 1 and next(iter(first)).startswith(f"/sb_{token}_a")
        for sub in subs:
            assert sub.recv(timeout=5) == {"blob": big}
        for i in range(20):  # the same arena, over and over: nothing new is made
            em.emit({"blob": big[i:]})
            for sub in subs:
                assert sub.recv(timeout=5) == {"blob": big[i:]}
        assert _large_segments(token) == first
        for sub in subs:
            sub.close()


def test_subscribers_map_the_arena_once_however_many_events(monkeypatch):
    opened: list[str] = []
    original = _platform.open_segment
    monkeypatch.setattr(_platform, "open_segment",
                        lambda name: opened.append(name) or original(name))
    with shmbus.EventEmitter("mapped", capacity=64) as em, em.subscribe() as sub:
        token = helpers.token_of(em)
        event = bytes(256 * 1024)
        for _ in range(5):
            em.emit_many([event] * 40)  # many in flight at once
            got = 0
            while got < 40:
                got += len(sub.recv_many(64, timeout=5))
        arenas = [n for n in opened if n.startswith(f"/sb_{token}_a")]
        assert 1 <= len(arenas) <= 3, opened  # it may grow; never a mapping per event
        assert len(arenas) == len(set(arenas)), opened


def test_large_events_never_take_more_than_the_bound():
    with shmbus.EventEmitter("bounded", large_bytes=8 * MiB) as em, em.subscribe() as sub:
        event = bytes(MiB)
        sent = 0
        with pytest.raises(shmbus.Timeout, match="large_bytes"):
            while True:
                em.emit(event, timeout=0.3)  # the subscriber reads nothing
                sent += 1
        assert 4 <= sent <= 8
        stats = shmbus.stats("bounded")
        assert stats.large_bytes == 8 * MiB
        assert 0 < stats.large_bytes_held <= 8 * MiB
        for _ in range(sent):
            assert sub.recv(timeout=5) == event
        em.emit(event, timeout=5)  # room again, once read
        assert sub.recv(timeout=5) == event


def test_a_full_arena_blocks_emit_and_loses_nothing(procs):
    out, ready = helpers.context().Queue(), helpers.context().Queue()
    with shmbus.EventEmitter("slowbig", large_bytes=4 * MiB) as em:
        procs(helpers.collect, "slowbig", out, ready, None, 0.01)
        ready.get(timeout=10)
        events = [bytes([i]) * (512 * 1024) for i in range(60)]  # 30 MiB through 4 MiB
        for event in events:
            em.emit(event, timeout=10)
        assert em.emit("end", timeout=10) == 1
    got, reason = out.get(timeout=30)
    assert got == [*events, "end"] and reason == "closed"


def test_emit_many_of_more_large_events_than_the_arena_holds_goes_through(procs):
    # One chunk of emit_many (a quarter of the ring: 64 events) of 512 KiB events is
    # 32 MiB, eight times the arena: the chunk is committed in the parts that fit, each
    # read before the next is written, rather than wait for events nobody can see yet.
    out, ready = helpers.context().Queue(), helpers.context().Queue()
    with shmbus.EventEmitter("bigchunk", large_bytes=4 * MiB) as em:
        procs(helpers.collect, "bigchunk", out, ready, None, 0)
        ready.get(timeout=10)
        events = [bytes([i]) * (512 * 1024) for i in range(100)]
        assert em.emit_many(events, timeout=10) == 1
        assert em.emit("end", timeout=10) == 1
    got, reason = out.get(timeout=30)
    assert got == [*events, "end"] and reason == "closed"


def test_an_event_larger_than_half_the_arena_gets_a_segment_removed_once_read():
    with shmbus.EventEmitter("huge", large_bytes=4 * MiB) as em, em.subscribe() as sub:
        token = helpers.token_of(em)
        huge = os.urandom(3 * MiB)
        em.emit(huge)
        [segment] = _large_segments(token)
        assert segment.startswith(f"/sb_{token}_x")
        assert sub.recv(timeout=5) == huge
        # No emit: the idle emitter removes it within about a sweep.
        helpers.wait_until(lambda: not _platform.segment_exists(segment), timeout=2)
        assert shmbus.stats("huge").large_bytes_held == 0


def test_events_larger_than_half_the_bound_pass_it_two_at_a_time():
    """They count against `large_bytes`: a stalled subscriber once let 32 of them pile
    up (19 MB held against a 1 MiB bound)."""
    with shmbus.EventEmitter("halves", large_bytes=MiB) as em, em.subscribe() as sub:
        events = [bytes([i]) * 600_000 for i in range(4)]
        em.emit(events[0], timeout=1)  # past the bound, as an event larger than it would
        em.emit(events[1], timeout=1)  # and a second: see test_a_view_loop_...
        with pytest.raises(shmbus.Timeout):
            em.emit(events[2], timeout=0.2)
        assert shmbus.stats("halves").large_bytes_held < MiB + 2 * 600_000
        assert sub.recv(timeout=5) == events[0]
        em.emit(events[2], timeout=5)  # room once the first is read
        assert [sub.recv(timeout=5) for _ in range(2)] == events[1:3]
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(
            sub.recv(timeout=5) for _ in events))
        reader.start()
        em.emit_many(events, timeout=5)  # a chunk goes in parts, each waiting its turn
        reader.join(10)
        assert got == events


def _view_loop(sub: shmbus.LocalSubscription, count: int, seen: list[int]
               ) -> threading.Thread:
    """A started thread doing what `arr = sub.recv(view=True)` in a loop does: it holds the
    last view until the next event arrives. Each array's first value goes to `seen`."""
    def loop() -> None:
        arr = None
        for _ in range(count):
            arr = sub.recv(timeout=5, view=True)
            seen.append(int(arr[0]))
        del arr

    reader = threading.Thread(target=loop)
    reader.start()
    return reader


def test_a_view_loop_over_events_larger_than_half_the_bound_never_stalls():
    """`arr = sub.recv(view=True)` in a loop holds the last view until the next event
    arrives; with one such event allowed past the bound, it and the emitter each waited
    for the other."""
    with shmbus.EventEmitter("viewloop", large_bytes=MiB) as em, em.subscribe() as sub:
        seen: list[int] = []
        reader = _view_loop(sub, 6, seen)
        for i in range(6):
            em.emit(np.full(600_000, i, dtype=np.uint8), timeout=5)
        reader.join(10)
        assert seen == list(range(6))


def test_an_emit_many_chunk_never_waits_for_a_view_its_own_events_would_release():
    """The view loop below holds event 0 until event 1 arrives: a chunk that placed
    event 1, then waited for room with it uncommitted, waited for ever."""
    with shmbus.EventEmitter("viewchunk", large_bytes=MiB) as em, em.subscribe() as sub:
        seen: list[int] = []
        reader = _view_loop(sub, 5, seen)
        em.emit(np.full(600_000, 0, dtype=np.uint8), timeout=5)
        helpers.wait_until(lambda: seen == [0], timeout=5)
        em.emit_many([np.full(600_000, i, dtype=np.uint8) for i in range(1, 5)], timeout=5)
        reader.join(10)
        assert seen == list(range(5))


def test_an_event_just_over_half_the_bound_once_aligned_is_read_from_its_segment():
    """The emitter and the arena once rounded differently: such an event went into a
    segment of its own, labelled as an arena event, and its subscriber failed from then on."""
    with shmbus.EventEmitter("edge", large_bytes=1_500_000) as em, em.subscribe() as sub:
        for size in (749_960, 749_900, 760_000, 700_000):
            event = os.urandom(size)
            em.emit(event, timeout=5)
            assert sub.recv(timeout=5) == event


def test_the_arena_grows_to_the_bound_and_old_ones_go():
    with shmbus.EventEmitter("grow", capacity=256, large_bytes=32 * MiB) as em, \
            em.subscribe() as sub:
        token = helpers.token_of(em)
        event = bytes(MiB)
        em.emit_many([event] * 24)  # more than the first arena holds: it grows
        assert sum(_large_segments(token).values()) <= 32 * MiB
        got = 0
        while got < 24:
            got += len(sub.recv_many(64, timeout=5))
        em.emit(event)
        assert sub.recv(timeout=5) == event
        em.emit("small")  # everything read: only the newest arena is left
        assert len(_large_segments(token)) == 1


def test_in_steady_state_one_arena_serves_every_event():
    # Events of an eighth of the bound: a first arena of four of them could only be
    # followed by one no larger, then another, each new one mapped and faulted in anew by
    # every process. The arena takes the whole bound at once instead, and stays.
    with shmbus.EventEmitter("steady", large_bytes=16 * MiB) as em, em.subscribe() as sub:
        token = helpers.token_of(em)
        event = bytes(2 * MiB)
        arenas: set[str] = set()
        for _ in range(6):
            sent = 0
            with pytest.raises(shmbus.Timeout):
                while True:  # until the arena is full
                    em.emit(event, timeout=0)
                    sent += 1
            arenas |= set(_large_segments(token))
            assert sent >= 4
            for _ in range(sent):
                assert sub.recv(timeout=5) == event
        assert len(arenas) == 1, arenas


def test_numpy_arrays_travel_and_come_back_writable():
    array = np.arange(2 * MiB, dtype=np.uint32).reshape(1024, -1)
    with shmbus.EventEmitter("np") as em, em.subscribe() as sub:
        em.emit({"image": array, "tag": "first"})
        got = sub.recv(timeout=5)
        assert got["tag"] == "first" and np.array_equal(got["image"], array)
        assert got["image"].flags.writeable and got["image"].dtype == np.uint32
        got["image"][0, 0] = 7  # a copy of its own
        em.emit({"image": array})
        assert sub.recv(timeout=5)["image"][0, 0] == 0


def test_a_view_is_not_a_copy_and_nothing_overwrites_it_while_it_is_held():
    with shmbus.EventEmitter("views", large_bytes=4 * MiB) as em, em.subscribe() as sub:
        first = np.full(MiB // 8, 1.5)
        em.emit(first)
        view = sub.recv(timeout=5, view=True)
        assert np.array_equal(view, first)
        assert not view.flags.writeable and not view.flags.owndata
        # Reading on, with the view held: the emitter must not write over it. The arena
        # is small, so emits block once it is full of events the view pins behind it.
        blocked = 0
        for i in range(12):
            try:
                em.emit(np.full(MiB // 8, float(i)), timeout=0.3)
            except shmbus.Timeout:
                blocked += 1
                break
            assert np.array_equal(sub.recv(timeout=5), np.full(MiB // 8, float(i)))
        assert blocked == 1, "the emitter went on writing over memory a view shows"
        assert np.array_equal(view, first)
        del view  # released: the memory is the emitter's again
        em.emit(np.full(MiB // 8, 9.0), timeout=5)
        assert np.array_equal(sub.recv(timeout=5), np.full(MiB // 8, 9.0))


def test_views_in_a_loop_pin_at_most_two_events():
    with shmbus.EventEmitter("loop", large_bytes=4 * MiB) as em, em.subscribe() as sub:
        def emit_all() -> None:
            for i in range(200):
                em.emit(np.full(MiB // 16, float(i)), timeout=10)
        thread = threading.Thread(target=emit_all)
        thread.start()
        for i in range(200):
            event = sub.recv(timeout=10, view=True)  # the previous one is still bound
            assert event[0] == float(i) and event[-1] == float(i)
        thread.join(10)
        assert not thread.is_alive()


def test_holding_too_many_views_is_a_clear_error():
    with shmbus.EventEmitter("hoard") as em, em.subscribe() as sub:
        for i in range(shmbus.MAX_VIEWED_EVENTS + 1):
            em.emit(np.full(1024, float(i)))
        kept = [sub.recv(timeout=5, view=True) for _ in range(shmbus.MAX_VIEWED_EVENTS)]
        with pytest.raises(shmbus.ShmBusError, match="still in use"):
            sub.recv(timeout=5, view=True)
        assert sub.recv(timeout=5)[0] == float(shmbus.MAX_VIEWED_EVENTS)  # a copy is fine
        kept.clear()
        em.emit(np.zeros(1024))
        assert sub.recv(timeout=5, view=True)[0] == 0.0


def test_closing_with_views_in_use_keeps_their_memory_mapped():
    with shmbus.EventEmitter("late") as em:
        sub = em.subscribe()
        em.emit(np.arange(100_000.0))
        view = sub.recv(timeout=5, view=True)
        sub.close()
    time.sleep(0.1)
    assert view[99_999] == 99_999.0  # still readable, never unmapped under it


# -- memory given back (a private /dev/shm of 512 MiB) ------------------------------------

_PINNING = r'''
import json, os, time
import shmbus

def used():
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize

seen = {}
em = shmbus.EventEmitter("pinning")
sub = em.subscribe()
for i in range(20):
    em.emit(bytes([i]) * (100 << 20), timeout=30)
    assert sub.recv(timeout=30)[:1] == bytes([i])
time.sleep(0.7)  # no emit: the idle emitter removes what has been read
seen["used_after_burst"] = used()
big = bytes(150 << 20)
try:
    em.emit(big, timeout=30)
    seen["after"] = len(sub.recv(timeout=30))
except Exception as exc:
    seen["after"] = repr(exc)
sub.close()
em.close()
seen["used_at_end"] = used()
print(json.dumps(seen))
'''


@pytest.mark.timeout(120)
def test_memory_of_read_large_events_is_given_back_whatever_subscribers_do(private_shm):
    seen = private_shm("512m", _PINNING)
    assert seen["used_after_burst"] < 64 * MiB, seen  # 20 x 100 MiB went through
    assert seen["after"] == 150 * MiB, seen
    assert seen["used_at_end"] == 0, seen


def test_only_views_still_held_count_against_the_limit():
    with shmbus.EventEmitter("oneheld") as em, em.subscribe() as sub:
        em.emit(np.zeros(1024))
        held = sub.recv(timeout=5, view=True)
        for i in range(shmbus.MAX_VIEWED_EVENTS + 4):  # each dropped before the next
            em.emit(np.full(1024, float(i)))
            assert sub.recv(timeout=5, view=True)[0] == float(i)
        assert held[0] == 0.0
