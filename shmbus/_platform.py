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
  squatter can do is post a doorbell (see the README's trust model).

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

## Linux and macOS: `PLATFORM`, and the macOS rules mode

Where shmbus must behave differently on the two, the difference lives here, as a field
of `PLATFORM` (a `Platform`) or a function of this module, never as a `sys.platform`
test elsewhere: how long a name may be, whether a segment can be sized twice, the page
size, whether a semaphore has a timed wait and a value, whether shared memory can be
listed, whether the kernel can signal a worker when its parent dies, and which start
method worker processes use.

`SHMBUS_PLATFORM=macos-rules` (read once, here, at import; child processes inherit it)
makes Linux play macOS strictly: `PLATFORM` becomes macOS's, on Apple silicon (16 KiB
pages, weak memory order), and what macOS's kernel refuses is refused here, before the
call reaches a Linux kernel that would allow it, with `PlatformRuleBroken`:

- a name longer than 30 characters (`MAX_NAME`);
- sizing a segment a second time, and a mapping of no bytes;
- a semaphore's `value`, and an `acquire` with a timeout (posix_ipc has no
  `sem_timedwait` there; the waits poll);
- listing, opening or changing anything under `/dev/shm` from the package's own code
  (macOS has no such directory), and looking up `prctl` (an audit hook sees both);

and segments are sized in whole 16 KiB pages, as macOS's kernel sizes them. The test
suite runs in that mode in CI: it proves shmbus keeps macOS's rules, not that macOS's
kernel behaves as modelled (see the README's platform notes).

Why not mock `posix_ipc`: the mode runs the real calls on real objects, with the checks
in front of them, so everything else the suite proves (processes, deaths, leaks) still
holds in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import mmap
import os
import platform
import resource
import stat
import sys
import sysconfig
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import posix_ipc

from ._errors import (
    ForeignObject,
    InvalidArgument,
    OutOfSharedMemory,
    PlatformRuleBroken,
    ShmBusError,
    shown,
)

MODE = 0o600
LEDGER_ENV = "SHMBUS_LEDGER"
PLATFORM_ENV = "SHMBUS_PLATFORM"
MACOS_RULES = "macos-rules"
"""The value of `PLATFORM_ENV` that makes Linux play macOS strictly."""
SEGMENT = "segment"
SEMAPHORE = "semaphore"


# -- the platform -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Platform:
    """What shmbus may ask of the operating system it runs on, where Linux and macOS
    differ. Each field says what follows from it."""

    name: str
    """"linux", "macos", or "macos-rules" (Linux playing macOS): for messages."""
    stand_in: bool
    """Linux plays macOS: what macOS's kernel refuses is refused here first, and what it
    does on its own (rounding sizes to pages) is done here."""
    max_name: int
    """Longest name of a segment or semaphore, its slash included: a longer one is
    refused with `PlatformRuleBroken` before any call."""
    sizes_once: bool
    """A segment can be sized only once (macOS: a second `ftruncate` fails), so it is
    created and sized in one go, never resized."""
    whole_pages: bool
    """A segment is sized in whole pages (macOS): whoever opens it sees its size rounded
    up, so nothing may learn what its creator asked for from its size."""
    page_size: int
    """Every size rounded to pages is a multiple of this (16 KiB on Apple silicon)."""
    timed_wait: bool
    """A semaphore can be waited on with a timeout (`sem_timedwait`); else waits poll."""
    semaphore_value: bool
    """A semaphore's count can be read; shmbus never does, its counters are in memory."""
    semaphores_are_files: bool
    """Each semaphore is a file (`/dev/shm/sem.<name>`, glibc) whose owner can be
    checked; elsewhere a squatted semaphore cannot be told from ours (README: trust)."""
    shm_listable: bool
    """Shared memory can be listed (`/dev/shm`). shmbus never does: the registry and
    the ledger name everything it made."""
    reserves_memory: bool
    """Segments are `posix_fallocate`d, so a full shared memory fails at creation."""
    parent_death_signal: bool
    """A worker can ask the kernel for a signal when its parent dies (`prctl`); else the
    pool's workers notice by `getppid()` alone."""
    start_method: str
    """Worker processes start by this: fork where it is safe, spawn on macOS, whose
    system libraries do not survive a fork of a process with threads."""
    needs_fences: bool
    """Plain loads and stores may be reordered across one another (ARM64, among others).
    The pure-Python ring protocol then puts a semaphore operation, a full barrier, where
    order matters (`_protocol`); x86's total store order needs none."""


_WEAK_ORDER = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86")

LINUX = Platform(
    name="linux", stand_in=False,
    # glibc names a semaphore /dev/shm/sem.<name without its slash>: a file name of at
    # most NAME_MAX (255) characters.
    max_name=255 - len("sem.") + 1,
    sizes_once=False, whole_pages=False, page_size=mmap.PAGESIZE,
    timed_wait=bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED),
    semaphore_value=bool(posix_ipc.SEMAPHORE_VALUE_SUPPORTED),
    semaphores_are_files=True, shm_listable=True, reserves_memory=True,
    parent_death_signal=True, start_method="fork", needs_fences=_WEAK_ORDER,
)

