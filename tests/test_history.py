"""History: EventEmitter(name, history=K) and subscribe(name, history=True): a late
joiner receives the last K events emitted before it joined, then the live stream, with
no gap and no repeat, large events too."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

import shmbus
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode"), pytest.mark.timeout(60)]


def test_a_late_joiner_gets_the_last_k_events_then_the_stream():
    with shmbus.EventEmitter("hist", history=5) as em:
        for n in range(12):
            em.emit(n)
        late = shmbus.subscribe("hist", history=True)
        plain = shmbus.subscribe("hist")
        em.emit(12)
        em.emit(13)
        em.close()
        assert list(late) == list(range(7, 14))
        assert list(plain) == [12, 13]
        late.close()
        plain.close()


def test_fewer_events_than_k_and_none_at_all():
    with shmbus.EventEmitter("few", history=100) as em:
        with shmbus.subscribe("few", history=True) as first:
            assert first.capacity == 256  # the bus's default: it holds the history
            em.emit("a")
            assert first.recv(timeout=1) == "a"
            em.emit("b")
            with em.subscribe(history=True) as second:
                em.emit("c")
                assert [second.recv(timeout=1), second.recv(timeout=1)] == ["a", "b"]
                assert second.recv(timeout=1) == "c"


def test_a_ring_takes_at_least_the_history():
    with shmbus.EventEmitter("deep", capacity=8, history=20) as em:
        with shmbus.subscribe("deep", history=True) as sub:
            assert sub.capacity == 20
        with pytest.raises(shmbus.InvalidArgument, match="cannot hold the 20 events"):
            shmbus.subscribe("deep", history=True, capacity=10)
        with shmbus.subscribe("deep", capacity=4) as plain:  # no history asked: any size
            assert plain.capacity == 4
        del em


def test_bad_history_arguments_are_refused():
    for bad in (-1, 1.5, True, "3", 1 << 40):
        with pytest.raises(shmbus.InvalidArgument, match="history must be an int"):
            shmbus.EventEmitter("bad", history=bad)  # type: ignore[arg-type]
    with shmbus.EventEmitter("none") as em:
        with pytest.raises(shmbus.InvalidArgument, match="keeps no history"):
            shmbus.subscribe("none", history=True)
        with pytest.raises(shmbus.InvalidArgument, match="history must be True or False"):
            em.subscribe(history=1)  # type: ignore[call-overload]
        with pytest.raises(shmbus.InvalidArgument, match="for a bus on this host"):
            shmbus.subscribe("nats://localhost:4222/none", history=True)


def test_large_events_in_the_history_stay_readable_after_everyone_read_them():
    arrays = [np.full(200_000, n, dtype=np.int64) for n in range(6)]  # 1.6 MB each
    with shmbus.EventEmitter("bulky", history=4, large_bytes=16 << 20) as em:
        with em.subscribe() as reader:
            for array in arrays:
                em.emit(array, timeout=5)
            for array in arrays:  # read by the only subscriber: the arena could free them
                assert np.array_equal(reader.recv(timeout=1), array)
            em.emit("small")  # an emit reclaims what everyone read
            assert reader.recv(timeout=1) == "small"
        with em.subscribe(history=True) as late:
            got = [late.recv(timeout=1) for _ in range(4)]
        for value, array in zip(got[:3], arrays[3:]):
            assert np.array_equal(value, array)
        assert got[3] == "small"


def test_a_history_of_large_events_never_blocks_emit():
    # 8 MiB events, a 32 MiB bound and a history of 10: the history gives up what new
    # events need, so emit goes on; a late joiner then gets an unbroken run of the last.
    big = [np.full(1 << 20, n, dtype=np.int64) for n in range(12)]
    with shmbus.EventEmitter("crowded", history=10, large_bytes=32 << 20) as em:
        for array in big:
            em.emit(array, timeout=5)
        with em.subscribe(history=True) as late:
            em.close()
            got = list(late)
    assert 1 <= len(got) <= 10
    first = int(got[0][0])
    for n, value in enumerate(got):
        assert np.array_equal(value, big[first + n])
    assert first + len(got) == len(big)


def test_emit_many_with_a_history():
    with shmbus.EventEmitter("many", history=50) as em:
        em.emit_many(range(200))
        with em.subscribe(history=True) as late:
            em.emit_many(range(200, 210))
            em.close()
            assert list(late) == list(range(150, 210))


def late_joiner(name: str, out: Any, ready: Any) -> None:
    ready.wait(10)
    with shmbus.subscribe(name, history=True) as sub:
        out.put(list(sub))


def test_late_joiners_in_other_processes_see_no_gap_and_no_repeat_while_emit_runs(procs):
    ctx = helpers.context()
    out, go = ctx.Queue(), ctx.Event()
    with shmbus.EventEmitter("racing", history=64, capacity=64) as em:
        for _ in range(4):
            procs(late_joiner, "racing", out, go)
        stop = threading.Event()
        emitted = [0]

        def emit() -> None:
            while not stop.is_set():
                em.emit(emitted[0], timeout=10)
                emitted[0] += 1

        thread = threading.Thread(target=emit)
        thread.start()
        time.sleep(0.05)
        go.set()  # they join while events keep coming
        time.sleep(0.5)
        stop.set()
        thread.join(10)
    total = emitted[0]
    for _ in range(4):
        got = out.get(timeout=30)
        assert got == list(range(got[0], total)), (got[:5], total)
        assert len(got) >= 64  # the history, whole, then what came after


def test_a_group_created_with_history_starts_with_it():
    with shmbus.EventEmitter("grouped", history=3) as em:
        for n in range(10):
            em.emit(n)
        with em.subscribe(group="g", history=True) as a, em.subscribe(group="g") as b:
            em.emit(10)
            got = a.recv_many(2, timeout=1) + b.recv_many(5, timeout=1)
            assert sorted(got) == [7, 8, 9, 10]


def test_a_closed_emitter_with_a_history_leaves_nothing():
    em = shmbus.EventEmitter("gone", history=3)
    em.emit(np.zeros(100_000))
    em.close()
    assert helpers.objects_of(helpers.token_of(em)) == []
