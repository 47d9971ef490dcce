"""How a process sleeps on a semaphore: the two wait strategies.

## Shape

Every blocking wait in shmbus is a loop of bounded slices: take a token from a semaphore
within at most `SLICE` seconds, and between slices check that the peer being waited for is
still alive. Nothing ever sleeps for longer than one slice on a peer that might be dead.
This module supplies only the "take a token within t seconds" step; the callers own the
loop and the liveness check, because what "the peer" is differs on each side.

`Waiter.take` first tries without blocking (the common case when data is flowing), then
yields the CPU a moment (`spin`), then hands the wait to a backend, in the manner of
filelock's `_acquire`. The ring's waiters split those steps: they `spin` on the counter
itself, then raise their sleeping flag and `sleep` (see `_ring` on doorbells). Backends:

- `TimedWaiter` sleeps in the kernel with `sem_timedwait`: no CPU while it waits, woken
  the moment a token is posted.
- `PollingWaiter` retries `sem_trywait` with a backoff of sleeps growing to
  `POLL_MAX_SLEEP`. macOS has no `sem_timedwait` (`_platform.TIMED_WAIT` is False: a
  positive timeout there blocks forever), so this is the only safe choice there, and in
  the macOS rules mode; on Linux `SHMBUS_WAIT=poll` selects it so that both run under
  the same tests.

## Why not one blocking `acquire()`

A blocking acquire on a semaphore whose poster was SIGKILLed never returns: the kernel
does not know who would have posted. Slices bound that to one slice per liveness check.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C half of `signal`; no stub
import math
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import posix_ipc

from . import _platform
from ._errors import InvalidArgument, shown

SLICE = 0.1
"""Longest single sleep. A dead peer is noticed at most this long after it died, plus
the time of one liveness probe: well under the 1 second the bus promises."""

POLL_MIN_SLEEP = 20e-6
POLL_MAX_SLEEP = 1e-3
"""The polling backend adds at most about this much latency to a wake-up, and costs an
idle subscriber about a thousand cheap system calls per second."""

SPIN = 5e-6
"""Before it raises its sleeping flag and sleeps, a waiter yields the CPU and looks at the
counter again for this long: a gap of a few microseconds (the other side's next event, or
a freed slot) costs it no kernel wake-up.

