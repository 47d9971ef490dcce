"""The two wait strategies behave alike, and the environment picks between them."""

from __future__ import annotations

import threading
import time

import posix_ipc
import pytest

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
