"""Wake pipes: how a waiter inside an asyncio event loop sleeps on the bus.

## Shape

A POSIX semaphore cannot be watched by an event loop: waiting on one blocks the thread.
So a side that waits from asyncio (`arecv`, `aemit`) listens on a **wake pipe** instead,
a named pipe in the bus's registry directory that it creates and owns (`bell.<id>` for a
subscriber, `bell.emitter` for the emitter: the on-disk names, see
`Registry.wake_pipe_path`), watched with `loop.add_reader`. It says it is listening by
setting its own flag in the ring header (`sub_waiting` or `emitter_waiting`), re-checks
the counters, and sleeps; the other side, after it moves a counter, sees the flag and
writes one byte into the pipe: it wakes the waiter's loop. The waiter then drains the
pipe, clears its flag and looks at the counters again: a wake-up, like a semaphore
token, only says "look".

A waiting task therefore costs no thread and no CPU. It still wakes once per slice
(`_wait.SLICE`) to check that its peer lives, as the synchronous calls do, which also
bounds the cost of a wake-up the other side missed.

## Why not a helper thread per waiter, or polling

A thread blocked in `sem_wait` per waiting call is what the synchronous API already is;
a thousand waiting tasks would be a thousand threads. Polling with `asyncio.sleep` costs
CPU and latency in inverse proportion. A pipe is the one wake-up both Linux and macOS
event loops watch natively.

## Rules

- The listener keeps a write end of its own pipe open, so that the pipe never reads as
  end-of-file (which would make `add_reader` fire forever) when a waker closes its end.
- Waking never blocks and never fails: a full pipe has been written to already, and a
  missing or unopened one has nobody listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading

from ._errors import ShmBusError
from ._platform import files_checked


class WakePipe:
    """The listening end of one wake pipe, owned by the process that created it.

    Any number of tasks, in any number of event loops, may wait on it at once; `close()`
    may come from any thread. A loop that was closed with a task still waiting here
    leaves nothing behind that a later wait (in a new loop) would trip over.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.Lock()  # waiters, registrations and descriptors
        self._waiters: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
        self._closed = False
        self._read_fd: int | None = None
        self._keep_open_fd: int | None = None
        _make_fifo(path)
        try:
            with files_checked():
                self._read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                self._keep_open_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise

    async def wait(self, timeout: float) -> None:
        """Return once woken, or after `timeout` seconds, or at once if closed."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._add(loop, waiter):
            return
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._discard(loop, waiter)

    def close(self) -> None:
        """Remove the pipe and wake every waiter; the pipe closes when they are gone.
        Idempotent; may be called from any thread."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            for stale in [loop for loop in self._waiters if loop.is_closed()]:
                del self._waiters[stale]  # their waiters will never come back for the pipe
            waiting = {loop: set(futures) for loop, futures in self._waiters.items()}
            if not waiting:
                self._close_fds()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for loop, futures in waiting.items():
            _settle_in(loop, futures)

    def _add(self, loop: asyncio.AbstractEventLoop, waiter: "asyncio.Future[None]") -> bool:
        """Register `waiter`; False if the pipe is closed (nothing to wait for)."""
        with self._mutex:
            if self._closed or self._read_fd is None:
                return False
            for stale in [other for other in self._waiters if other.is_closed()]:
                # Closed with a task still waiting: its futures will never be settled.
                del self._waiters[stale]
            futures = self._waiters.setdefault(loop, set())
            if not futures:
                loop.add_reader(self._read_fd, self._wake_all)
            futures.add(waiter)
            return True

    def _discard(self, loop: asyncio.AbstractEventLoop, waiter: "asyncio.Future[None]") -> None:
        with self._mutex:
            futures = self._waiters.get(loop)
            if futures is None:
                return
            futures.discard(waiter)
            if futures:
                return
            del self._waiters[loop]
            if self._read_fd is not None and not loop.is_closed():
                loop.remove_reader(self._read_fd)
            if self._closed and not self._waiters:
                self._close_fds()  # close() left that to the last waiter

    def _wake_all(self) -> None:
        with self._mutex:
            if self._read_fd is not None:
                with contextlib.suppress(OSError):
                    while os.read(self._read_fd, 4096):
                        pass
            waiting = {loop: set(futures) for loop, futures in self._waiters.items()}
        for loop, futures in waiting.items():
            _settle_in(loop, futures)

    def _close_fds(self) -> None:
        for fd in (self._read_fd, self._keep_open_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._keep_open_fd = None


class Waker:
    """The writing end of the wake pipes one process writes to, opened on first use."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def wake(self, path: str) -> None:
        """Wake whoever listens on the pipe at `path`.

        Never raises: it runs after an event is committed, and a wake-up missed costs
        its listener one slice of latency, while an error here would make the caller
        believe the event was not sent."""
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return  # nobody listens (ENXIO, ENOENT), or no descriptor to spare
            self._fds[path] = fd
        try:
            os.write(fd, b"!")
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # a full pipe wakes its listener already
                self.forget(path)  # the listener went away; its successor is a new pipe

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for path in list(self._fds):
            self.forget(path)


def _make_fifo(path: str) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        # Left by a process that died listening (its id is never reused on this bus,
        # except by the emitter's own pipe, whose bus it then owns): take it over.
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise ShmBusError(
                f"{path} exists and is not a pipe; the registry directory has been "
                "tampered with. Run `shmbus gc` and recreate the bus."
            ) from None


def _settle_in(loop: asyncio.AbstractEventLoop, futures: "set[asyncio.Future[None]]") -> None:
    """Settle `futures`, which belong to `loop`, from whatever thread this runs in."""
    if _running_loop() is loop:
        for waiter in futures:
            _settle(waiter)
        return
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
        loop.call_soon_threadsafe(_settle_all, futures)


def _settle_all(futures: "set[asyncio.Future[None]]") -> None:
    for waiter in futures:
        _settle(waiter)


def _running_loop() -> "asyncio.AbstractEventLoop | None":
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)
