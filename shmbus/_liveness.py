"""Liveness: deciding that a process is dead by a lock the kernel drops when it dies.

## Shape

Each live emitter and subscriber holds an exclusive `flock` on its own registry file, from
before the file is visible (it is locked under a temporary name, then renamed into place)
until it closes. Anyone asks "is it alive?" by trying to take the same lock without
blocking: if the try fails, the owner lives; if it succeeds, the owner is dead and the
prober now holds the lock, which makes it the one process that cleans up after the dead
owner (iceoryx2 has a separate owner lock for this; here it is the same lock).

## Why not PIDs, heartbeats or `fcntl` locks

- A PID can be reused by an unrelated process, and a zombie answers `kill(pid, 0)`. PIDs
  are recorded in the registry for display only.
- A heartbeat has to be written by someone and makes "dead" a matter of waiting out a
  period; iceoryx classic's takes 1.5 s. The kernel releases a lock at the exact moment
  the process dies, SIGKILL included.
- POSIX record locks (`fcntl`/`lockf`) belong to the process: they do not conflict with
  the same process (an emitter could not probe a subscription it holds itself) and vanish
  when the process closes *any* descriptor of the file. `flock` locks belong to the open
  file description, so two handles in one process do conflict, and closing an unrelated
  descriptor releases nothing. Linux's OFD locks would do as well, but macOS lacks them.

The one weakness of `flock`: a forked child shares the parent's open file descriptions, so
the child would keep a dead parent's locks held. `os.register_at_fork` closes every lock
descriptor of this module in the child, before any of the child's own code runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import weakref

_held: "weakref.WeakSet[LifeLock]" = weakref.WeakSet()
_held_guard = threading.Lock()

fork_epoch = 0
"""Bumped in every fork child. An object that remembers the epoch it was made in knows,
by one integer comparison, whether it was inherited through a fork; an inherited handle
must not emit, receive or remove anything, because its owner is the parent."""


class LifeLock:
    """An exclusive flock on one file, held for as long as this object is open."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        with _held_guard:
            _held.add(self)

    @classmethod
    def create(cls, path: str, content: bytes) -> "LifeLock":
        """Write `content` to `path`, holding the lock before the file can be seen there."""
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        lock = cls(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, content)
            os.rename(tmp, path)
        except BaseException:
            lock.release()
            _unlink_quietly(tmp)
            raise
        return lock

    @classmethod
    def take_if_dead(cls, path: str) -> "LifeLock | None":
        """The owner's lock if the owner of `path` is dead (or gone), None while it lives.

        Whoever gets the lock is the only process that may clean up after the dead owner;
        None is also returned when the file no longer exists (someone else cleaned up).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        lock = cls(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.release()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        if not _same_file(fd, path):  # unlinked between open and flock: already cleaned
            lock.release()
            return None
        return lock

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with _held_guard:
                _held.discard(self)
            os.close(fd)

    def __del__(self) -> None:
        # A lock dropped on the floor (an interruption between taking it and storing it)
        # must not stay held until the process exits.
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def is_alive(path: str) -> bool:
    """True while the process that created `path` with `LifeLock.create` lives.

    A file that does not exist has no live owner.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


class FileMutex:
    """A short critical section between processes: a blocking flock on a directory.

    A dead holder cannot wedge it: the kernel drops the lock with the process. Locking
    the directory itself, not a lock file inside it, lets the directory be removed while
    the lock is held; a process that then gets the lock finds the directory gone.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock: LifeLock | None = None

    def __enter__(self) -> "FileMutex":
        fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
        lock = LifeLock(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _drop_inherited_locks() -> None:
    # Runs in a fork child: its copies of the parent's descriptors must not keep the
    # parent's locks alive after the parent dies.
    global _held_guard, fork_epoch
    _held_guard = threading.Lock()  # another thread may have held it at the fork
    fork_epoch += 1
    for lock in list(_held):
        fd, lock.fd = lock.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)