MACOS = Platform(
    name="macos", stand_in=False,
    # xnu's shm_open and sem_open count the terminating NUL against their 31 (PSHMNAMLEN,
    # PSEMNAMLEN; shm_open no longer does since macOS 10.15): 30 characters always work.
    max_name=30,
    sizes_once=True, whole_pages=True, page_size=mmap.PAGESIZE,
    timed_wait=False, semaphore_value=False,  # as posix_ipc says there
    semaphores_are_files=False, shm_listable=False, reserves_memory=False,
    parent_death_signal=False, start_method="spawn", needs_fences=_WEAK_ORDER,
)

MACOS_STAND_IN = dataclasses.replace(
    MACOS, name=MACOS_RULES, stand_in=True,
    page_size=16384,  # Apple silicon's; Intel Macs have 4 KiB, which asks less
    needs_fences=True,  # Apple silicon's memory order: the fenced paths run here too
)


def _chosen() -> Platform:
    wanted = os.environ.get(PLATFORM_ENV, "").strip().lower()
    if wanted == MACOS_RULES:
        return MACOS_STAND_IN
    if wanted:
        raise InvalidArgument(
            f"{PLATFORM_ENV}={shown(wanted)} is not a platform mode; use {MACOS_RULES!r} "
            "(Linux playing macOS, for tests) or leave it unset")
    return MACOS if sys.platform == "darwin" else LINUX


PLATFORM = _chosen()
"""The platform shmbus runs on, or plays: read once, when shmbus is imported."""

MAX_NAME = PLATFORM.max_name
TIMED_WAIT = PLATFORM.timed_wait
"""Whether `_wait` may sleep in `sem_timedwait`; else it polls."""
DEFAULT_START_METHOD = PLATFORM.start_method
NEEDS_FENCES = PLATFORM.needs_fences
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
            # Linux's mmap refuses no bytes too (EINVAL): one message for both.
            raise PlatformRuleBroken(f"cannot map {size} bytes: a mapping has at least one")
        # What `close` and `__del__` read is set before the memory exists: an interruption
        # anywhere below leaves an object they can finish.
        self._closing = False
        self._lent = 0
        self._returned: list[None] = []  # appended by finalizers: atomic under the GIL
        self._address: int | None = None
        self.size = size
        address = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                             fd, 0)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            if code == errno.EMFILE:
                raise too_many_files() from None
            raise OSError(code, f"mmap of {size} bytes failed: {os.strerror(code)}")
        self._address = address
        array = (ctypes.c_ubyte * size).from_address(address)
        self._array, self.view = array, memoryview(array).cast("B")

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
        if getattr(self, "view", None) is None:  # interrupted before it was made
            self._closing = True
            self._unmap()
            return
        self.view.release()
        # Every live view (slices and casts included) holds the array: one reference
        # here, one for getrefcount's argument, any more is a view still out there.
        if sys.getrefcount(self._array) > 2:
            # Perhaps only garbage: an interrupted frame's view, kept by a cycle between
            # the frame and the exception it holds (`except ... as exc`, then raise).
            gc.collect()
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
            with contextlib.suppress(AttributeError):  # never made, if interrupted early
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
    shm = _shared_memory(name, posix_ipc.O_CREX, 0)
    _record(SEGMENT, name)
    try:
        _set_size(shm.fd, size, name)
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
            self.shm = posix_ipc.SharedMemory(_allowed(name), flags, mode=MODE, size=size)

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


