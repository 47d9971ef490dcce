"""The two wait strategies behave alike, and the environment picks between them."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import posix_ipc
import pytest

import shmbus
from shmbus import _names, _platform, _wait

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sem():
    name = f"{_names.PREFIX}test{time.monotonic_ns() % 10**8:x}"
    s = _platform.create_semaphore(name, 0)
    yield s
    s.close()
    _platform.unlink_semaphore(name)


@pytest.mark.parametrize("waiter", [_wait.TimedWaiter(), _wait.PollingWaiter()],
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
    expected = "timed" if posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED else "poll"
    assert _wait.waiter_from_env().name == expected
    monkeypatch.setenv("SHMBUS_WAIT", "spin")
    with pytest.raises(ValueError, match="use 'timed' or 'poll'"):
        _wait.waiter_from_env()


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_negative_or_nan_timeout_is_refused(bad):
    with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
        _wait.deadline_after(bad)


@pytest.mark.parametrize("timeout", [math.inf, 9.3e9, 1e300])
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
