"""The platform layer: shared memory and semaphores as shmbus needs them, on Linux and macOS.

## Shape

Every call shmbus makes to the operating system about its shared objects goes through
this module: create a segment or semaphore (exclusively, mode 0600), open one that must
already exist (checked), remove one, and ask whether one exists. The rest of the package
names objects (`_names`) and decides who owns them (`_registry`); it never calls
`posix_ipc` to create, open or remove anything itself.

## Mappings keep no descriptor

A segment is mapped with `mmap(2)` and its descriptor closed at once: a mapping does not
need one. (Python's `mmap.mmap` keeps a duplicate open for as long as the mapping lives,
before 3.13, which made every subscriber cost the emitter a descriptor and let a process
at its `RLIMIT_NOFILE` stop the whole bus.) `Mapping` is the mapped segment: a
`memoryview` of its bytes, and a `close()` that unmaps only once no view of it is left,
so no code can touch memory that is gone. It is the compiled core's mapping where that is
built, else one made here through `ctypes`.

## Checked opening

`/dev/shm` is writable by everyone (sticky), so any local user can create a name before
we do: a *squatter*. A squatted name is never used, by either side:

- creating is always exclusive (`O_EXCL`), so a name someone else holds fails with
  `posix_ipc.ExistentialError`, and the caller picks another name;
- opening verifies that the object belongs to this user and that nobody else may read or
  write it, and raises `ForeignObject` (naming the owner) if not. Segments are checked
  with `fstat` on the descriptor that is then mapped, so what is checked is what is used.
  Semaphores have no descriptor; on Linux each is the file `/dev/shm/sem.<name>`, checked
  before `sem_open` and again after it (same inode): only its owner can remove a file
  from the sticky `/dev/shm`, so an object that is ours before and after is the one that
  was opened. macOS hides semaphores from the filesystem; there a squatted semaphore can
  be opened, but it carries no data (events live in the checked segment), so the worst a
  squatter can do is ring a doorbell (see the README's trust model).

## The ledger

When `SHMBUS_LEDGER` names a file, every object created (in this process and in every
process that inherits the variable) is appended to it, one name per line. That is how a
test suite checks that it removed everything it created without listing `/dev/shm`,
which macOS cannot do and which would also show other programs' buses
(`shmbus.testing`).

## Why not `multiprocessing.shared_memory`

It registers each segment with a resource tracker that unlinks it when the process that
*attached* exits, and unrelated processes each get their own tracker. Lifetime here is
decided by the registry, so we use `posix_ipc` directly.

## Running out of memory

`ftruncate` reserves nothing: on a full `/dev/shm` (Docker gives it 64 MB) the failure
would come later, as SIGBUS in whichever process first touches the page. On Linux every
segment is `posix_fallocate`d at creation, so it fails at once with `OutOfSharedMemory`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import resource
import stat
import sys
import weakref
from collections.abc import Callable, Iterator

import posix_ipc

from ._errors import ForeignObject, OutOfSharedMemory, ShmBusError

MODE = 0o600
LEDGER_ENV = "SHMBUS_LEDGER"
SEGMENT = "segment"
SEMAPHORE = "semaphore"

_LINUX = sys.platform.startswith("linux")

NEEDS_FENCES = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86")
"""Whether plain loads and stores may be reordered across one another here (ARM64, among
others). The pure-Python ring protocol then puts a semaphore operation, a full barrier,
where order matters (`_protocol`); x86's total store order needs none."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value
_SEMAPHORE_DIR = "/dev/shm"
"""Where Linux (glibc) keeps named semaphores, as files `sem.<name without the slash>`."""


# -- segments ------------------------------------------------------------------------


