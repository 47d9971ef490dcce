"""The control block: the one shared-memory header of a bus.

## Shape

A small segment `/sb_<token>` that the emitter creates and every subscriber maps:

    offset  field         written by      meaning
    0       magic, version  emitter       b"shmbusCB", LAYOUT_VERSION: refuse anything else
    12      slot_size     emitter         bytes per ring slot on this bus
    16      committed     emitter         sequence number of the next event; every event
                                          below it is in every ring it was sent to
    24      closed        emitter         1 once the emitter closed cleanly
    28      capacity      emitter         ring capacity a subscriber gets by default
    32      generation    joiners/leavers bumped (under the bus's file mutex) whenever a
                                          subscriber joins or leaves
    40      next_sub_id   joiners         id for the next subscriber (under the mutex)
    48      blob_limit    emitter         every large-event segment has an index below it
    56      bytes         emitter         pickled bytes of every committed event: statistics
    64      -             -               reserved

`committed` is the bus's linearization point: an event exists for subscribers exactly
when `committed` has moved past its sequence number, and it moves in one 8-byte store.
That is what makes `emit` all-or-nothing (see `_emitter`). The 8-byte counters are read
and written as aligned machine words (native byte order: every platform shmbus runs on
is little-endian, as the layout is).

## Why not a counter per ring

With one counter per ring, the emitter would publish an event by N separate stores, and
an interruption between two of them would leave some subscribers with the event and
others without.
"""

from __future__ import annotations

import mmap
import struct

from ._errors import IncompatibleBus, ShmBusError

MAGIC = b"shmbusCB"
LAYOUT_VERSION = 1
SIZE = 128
MAX_SUB_ID = 1 << 60
"""Keeps `/sb_<token>_r<id>d` within 30 characters, which macOS's sem_open takes
(its 31 counts the NUL). One id per subscribe(), so no bus lives to see it."""

_HEAD = struct.Struct("<8sII")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

_COMMITTED = 16
_CLOSED = 24
_DEFAULT_CAPACITY = 28
_GENERATION = 32
_NEXT_SUB_ID = 40
_BLOB_LIMIT = 48
_BYTES = 56
COMMITTED_WORD = _COMMITTED // 8
GENERATION_WORD = _GENERATION // 8
BYTES_WORD = _BYTES // 8


class ControlBlock:
    """Typed access to a mapped control block."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        # The counters as machine words: each read or write is one aligned 8-byte access,
        # which no reader can see half-done, and cheaper than a struct call.
        self.words = memoryview(buf)[:SIZE].cast("Q")

    def close(self) -> None:
        """Unmap; `buf.closed` then says this ran."""
        self.words.release()
        self.buf.close()

    @classmethod
    def initialize(cls, buf: mmap.mmap, slot_size: int, default_capacity: int) -> "ControlBlock":
        _HEAD.pack_into(buf, 0, MAGIC, LAYOUT_VERSION, slot_size)
        _U32.pack_into(buf, _DEFAULT_CAPACITY, default_capacity)
        return cls(buf)

    @classmethod
    def attach(cls, buf: mmap.mmap, where: str) -> "ControlBlock":
        if len(buf) < SIZE:
            raise IncompatibleBus(
                f"{where}: control block is {len(buf)} bytes, expected {SIZE}; it is "
                "corrupt or not a shmbus bus. Run `shmbus gc` and recreate the bus."
            )
        magic, version, _ = _HEAD.unpack_from(buf, 0)
        if magic != MAGIC:
            raise IncompatibleBus(
                f"{where}: control block has magic {magic!r}, not a shmbus bus (corrupt?). "
                "Run `shmbus gc` and recreate the bus."
            )
        if version != LAYOUT_VERSION:
            raise IncompatibleBus(
                f"{where}: bus was made by a shmbus with layout version {version}; this one "
                f"speaks {LAYOUT_VERSION}. Use the same shmbus version in every process."
            )
        return cls(buf)

    @property
    def slot_size(self) -> int:
        return int(_U32.unpack_from(self.buf, 12)[0])

    @property
    def committed(self) -> int:
        return self.words[COMMITTED_WORD]

    def commit(self, next_seq: int) -> None:
        self.words[COMMITTED_WORD] = next_seq

    @property
    def closed(self) -> bool:
        return bool(_U32.unpack_from(self.buf, _CLOSED)[0])

    def mark_closed(self) -> None:
        _U32.pack_into(self.buf, _CLOSED, 1)

    @property
    def default_capacity(self) -> int:
        return int(_U32.unpack_from(self.buf, _DEFAULT_CAPACITY)[0])

    @property
    def generation(self) -> int:
        return self.words[GENERATION_WORD]

    def bump_generation(self) -> None:
        """Call only under the bus's file mutex."""
        _U64.pack_into(self.buf, _GENERATION, self.generation + 1)

    def allocate_sub_id(self) -> int:
        """Call only under the bus's file mutex."""
        sub_id = int(_U64.unpack_from(self.buf, _NEXT_SUB_ID)[0])
        if sub_id >= MAX_SUB_ID:
            raise ShmBusError(
                f"this bus has had {MAX_SUB_ID} subscribers, the most its names allow; "
                "recreate the bus"
            )
        _U64.pack_into(self.buf, _NEXT_SUB_ID, sub_id + 1)
        return sub_id

    @property
    def blob_limit(self) -> int:
        return int(_U64.unpack_from(self.buf, _BLOB_LIMIT)[0])

    def raise_blob_limit(self, limit: int) -> None:
        _U64.pack_into(self.buf, _BLOB_LIMIT, limit)

    @property
    def bytes_emitted(self) -> int:
        return self.words[BYTES_WORD]

    def set_bytes_emitted(self, total: int) -> None:
        self.words[BYTES_WORD] = total
