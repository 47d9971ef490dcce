"""Small tools the tests share: processes, /dev/shm inspection, timing."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import multiprocess

SHM_DIR = "/dev/shm"
OUR_PREFIXES = ("sb_", "sem.sb_")


def context(kind: str = "fork") -> Any:
    return multiprocess.get_context(kind)


def our_shm_objects() -> list[str]:
    """shmbus's segments and semaphores as Linux shows them in /dev/shm."""
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(OUR_PREFIXES)]
    except FileNotFoundError:  # pragma: no cover - macOS
        return []


def objects_of(token: str) -> list[str]:
    return [n for n in our_shm_objects() if f"sb_{token}" in n]


def unlink_shm_file(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll `predicate` until it is truthy; its value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(step)


def collect(name: str, out: Any, ready: Any = None, capacity: int | None = None,
            delay: float = 0.0) -> None:
    """Worker: subscribe to `name`, record every event until the stream ends, report."""
    import shmbus

    sub = shmbus.subscribe(name, capacity=capacity)
    if ready is not None:
        ready.put(sub.id)
    events = []
    with contextlib.suppress(shmbus.EmitterDied):  # recorded below, as the end reason
        for event in sub:
            events.append(event)
            if delay:
                time.sleep(delay)
    reason = sub.end_reason.value if sub.end_reason else None
    sub.close()
    out.put((events, reason))


def collect_in_batches(name: str, out: Any, ready: Any, capacity: int | None,
                       max_n: int) -> None:
    """Worker: as `collect`, with recv_many(max_n); also reports each batch's size."""
    import shmbus

    sub = shmbus.subscribe(name, capacity=capacity)
    ready.put(sub.id)
    # A head start for the emitter: the ring is full at the first call, so a batch of
    # max_n comes out however the two processes happen to be scheduled afterwards.
    time.sleep(0.3)
    events: list = []
    sizes = []
    while True:
        try:
            batch = sub.recv_many(max_n)
        except shmbus.Closed:
            break
        events += batch
        sizes.append(len(batch))
    reason = sub.end_reason.value if sub.end_reason else None
    sub.close()
    out.put((events, reason, sizes))


def subscribe_and_hold(name: str, ready: Any, capacity: int | None = None) -> None:
    """Worker: subscribe and never read, until killed."""
    import shmbus

    sub = shmbus.subscribe(name, capacity=capacity)
    ready.put(sub.id)
    while sub:  # holds the subscription until the test kills this process
        time.sleep(1)


def held_back(sub: Any) -> int:
    """Events `sub` took from its ring but has not returned yet (the rest of a batch)."""
    held = sub._reader if hasattr(sub, "_reader") else sub  # a local one's, or a member's
    parked, surplus = ((held.parked, held.surplus) if held is not sub
                       else (sub._parked, sub._surplus))
    return sum(len(part[1]) for part in (parked, surplus) if part is not None)


def token_of(emitter: Any) -> str:
    return emitter._token


class _Interrupts:
    count = 0


@contextlib.contextmanager
def interrupts_inside_shmbus(every: float) -> Iterator[_Interrupts]:
    """Raise KeyboardInterrupt at random points, but only while shmbus code runs.

    A thread sends SIGPROF (pytest-timeout's SIGALRM stays free) to the main thread about
    every `every` seconds of wall time (CPU-time timers tick too coarsely on some
    kernels to land inside calls that take microseconds); the handler raises only when
    the interrupted frame is the library's, so the test's own bookkeeping is never the
    thing interrupted. The sender needs the GIL to send, and the compiled core's calls
    never let go of it: the interpreter's switch interval is shortened meanwhile, so
    that the sender gets its turn as often as it asks.
    """
    seen = _Interrupts()
    target = threading.main_thread().ident
    assert target == threading.get_ident(), "interrupts are delivered to the main thread"
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if _in_the_library(frame):
            seen.count += 1
            raise KeyboardInterrupt

    def sender() -> None:
        while not stop.wait(every * random.uniform(0.5, 1.5)):
            signal.pthread_kill(target, signal.SIGPROF)

    previous = signal.signal(signal.SIGPROF, handler)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, every / 4))
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
        signal.signal(signal.SIGPROF, previous)


def _in_the_library(frame: Any) -> bool:
    """Whether `frame` runs the package's code (or a stdlib wrapper it called).

    The macOS rules' audit hook is the package's code run for whoever raised the event
    (pytest formatting a traceback, say): it counts as the library's only when its
    caller does, or the storm would reach into pytest's own error handling."""
    import shmbus
    from shmbus import _platform

    hook = _platform._refuse_what_macos_has_not.__code__
    probe = frame
    while probe is not None:
        if probe.f_code is hook:
            frame = probe.f_back
            break
        probe = probe.f_back
    while frame is not None and frame.f_code.co_filename == signal.__file__:
        frame = frame.f_back  # signal.pthread_sigmask is Python: look at its caller
    package = os.path.dirname(shmbus.__file__) + os.sep
    return frame is not None and frame.f_code.co_filename.startswith(package)


def closed_while_blocked(blocking_call: Callable[[], Any], close: Callable[[], Any],
                         after: float = 0.2) -> list[BaseException]:
    """Block in `blocking_call` on a thread, `close()` from here: what the call raised."""
    import shmbus

    raised: list[BaseException] = []

    def run() -> None:
        try:
            blocking_call()
        except shmbus.Closed as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(after)
    close()
    thread.join(2)
    assert not thread.is_alive(), "the blocked call did not end after close()"
    return raised