class Mapping:
    """A shared segment mapped into this process, with no descriptor kept open.

    `view` is a writable `memoryview` of its bytes. `close()` unmaps it, and refuses
    (`BufferError`) while a view made from `view` is still alive, as `mmap.mmap` does.
    `lend()` hands out read-only views that outlive even `close()`: the unmapping waits
    until the last of them, and the last thing made from them, is gone. `borrow()` does
    the same for the compiled ring core, which works on the raw address.
    """

    __slots__ = ("view", "size", "_address", "_array", "_lent", "_returned", "_closing",
                 "__weakref__")

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0:
            raise ValueError(f"cannot map {size} bytes")
        address = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                             fd, 0)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            if code == errno.EMFILE:
                raise too_many_files() from None
            raise OSError(code, f"mmap of {size} bytes failed: {os.strerror(code)}")
        self._address: int | None = address
        self._array = (ctypes.c_ubyte * size).from_address(address)
        self.view = memoryview(self._array).cast("B")
        self.size = size
        self._lent = 0
        self._returned: list[None] = []  # appended by finalizers: atomic under the GIL
        self._closing = False

    @property
    def closed(self) -> bool:
        return self._closing or self._address is None

    def __len__(self) -> int:
        return self.size

    def lend(self, offset: int, length: int, on_return: Callable[[], None]) -> memoryview:
        """A read-only view of `length` bytes at `offset`, valid as long as it or anything
        made from it (a numpy array, a slice) lives; `on_return()` runs when all are gone.
        """
        if self._address is None or self._closing or not 0 <= offset <= self.size - length:
            raise ValueError(f"cannot lend {length} bytes at {offset} of this mapping")
        array = (ctypes.c_ubyte * length).from_address(self._address + offset)
        self._lent += 1
        weakref.finalize(array, self._given_back, on_return)
        return memoryview(array).toreadonly()

    def borrow(self) -> "tuple[int, int, object]":
        """For the compiled ring core (package-internal): the mapping's address and size,
        and a token that keeps them mapped for as long as it lives.

        The token counts as a lent view: `close()` still returns at once, and the
        unmapping waits until the token is dropped. So code that holds the address in C
        cannot write to memory that was unmapped under it, whatever order the Python
        objects are closed in.
        """
        if self._address is None or self._closing:
            raise ValueError("cannot borrow the memory of a closed mapping")
        token = _Borrowed()
        self._lent += 1
        # Not run at interpreter exit: the core may still hold the address then.
        weakref.finalize(token, self._given_back, _nothing).atexit = False
        return self._address, self.size, token

    def close(self) -> None:
        """Unmap, now or once every lent view is gone. Idempotent; `BufferError` while a
        view made from `view` is still in use."""
        if self._address is None or self._closing:
            return
        self.view.release()
        # Every live view (slices and casts included) holds the array: one reference
        # here, one for getrefcount's argument, any more is a view still out there.
        if sys.getrefcount(self._array) > 2:
            self.view = memoryview(self._array).cast("B")
            raise BufferError("cannot unmap a segment while a view of it is still in use")
        self._closing = True
        if self._lent == len(self._returned):
            self._unmap()

    def _given_back(self, on_return: Callable[[], None]) -> None:
        self._returned.append(None)
        on_return()
        if self._closing and self._lent == len(self._returned):
            self._unmap()

    def _unmap(self) -> None:
        address, self._address = self._address, None
        if address is not None:
            del self._array
            _libc.munmap(address, self.size)

    def __del__(self) -> None:
        # Dropped without close() (an interruption at the wrong moment): unmap, unless a
        # view still needs the memory (lent views keep this object alive themselves).
        if getattr(self, "_address", None) is not None and not self._closing:
            try:
                self.close()
            except BufferError:
                pass


class _Borrowed:
    """What `Mapping.borrow` hands out: its lifetime is all that matters."""

    __slots__ = ("__weakref__",)


def _nothing() -> None:
    pass


def too_many_files() -> ShmBusError:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ShmBusError(
        f"this process has reached its limit of {limit} open files (RLIMIT_NOFILE): shmbus "
        "needs one more for a moment. Close files or sockets you no longer need, or raise "
        "the limit (`ulimit -n`, or resource.setrlimit). shmbus keeps one open per "
        "emitter and per subscription; see the README's platform notes."
    )