Kept short on purpose. A spinning side reads a cache line that the working side writes
for every event, so every one of those writes waits for the line to come back; a side that
sleeps instead leaves the other running alone for a whole wake-up (tens of microseconds,
many events), then catches up in one go. With the doorbell posted only for a side that
sleeps (`_ring`), one wake-up costs the other side one post. Measured on 2 cores with the
compiled core, small events: 0.1 ms of spinning gave 250-270k events/s to one subscriber
and 90-110k to four; 5 us gave 415-425k and 140-150k; none at all 440-460k and 115-120k."""

WAIT_ENV = "SHMBUS_WAIT"


class Waiter(ABC):
    """Takes one token from a semaphore, waiting at most a given time."""

    name: str

    def take(self, sem: posix_ipc.Semaphore, timeout: float) -> bool:
        """True if a token was taken within `timeout` seconds, False if not."""
        try:
            sem.acquire(0)
            return True
        except posix_ipc.BusyError:
            pass
        if timeout <= 0:
            return False
        if spin(_poster(sem), min(timeout, SPIN)):
            return True
        return self._take_blocking(sem, max(0.0, timeout - SPIN))

    def sleep(self, sem: posix_ipc.Semaphore, timeout: float) -> bool:
        """As `take`, without the spell of yielding: for a caller that spun already
        (`spin`), then raised its sleeping flag and found nothing (see `_ring`)."""
        try:
            sem.acquire(0)
            return True
        except posix_ipc.BusyError:
            pass
        return timeout > 0 and self._take_blocking(sem, timeout)

    @abstractmethod
    def _take_blocking(self, sem: posix_ipc.Semaphore, timeout: float) -> bool: ...


class TimedWaiter(Waiter):
    """Sleeps in `sem_timedwait`, with the process's asynchronous signals held back.

    posix_ipc runs a signal's Python handler when the wait is interrupted, but keeps
    only a `KeyboardInterrupt`: any other exception the handler raises (pytest-timeout's
    failure, `sys.exit()` in a SIGTERM handler, a worker pool's stop) becomes a bare
    `SignalError`, and the handler's own is lost. So the main thread, the one Python runs
    handlers in, sleeps with those signals blocked; a signal that comes meanwhile is
    delivered when the slice ends (at most `SLICE` later) and its handler runs then, as
    Python's own, its exception propagating from here.
    """

    name = "timed"

    held_acquire: "Callable[[Callable[[float], object], float], object] | None" = None
    """`acquire(timeout)` with those signals held back, in one C call: the compiled
    core's (`_ringcore.held_acquire`), which `_core` puts here when it runs it. Without
    it, the mask is changed from Python below: three calls, the last of which builds a
    set of every signal held, a few microseconds on every wake-up."""

    def _take_blocking(self, sem: posix_ipc.Semaphore, timeout: float) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return _timed_take(sem, timeout)  # handlers never run in other threads
        held = TimedWaiter.held_acquire
        if held is not None:
            return _timed_take(sem, timeout, held)
        # The mask changes only inside `try`: an interruption before it changes nothing,
        # and one after it finds `finally` putting the mask back. The C function, not
        # `signal.pthread_sigmask`: that is Python code, and a handler running as it is
        # entered (a signal another thread caught) would skip the restoring call.
        previous = _signal.pthread_sigmask(signal.SIG_BLOCK, ())
        try:
            _signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
            return _timed_take(sem, timeout)
        finally:
            _signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _timed_take(sem: posix_ipc.Semaphore, timeout: float,
                held: "Callable[[Callable[[float], object], float], object] | None" = None
                ) -> bool:
    try:
        if held is None:
            sem.acquire(timeout)
        else:
            held(sem.acquire, timeout)
        return True
    except posix_ipc.BusyError:
        return False
    except posix_ipc.SignalError:
        # A signal this thread does not hold back, whose handler did not raise: a short,
        # early wake-up.
        return False


_ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGKILL, signal.SIGSTOP,  # cannot be held back
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP,
    signal.SIGABRT, signal.SIGSYS,  # raised by the thread itself: never hold those
}


class PollingWaiter(Waiter):
    name = "poll"

    def _take_blocking(self, sem: posix_ipc.Semaphore, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = POLL_MIN_SLEEP
        while True:
            try:
                sem.acquire(0)
                return True
            except posix_ipc.BusyError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_SLEEP)


def waiter_from_env() -> Waiter:
    """The strategy for a bus or subscription created now (`SHMBUS_WAIT` = timed | poll;
    always poll where the platform has no timed wait)."""
    wanted = os.environ.get(WAIT_ENV, "").strip().lower()
    if wanted not in ("", "timed", "poll"):
        raise InvalidArgument(
            f"{WAIT_ENV}={shown(wanted)} is not a wait strategy; use 'timed' or 'poll'")
    if wanted == "poll" or not _platform.TIMED_WAIT:
        return PollingWaiter()
    return TimedWaiter()


def deadline_after(timeout: float | None) -> float | None:
    """An absolute `time.monotonic()` deadline, or None for no deadline (also for an
    infinite timeout)."""
    if timeout is None:
        return None
    kind = type(timeout)
    if (kind is float or kind is int) and 0 <= timeout < _FOREVER:
        return time.monotonic() + timeout  # the usual case first: every emit asks
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgument(f"timeout must be None or a number of seconds, got {shown(timeout)}")
    if timeout != timeout or timeout < 0:
        raise InvalidArgument(f"timeout must be None or a number >= 0, got {shown(timeout)}")
    if timeout >= _FOREVER:  # an int too large for a float, too
        return None
    return time.monotonic() + timeout


_FOREVER = 1e15
"""A timeout this long (30 million years) or longer waits as long as it takes."""


def slice_until(deadline: float | None) -> float:
    """How long the next slice may sleep: SLICE, or less if the deadline is nearer."""
    if deadline is None:
        return SLICE
    return max(0.0, min(SLICE, deadline - time.monotonic()))


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def acquire_by(lock: "threading.RLock", deadline: float | None) -> bool:
    """Take a thread lock, giving up at `deadline`; True if taken.

    Callers use re-entrant locks: a `KeyboardInterrupt` can land just after the lock is
    taken and before the caller's `try`, and only the main thread receives those, so a
    lock leaked that way stays usable by the thread that will make the next call.
    """
    if deadline is None:
        return lock.acquire()
    while True:
        # The thread module refuses longer timeouts (OverflowError) than TIMEOUT_MAX.
        left = max(0.0, deadline - time.monotonic())
        if left <= threading.TIMEOUT_MAX:
            return lock.acquire(timeout=left)
        if lock.acquire(timeout=threading.TIMEOUT_MAX):
            return True


def take_posted(sem: posix_ipc.Semaphore, count: int) -> None:
    """Take up to `count` tokens that are there now, without waiting.

    Each side takes at most one token per event it handles, whether or not the other
    side has posted it yet; a token posted late is a spurious wake-up for a later wait,
    which the counters make harmless (see `_ring`).
    """
    try:
        for _ in range(count):
            sem.acquire(0)
    except posix_ipc.BusyError:
        pass


def fence(sem: posix_ipc.Semaphore) -> None:
    """Order a flag stored before this call before the counters read after it.

    Plain loads and stores give no store-then-load order, even on x86; a post and a take
    (net zero tokens) are atomic operations that do. See `_ring` on doorbells.
    """
    sem.release()
    take_posted(sem, 1)


def post_each(sems: list[posix_ipc.Semaphore], count: int = 1) -> None:
    """Post `count` tokens to every one of `sems`, in one C-level loop: a
    `KeyboardInterrupt` cannot land between two of them."""
    any(map(_post, sems * count if count > 1 else sems))  # release() returns None


_post = posix_ipc.Semaphore.release


def spin(ready: Callable[[], object], seconds: float) -> bool:
    """Yield the CPU until `ready()` is truthy (True), at most `seconds` (False).

    The ring's waiters spin on the counter itself, before they raise their sleeping
    flag: a look at a counter costs a fraction of a failed try-wait (which raises), and
    while nobody's flag is up the other side posts nothing and reads a cache line
    nobody writes.
    """
    if seconds <= 0:
        return False
    until = time.perf_counter() + seconds
    while True:
        os.sched_yield()
        if ready():
            return True
        if time.perf_counter() >= until:
            return False


def _poster(sem: posix_ipc.Semaphore) -> Callable[[], bool]:
    """A `ready` that takes a token if one was posted."""
    def posted() -> bool:
        try:
            sem.acquire(0)
            return True
        except posix_ipc.BusyError:
            return False
    return posted
