"""Liveness: deciding that a process is dead by a lock the kernel drops when it dies.

## Shape

Each live emitter and subscriber holds an exclusive `flock` on its own registry file, from
before the file is visible (it is locked under a temporary name, then renamed into place)
until it closes. Anyone asks "is it alive?" by trying to take the same lock without
blocking: if the try fails, the owner lives; if it succeeds, the owner is dead and the
prober now holds the lock, which makes it the one process that cleans up after the dead
owner (iceoryx2 has a separate owner lock for this; here it is the same lock). A mere
look (`is_alive`) takes it shared, for microseconds, and a cleaner waits such looks out:
a dead owner must not pass for alive because someone else was looking at that moment.

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

## Forks

The one weakness of `flock`: a fork child shares the parent's open file descriptions, and
with them their locks. A child that kept a copy would keep a dead parent "alive"; worse,
a copy of a descriptor the parent is *about to* lock (say, to probe a dead subscriber)
would make the child a holder of that lock for the rest of its life. So every descriptor
this module opens is opened, tracked and closed under `_guard`, which `os.fork` also takes
(`register_at_fork`): no fork happens between an `open` and its tracking, and the child
closes every tracked descriptor before any of its own code runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import weakref

from ._platform import files_checked

_guard = threading.RLock()
_open: "weakref.WeakValueDictionary[int, LifeLock]" = weakref.WeakValueDictionary()
"""Every descriptor this module has open, for a fork child to close. Weak, so that a
lock object dropped on the floor is finalized, which closes its descriptor."""

PROBE_PATIENCE = 0.05
"""How long a cleaner waits for probers to let go of a dead owner's lock. A probe holds
it for microseconds; only a prober stopped mid-probe (SIGSTOP) holds it longer, and then
the owner looks alive until the next try, as it did before a cleaner looked."""

fork_epoch = 0
"""Bumped in every fork child. An object that remembers the epoch it was made in knows,
by one integer comparison, whether it was inherited through a fork; an inherited handle
must not emit, receive or remove anything, because its owner is the parent."""


class LifeLock:
    """A descriptor of a lock file, with whatever flock this process took on it."""

    def __init__(self, path: str, flags: int) -> None:
        with _guard, files_checked():
            self.fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
            _open[self.fd] = self

    @classmethod
    def create(cls, path: str, content: bytes) -> "LifeLock":
        """Write `content` to `path`, holding the lock before the file can be seen there."""
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        lock = cls(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(lock.fd, content)
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
        lock = cls._open_existing(path)
        if lock is None:
            return None
        if not lock._take_from_probers() or not _same_file(lock.fd, path):
            lock.release()  # alive; or unlinked between open and flock: cleaned already
            return None
        return lock

    def _take_from_probers(self) -> bool:
        """The exclusive lock, waiting out anyone who holds it only to probe (`is_alive`
        holds it shared for a few microseconds): whether it was had.

        Failing on a prober would call a dead owner alive, and a durable subscription's
        next owner would be refused because an emitter happened to be looking."""
        deadline = time.monotonic() + PROBE_PATIENCE
        while not self.try_flock(fcntl.LOCK_EX):
            # Shared is had only if no owner or cleaner holds it exclusively. (Trying it
            # may drop nothing we need: we hold no lock on this descriptor yet.)
            if not self.try_flock(fcntl.LOCK_SH) or time.monotonic() > deadline:
                return False
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            time.sleep(PROBE_PATIENCE / 50)
        return True

    @classmethod
    def _open_existing(cls, path: str) -> "LifeLock | None":
        try:
            return cls(path, os.O_RDONLY)
        except FileNotFoundError:
            return None

    def try_flock(self, operation: int) -> bool:
        """Take the flock `operation` (`fcntl.LOCK_EX`, `LOCK_SH`) without waiting:
        whether it was had."""
        try:
            fcntl.flock(self.fd, operation | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise

    def release(self) -> None:
        with _guard:
            fd, self.fd = self.fd, -1
            if fd >= 0:
                _open.pop(fd, None)
                os.close(fd)

    def __del__(self) -> None:
        # A lock dropped on the floor (an interruption between taking it and storing it)
        # must not stay held until the process exits.
        if getattr(self, "fd", -1) >= 0:
            try:
                self.release()
            except OSError:
                pass


def is_alive(path: str) -> bool:
    """True while the process that created `path` with `LifeLock.create` lives.

    A file that does not exist has no live owner.
    """
    probe = LifeLock._open_existing(path)
    if probe is None:
        return False
    try:
        return not probe.try_flock(fcntl.LOCK_SH)
    finally:
        probe.release()


def try_lock(path: str) -> "LifeLock | None":
    """An exclusive flock on `path` (created if need be), if no one holds one; else None.

    For work that one process at a time should do, and that the others may skip.
    """
    lock = LifeLock(path, os.O_RDWR | os.O_CREAT)
    if lock.try_flock(fcntl.LOCK_EX):
        return lock
    lock.release()
    return None


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
        lock = LifeLock(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(lock.fd, fcntl.LOCK_EX)
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


def _before_fork() -> None:
    _guard.acquire()


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    # The parent's guard was held across the fork; the child starts with a fresh one and
    # lets go of every descriptor it inherited.
    global _guard, fork_epoch
    _guard = threading.RLock()
    fork_epoch += 1
    for fd, lock in list(_open.items()):
        lock.fd = -1
        try:
            os.close(fd)
        except OSError:
            pass
    _open.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