@contextlib.contextmanager
def files_checked() -> Iterator[None]:
    """Turn running out of file descriptors into `too_many_files()`."""
    try:
        yield
    except OSError as exc:
        # posix_ipc says EMFILE in words only, with no errno.
        if exc.errno == errno.EMFILE or "maximum number of files" in str(exc):
            raise too_many_files() from exc
        raise


def create_segment(name: str, size: int) -> Mapping:
    """Create a new segment of `size` bytes (fails if `name` exists) and map it."""
    shm = _shared_memory(name, posix_ipc.O_CREX, size)
    _record(SEGMENT, name)
    try:
        _reserve(shm.fd, size, name)
        return Mapping(shm.fd, size)
    except BaseException:
        unlink_segment(name)
        raise
    finally:
        shm.close_fd()


def open_segment(name: str) -> Mapping:
    """Map an existing segment of ours whole.

    Raises `posix_ipc.ExistentialError` if it is gone or not sized yet (its creator is
    between creating and sizing it), and `ForeignObject` if it is not ours alone.
    """
    try:
        shm = _shared_memory(name, 0, 0)
    except posix_ipc.PermissionsError:
        raise _foreign(name, "shared-memory segment") from None
    try:
        _check_ours(os.fstat(shm.fd), name, "shared-memory segment")
        if shm.size == 0:
            raise posix_ipc.ExistentialError(f"{name} is being created")
        return Mapping(shm.fd, shm.size)
    finally:
        shm.close_fd()


class _Opened:
    """A shared-memory object opened for a moment: its descriptor is closed by `close()`,
    or when this is dropped, so an interruption in between cannot leak it (posix_ipc
    never closes one by itself)."""

    __slots__ = ("shm",)

    def __init__(self, name: str, flags: int, size: int) -> None:
        with files_checked():
            self.shm = posix_ipc.SharedMemory(name, flags, mode=MODE, size=size)

    @property
    def fd(self) -> int:
        return int(self.shm.fd)

    @property
    def size(self) -> int:
        return int(self.shm.size)

    def close_fd(self) -> None:
        if self.shm.fd >= 0:
            self.shm.close_fd()

    def __del__(self) -> None:
        if hasattr(self, "shm"):
            with contextlib.suppress(Exception):
                self.close_fd()


def _shared_memory(name: str, flags: int, size: int) -> _Opened:
    return _Opened(name, flags, size)


def unlink_segment(name: str) -> bool:
    """Remove a segment of ours by name; True if it existed. Mappings made stay valid.

    A name that is not ours is left alone, even where we could remove it (as root).
    """
    try:
        shm = _shared_memory(name, 0, 0)
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False  # gone, or someone else's
    try:
        _check_ours(os.fstat(shm.fd), name, "shared-memory segment")
    except ForeignObject:
        return False
    finally:
        shm.close_fd()
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False


def remove_stale_segment(name: str) -> None:
    """Remove a leftover segment of ours; `ForeignObject` if the name is someone else's."""
    try:
        shm = _shared_memory(name, 0, 0)
    except posix_ipc.ExistentialError:
        return
    except posix_ipc.PermissionsError:
        raise _foreign(name, "shared-memory segment") from None
    try:
        _check_ours(os.fstat(shm.fd), name, "shared-memory segment")
    finally:
        shm.close_fd()
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)


def segment_exists(name: str) -> bool:
    try:
        _shared_memory(name, 0, 0).close_fd()
    except posix_ipc.ExistentialError:
        return False
    except posix_ipc.PermissionsError:
        pass  # someone else's, but there
    return True


def page_size() -> int:
    """The size of a memory page here; every size rounded to pages is derived from it."""
    return mmap.PAGESIZE


# -- semaphores ----------------------------------------------------------------------