def _set_size(fd: int, size: int, name: str) -> None:
    """Size a new segment: once, as macOS allows (a second `ftruncate` fails there)."""
    if PLATFORM.sizes_once and os.fstat(fd).st_size != 0:
        raise PlatformRuleBroken(
            f"the shared-memory segment {name} is sized already, and {PLATFORM.name} sizes "
            "a segment only once (a second ftruncate fails)")
    # Where the kernel rounds (macOS), it does so itself; the stand-in does it for Linux.
    os.ftruncate(fd, segment_size(size) if PLATFORM.stand_in else size)


def segment_size(size: int) -> int:
    """The size whoever opens a segment created with `size` bytes sees."""
    if PLATFORM.whole_pages:
        return -(-size // PLATFORM.page_size) * PLATFORM.page_size
    return size


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
    return PLATFORM.page_size


# -- semaphores ----------------------------------------------------------------------


class _MacOSSemaphore(posix_ipc.Semaphore):  # type: ignore[misc]  # posix_ipc: no stubs
    """A semaphore as posix_ipc gives it on macOS, for the macOS rules mode: it has no
    `value`, and an `acquire` with a timeout, which macOS would turn into a wait without
    end, fails at once. Still a `posix_ipc.Semaphore`, so compiled code takes it as one."""

    __slots__ = ()

    @property
    def value(self) -> int:
        if PLATFORM.semaphore_value:
            return int(super().value)
        raise _NoSemaphoreValue(
            f"{self.name}: {PLATFORM.name} semaphores have no value (posix_ipc's "
            "SEMAPHORE_VALUE_SUPPORTED is False there); keep counts in shared memory")

    def acquire(self, timeout: float | None = None) -> None:
        if timeout is not None and timeout > 0 and not PLATFORM.timed_wait:
            raise PlatformRuleBroken(
                f"{self.name}: acquire(timeout={timeout}) needs sem_timedwait, which "
                f"{PLATFORM.name} has not (there it would wait forever); poll with "
                "acquire(0) instead")
        super().acquire(timeout)


class _NoSemaphoreValue(PlatformRuleBroken, AttributeError):
    """Also an `AttributeError`, as the missing attribute is on macOS: `hasattr` and
    `getattr(sem, "value", None)` work as they would there."""


_Semaphore: Any = _MacOSSemaphore if PLATFORM.stand_in else posix_ipc.Semaphore
"""What semaphores are opened as: macOS's rules applied in the rules mode."""



def create_semaphore(name: str, initial: int) -> posix_ipc.Semaphore:
    try:
        with files_checked():
            sem = _Semaphore(_allowed(name), posix_ipc.O_CREX, mode=MODE,
                             initial_value=initial)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        raise out_of_memory(name, page_size()) from exc  # Linux: a page each
    _record(SEMAPHORE, name)
    return sem


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    """Open an existing semaphore of ours (checked where the platform shows its owner)."""
    before = _semaphore_file(name)
    try:
        with files_checked():
            sem = _Semaphore(name)
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
        posix_ipc.unlink_semaphore(_allowed(name))
        return True
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False


def semaphore_exists(name: str) -> bool:
    try:
        _Semaphore(_allowed(name)).close()
    except posix_ipc.ExistentialError:
        return False
    except posix_ipc.PermissionsError:
        pass
    return True


def _semaphore_file(name: str) -> tuple[int, int] | None:
    """(device, inode) of a semaphore of ours; None where semaphores are not files."""
    _allowed(name)
    if not PLATFORM.semaphores_are_files:
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


def _allowed(name: str) -> str:
    """`name`, if this platform takes it for a segment or semaphore."""
    if len(name) > MAX_NAME:
        raise PlatformRuleBroken(
            f"the shared-object name {name!r} has {len(name)} characters; {PLATFORM.name} "
            f"takes at most {MAX_NAME}, its slash included")
    return name



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
    if not PLATFORM.reserves_memory:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise
        raise out_of_memory(name, size) from exc


def out_of_memory(name: str, size: int) -> OutOfSharedMemory:
    return OutOfSharedMemory(
        f"shared memory is full: {name} needs {size} bytes and /dev/shm has no room. "
        "Free space in /dev/shm (`shmbus gc` removes what dead buses left), use "
        "smaller capacities or events, or give the container more "
        "(docker run --shm-size=1g)."
    )


# -- processes --------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def ask_for_signal_on_parent_death(signum: int) -> bool:
    """Ask the kernel to send this process `signum` when its parent dies (Linux's
    `prctl(PR_SET_PDEATHSIG)`); whether it will. Where it will not, the caller's own
    `os.getppid()` checks are all there is."""
    if not PLATFORM.parent_death_signal:
        return False
    return bool(_libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signum),
                            ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0)


