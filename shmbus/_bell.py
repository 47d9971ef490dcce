"""Bells: how a waiter inside an asyncio event loop sleeps on the bus.

## Shape

A POSIX semaphore cannot be watched by an event loop: waiting on one blocks the thread.
So a side that waits from asyncio (`arecv`, `aemit`) listens on a **bell** instead, a
named pipe in the bus's registry directory that it creates and owns (`bell.<id>` for a
subscriber, `bell.emitter` for the emitter), watched with `loop.add_reader`. It says it is
listening by setting its own flag in the ring header (`sub_waiting` or `emitter_waiting`),
re-checks the counters, and sleeps; the other side, after it moves a counter, sees the
flag and writes one byte into the pipe. The waiter then drains the pipe, clears its flag
and looks at the counters again: a bell, like a semaphore token, only says "look".

A waiting task therefore costs no thread and no CPU. It still wakes once per slice
(`_wait.SLICE`) to check that its peer lives, as the synchronous calls do, which also
bounds the cost of a ring the other side missed.

## Why not a helper thread per waiter, or polling

A thread blocked in `sem_wait` per waiting call is what the synchronous API already is;
a thousand waiting tasks would be a thousand threads. Polling with `asyncio.sleep` costs
CPU and latency in inverse proportion. A pipe is the one wake-up both Linux and macOS
event loops watch natively.

## Rules

- The listener keeps a write end of its own pipe open, so that the pipe never reads as
  end-of-file (which would make `add_reader` fire forever) when a ringer closes its end.
- Ringing never blocks and never fails: a full pipe has rung already, and a missing or
  unopened one has nobody listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat

from ._errors import ShmBusError

_NOBODY_LISTENS = (errno.ENXIO, errno.ENOENT, errno.EAGAIN, errno.EPIPE)


class Bell:
    """The listening end of one bell, owned by the process that created it."""

    def __init__(self, path: str) -> None:
        self.path = path
        _make_fifo(path)
        try:
            self._read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            self._keep_open_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except BaseException:
            self.close()
            raise
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, timeout: float) -> None:
        """Return once rung, or after `timeout` seconds, whichever is first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            loop.add_reader(self._read_fd, self._wake_all)
        self._waiters.add(waiter)
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)
            if not self._waiters:
                loop.remove_reader(self._read_fd)

    def close(self) -> None:
        """Close and remove the pipe. Idempotent."""
        for name in ("_read_fd", "_keep_open_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _wake_all(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read_fd, 4096):
                pass
        for waiter in self._waiters:
            _settle(waiter)


class Ringer:
    """The ringing end of the bells one process rings, opened on first use."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def ring(self, path: str) -> None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in _NOBODY_LISTENS:
                    return
                raise
            self._fds[path] = fd
        try:
            os.write(fd, b"!")
        except OSError as exc:
            if exc.errno not in _NOBODY_LISTENS:
                raise
            if exc.errno != errno.EAGAIN:
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
        # except by the emitter's own bell, whose bus it then owns): take it over.
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise ShmBusError(
                f"{path} exists and is not a pipe; the registry directory has been "
                "tampered with. Run `shmbus gc` and recreate the bus."
            ) from None


def _settle(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)