def create_semaphore(name: str, initial: int) -> posix_ipc.Semaphore:
    try:
        with files_checked():
            sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=MODE, initial_value=initial)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        raise _out_of_memory(name, mmap.PAGESIZE) from exc  # Linux: a page each
    _record(SEMAPHORE, name)
    return sem


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    """Open an existing semaphore of ours (checked where the platform shows its owner)."""
    before = _semaphore_file(name)
    try:
        with files_checked():
            sem = posix_ipc.Semaphore(name)
    except posix_ipc.PermissionsError:
        raise _foreign(name, "semaphore") from None
    if before is not None and _semaphore_file(name) != before:
        sem.close()
        raise posix_ipc.ExistentialError(f"{name} was replaced while it was being opened")
    return sem


def unlink_semaphore(name: str) -> bool:
    """Remove a semaphore of ours by name; True if it existed. Not ours: left alone."""
    try:
        _semaphore_file(name)
    except (posix_ipc.ExistentialError, ForeignObject):
        return False
    try:
        posix_ipc.unlink_semaphore(name)
        return True
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False


def semaphore_exists(name: str) -> bool:
    try:
        posix_ipc.Semaphore(name).close()
    except posix_ipc.ExistentialError:
        return False
    except posix_ipc.PermissionsError:
        pass
    return True


def _semaphore_file(name: str) -> tuple[int, int] | None:
    """(device, inode) of a semaphore of ours; None where semaphores are not files."""
    if not _LINUX:
        return None
    try:
        st = os.stat(os.path.join(_SEMAPHORE_DIR, "sem." + name.lstrip("/")),
                     follow_symlinks=False)
    except FileNotFoundError:
        raise posix_ipc.ExistentialError(f"No semaphore exists with the name {name}") from None
    _check_ours(st, name, "semaphore")
    return st.st_dev, st.st_ino


# -- the ledger -------------------------------------------------------------------------


def ledger_leftovers(path: str) -> list[tuple[str, str]]:
    """(kind, name) of every object a ledger recorded that still exists, in order."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for entry in dict.fromkeys(lines):  # each once, in order
        kind, _, name = entry.partition(" ")
        exists = segment_exists if kind == SEGMENT else semaphore_exists
        if exists(name):
            found.append((kind, name))
    return found


def remove(kind: str, name: str) -> bool:
    """Unlink a segment or semaphore by the kind a ledger gives."""
    return (unlink_segment if kind == SEGMENT else unlink_semaphore)(name)


# -- shared -----------------------------------------------------------------------------


def _check_ours(st: os.stat_result, name: str, kind: str) -> None:
    if st.st_uid != os.geteuid():
        raise ForeignObject(
            f"the {kind} {name} belongs to uid {st.st_uid}, not to you (uid "
            f"{os.geteuid()}): another user created that name first. shmbus never uses "
            "such an object; it picks another name where it can."
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ForeignObject(
            f"the {kind} {name} has mode {oct(stat.S_IMODE(st.st_mode))}: others may open "
            "it, and shmbus creates its objects private (0600). It was not made by shmbus; "
            "shmbus never uses such an object."
        )


def _foreign(name: str, kind: str) -> ForeignObject:
    return ForeignObject(
        f"the {kind} {name} belongs to another user, who created that name first; "
        "shmbus never uses such an object."
    )


def _record(kind: str, name: str) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        # A file object closes itself when dropped, even after an interruption.
        with open(ledger, "ab", buffering=0) as f:  # one write: appends never interleave
            f.write(f"{kind} {name}\n".encode())


def _reserve(fd: int, size: int, name: str) -> None:
    if not _LINUX:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise
        raise _out_of_memory(name, size) from exc


def _out_of_memory(name: str, size: int) -> OutOfSharedMemory:
    return OutOfSharedMemory(
        f"shared memory is full: {name} needs {size} bytes and /dev/shm has no room. "
        "Free space in /dev/shm (`shmbus gc` removes what dead buses left), use "
        "smaller capacities or events, or give the container more "
        "(docker run --shm-size=1g)."
    )