# -- the macOS rules mode: what no call of this module covers ---------------------------

_SHM_DIR = "/dev/shm"
_PATH_EVENTS = frozenset({
    "open", "os.listdir", "os.scandir", "glob.glob", "os.remove", "os.rename",
    "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
    "os.link", "os.symlink", "shutil.rmtree",
})
"""Audit events (`sys.audit`) whose first argument is a path: how the package could
reach `/dev/shm` without a call of this module. `os.stat` raises none, so it is not seen."""
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


def _refuse_what_macos_has_not(event: str, args: tuple[Any, ...]) -> None:
    """An audit hook: the package's own code may not touch `/dev/shm` (macOS has no such
    directory: shared memory cannot be listed there) nor look up `prctl` (none either).
    Code that is not the package's (tests, users) is left alone."""
    if event in _PATH_EVENTS and not PLATFORM.shm_listable:
        if not (args and _under_shm_dir(args[0])):
            return
        what = f"{event} of {args[0]!r}: {PLATFORM.name} has no {_SHM_DIR}, and shared " \
               "memory cannot be listed there; the registry names what to remove"
    elif (event == "ctypes.dlsym" and not PLATFORM.parent_death_signal
          and len(args) > 1 and args[1] == "prctl"):
        what = f"a call of prctl: {PLATFORM.name} has none"
    else:
        return
    if _asked_by_the_package(sys._getframe(1)):
        raise PlatformRuleBroken(what)


def _under_shm_dir(path: object) -> bool:
    if isinstance(path, (str, bytes, os.PathLike)):
        full = os.path.abspath(os.fsdecode(path))
        return full == _SHM_DIR or full.startswith(_SHM_DIR + os.sep)
    return False  # a descriptor, or None


def _asked_by_the_package(frame: FrameType | None) -> bool:
    """Whether the code that made the call, the first frame that is not the standard
    library's (`os`, `glob`, `ctypes`...), is the package's."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_PACKAGE_DIR):
            return True
        if not (filename.startswith(_STDLIB_DIR) or filename.startswith("<frozen ")):
            return False
        frame = frame.f_back
    return False


if PLATFORM.stand_in:
    sys.addaudithook(_refuse_what_macos_has_not)  # for good: a hook cannot be removed
