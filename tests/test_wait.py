"""The two wait strategies behave alike, and the environment picks between them."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import threading
import time

import pytest

import shmbus
from shmbus import _names, _platform, _wait
from tests import helpers

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sem():
    name = f"{_names.PREFIX}test{time.monotonic_ns() % 10**8:x}"
    s = _platform.create_semaphore(name, 0)
    yield s
    s.close()
    _platform.unlink_semaphore(name)


no_timed_wait = pytest.mark.skipif(
    not _platform.TIMED_WAIT, reason=f"{_platform.PLATFORM.name} has no sem_timedwait")


@pytest.mark.parametrize("waiter", [pytest.param(_wait.TimedWaiter(), marks=no_timed_wait),
                                    _wait.PollingWaiter()],
                         ids=["timed", "poll"])
def test_take_waits_for_a_token_and_gives_up_at_the_timeout(sem, waiter):
    started = time.monotonic()
    assert waiter.take(sem, 0.2) is False
    assert time.monotonic() - started >= 0.19
    assert waiter.take(sem, 0) is False
    threading.Timer(0.05, sem.release).start()
    assert waiter.take(sem, 5) is True
    sem.release()
    assert waiter.take(sem, 0) is True


def test_the_environment_selects_the_strategy(monkeypatch):
    monkeypatch.setenv("SHMBUS_WAIT", "poll")
    assert _wait.waiter_from_env().name == "poll"
    monkeypatch.setenv("SHMBUS_WAIT", "timed")
    expected = "timed" if _platform.TIMED_WAIT else "poll"
    assert _wait.waiter_from_env().name == expected
    monkeypatch.setenv("SHMBUS_WAIT", "spin")
    with pytest.raises(ValueError, match="use 'timed' or 'poll'"):
        _wait.waiter_from_env()


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_negative_or_nan_timeout_is_refused(bad):
    with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
        _wait.deadline_after(bad)


@pytest.mark.parametrize("timeout", [math.inf, 9.3e9, 1e300, 10**400])
def test_infinite_and_huge_timeouts_mean_wait_as_long_as_it_takes(timeout):
    with shmbus.EventEmitter("forever") as em, em.subscribe() as sub:
        assert em.emit("one", timeout=timeout) == 1
        assert sub.recv(timeout=timeout) == "one"
        assert em.emit_many(["two", "three"], timeout=timeout) == 1  # subscribers reached
        assert sub.recv_many(5, timeout=timeout) == ["two", "three"]

        async def both() -> object:
            await em.aemit("four", timeout=timeout)
            return await sub.arecv(timeout=timeout)

        assert asyncio.run(both()) == "four"
        with shmbus.subscribe("forever", wait=timeout):  # there: returns at once
            assert em.wait_for_subscribers(2, timeout=timeout) == 2


def test_a_huge_timeout_still_waits_for_another_thread():
    # The lock between threads is where the thread module refuses long timeouts.
    with shmbus.EventEmitter("crowded") as em, em.subscribe(capacity=1) as sub:
        em.emit("fills the ring")
        blocked = threading.Thread(target=em.emit, args=("waits for room",))
        blocked.start()
        time.sleep(0.1)
        assert blocked.is_alive()
        got = []
        waiting = threading.Thread(target=lambda: got.append(em.emit("third", timeout=9.3e9)))
        waiting.start()
        for expected in ("fills the ring", "waits for room", "third"):
            assert sub.recv(timeout=5) == expected
        blocked.join(5)
        waiting.join(5)
        assert got == [1]


class _Handled(Exception):
    pass


def _raise_handled(signum: int, frame: object) -> None:
    raise _Handled(signum)


@pytest.mark.parametrize("blocked_in", ["emit", "recv"])
def test_a_signal_handlers_exception_ends_a_blocked_call(blocked_in, monkeypatch):
    # posix_ipc would keep only KeyboardInterrupt: pytest-timeout's own failure, or
    # sys.exit() in a SIGTERM handler, must come out of a blocked call all the same.
    previous = signal.signal(signal.SIGALRM, _raise_handled)
    try:
        with shmbus.EventEmitter("held", capacity=1) as em, em.subscribe() as sub:
            if blocked_in == "emit":
                em.emit("fills the ring")
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            began = time.monotonic()
            with pytest.raises(_Handled):
                em.emit("blocks") if blocked_in == "emit" else sub.recv()
            assert time.monotonic() - began < 0.3 + 2 * _wait.SLICE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_interruptions_inside_waits_never_leave_signals_held_back():
    # A full ring for emit and an empty one for recv: every call sleeps in a wait.
    with shmbus.EventEmitter("mask", capacity=1) as em, em.subscribe() as sub, \
            shmbus.EventEmitter("empty") as quiet, quiet.subscribe() as idle:
        em.emit("fills the ring")
        with helpers.interrupts_inside_shmbus(every=0.0005) as seen:
            for _ in range(150):
                for blocked in (lambda: em.emit("x", timeout=0.002),
                                lambda: idle.recv(timeout=0.002)):
                    try:
                        blocked()
                    except (KeyboardInterrupt, shmbus.Timeout):
                        pass
        assert seen.count > 20
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == set()
        assert sub.recv(timeout=1) == "fills the ring"


def _compiled_held_acquire():
    try:
        from shmbus import _ringcore
    except ImportError:
        return None
    return _ringcore.held_acquire


@no_timed_wait
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("held", [
    pytest.param(None, id="python"),
    pytest.param(_compiled_held_acquire(), id="c", marks=pytest.mark.skipif(
        _compiled_held_acquire() is None, reason="shmbus._ringcore was not built")),
])
def test_a_timed_wait_in_the_main_thread_holds_back_exactly_the_asynchronous_signals(
        sem, held, monkeypatch):
    monkeypatch.setattr(_wait.TimedWaiter, "held_acquire", held)
    status = f"/proc/self/task/{threading.get_native_id()}/status"

    def held_now() -> int:
        with open(status) as lines:
            return next(int(line.split()[1], 16) for line in lines if line.startswith("SigBlk:"))

    during: list[int] = []
    looker = threading.Timer(0.1, lambda: during.append(held_now()))
    looker.start()
    assert _wait.TimedWaiter()._take_blocking(sem, 0.3) is False
    looker.join()
    assert during == [sum(1 << (s - 1) for s in _wait._ASYNC_SIGNALS)]
    assert held_now() == 0  # all of them given back
