"""POSIX shared-memory segments and semaphores: names, creation, removal.

## Shape

Every object of one bus is named from the bus's random *token* (8 hex digits drawn when
the emitter creates it), never from the user's bus name:

    /sb_<token>               the control block (one per bus)
    /sb_<token>_r<id>         subscriber <id>'s ring, with semaphores ..._r<id>d (data)
                              and ..._r<id>s (space)
    /sb_<token>_b<k>          large event number <k> (see `_blob`)

The longest is 23 characters, under macOS's limit of 31, whatever the bus is called; two
buses cannot collide because creation is exclusive (`O_EXCL`) and a clash draws a new
token. Every object is created with mode 0600: only the owning user's processes can open
it, which matters because subscribers unpickle what they read.

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

import errno
import mmap
import os
import sys

import posix_ipc

from ._errors import OutOfSharedMemory

PREFIX = "/sb_"
MODE = 0o600


def control_name(token: str) -> str:
    return f"{PREFIX}{token}"


def ring_name(token: str, sub_id: int) -> str:
    return f"{PREFIX}{token}_r{sub_id:x}"


def data_sem_name(token: str, sub_id: int) -> str:
    return ring_name(token, sub_id) + "d"


def space_sem_name(token: str, sub_id: int) -> str:
    return ring_name(token, sub_id) + "s"


def blob_name(token: str, index: int) -> str:
    return f"{PREFIX}{token}_b{index:x}"


def create_segment(name: str, size: int) -> mmap.mmap:
    """Create a new segment of `size` bytes (fails if `name` exists) and map it."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=size)
    try:
        _reserve(shm.fd, size, name)
        return mmap.mmap(shm.fd, size)
    except BaseException:
        unlink_segment(name)
        raise
    finally:
        shm.close_fd()


def open_segment(name: str) -> mmap.mmap:
    """Map an existing segment whole. Raises `posix_ipc.ExistentialError` if it is gone,
    or not sized yet: its creator is between creating and sizing it."""
    shm = posix_ipc.SharedMemory(name)
    try:
        if shm.size == 0:
            raise posix_ipc.ExistentialError(f"{name} is being created")
        return mmap.mmap(shm.fd, shm.size)
    finally:
        shm.close_fd()


def unlink_segment(name: str) -> bool:
    """Remove a segment's name; True if it existed. Mappings already made stay valid.

    A name we may not remove belongs to another user (ours are always ours to remove),
    so it is left alone.
    """
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False


def create_semaphore(name: str, initial: int) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=MODE, initial_value=initial)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        raise _out_of_memory(name, mmap.PAGESIZE) from exc  # Linux: a page each


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    return posix_ipc.Semaphore(name)


def unlink_semaphore(name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(name)
        return True
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False


def _reserve(fd: int, size: int, name: str) -> None:
    if not sys.platform.startswith("linux"):
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
