"""The control block: the one shared-memory header of a bus.

## Shape

A small segment `/sb_<token>` that the emitter creates and every subscriber maps:

    offset  field          written by       meaning
    0       magic, version  emitter         b"shmbusCB", LAYOUT_VERSION: refuse anything else
    12      slot_size      emitter          bytes per ring slot on this bus
    16      committed      emitter          sequence number of the next event; every event
                                            below it is in every ring it was sent to
    24      closed         emitter          1 once the emitter closed cleanly
    28      capacity       emitter          ring capacity a subscriber gets by default
    32      generation     joiners/leavers  bumped (under the bus's file mutex) whenever a
                                            subscriber joins or leaves
    40      next_sub_id    joiners          id for the next subscriber (under the mutex)
    48      bytes          emitter          pickled bytes of every committed event: statistics
    56      large_bytes    emitter          the bound of the large-event arena (`_arena`)
    64      arena table    emitter          ARENA_ENTRIES x (nonce u32, in use u32, size u64):
                                            the arena segments that exist or may exist
    128     segment table  emitter          SEGMENT_ENTRIES x the same: segments of events
                                            larger than the arena
    640     history        emitter          events kept for late joiners (EventEmitter
                                            history=K): K
    648     history_held   emitter          how many it holds now (at most K)
    656     -              -                reserved

`committed` is the bus's linearization point: an event exists for subscribers exactly
when `committed` has moved past its sequence number, and it moves in one 8-byte store.
That is what makes `emit` all-or-nothing (see `_emitter`). The 8-byte counters are read
and written as aligned machine words (native byte order: every platform shmbus runs on
is little-endian, as the layout is).

The two tables are written *before* the segment they name is created and cleared after
it is removed, so whoever removes a dead bus finds every large-event segment there is,
even on macOS, which cannot list shared memory.

## Why not a counter per ring

With one counter per ring, the emitter would publish an event by N separate stores, and
an interruption between two of them would leave some subscribers with the event and
others without.
"""

from __future__ import annotations

import struct

from ._errors import IncompatibleBus, ShmBusError
from ._platform import Mapping

MAGIC = b"shmbusCB"
LAYOUT_VERSION = 2
SIZE = 1024
MAX_SUB_ID = 1 << 60
"""Keeps `/sb_<token>_r<id>d` within 30 characters, which macOS's sem_open takes
(its 31 counts the NUL). One id per subscribe(), so no bus lives to see it."""

ARENA_ENTRIES = 4
"""Arena segments alive at once: the current one, and older (smaller) ones that events
not yet read by everyone still live in. The arena grows at most this many times at once."""
SEGMENT_ENTRIES = 32
"""Events larger than the arena that may be in flight at once (each in a segment of its
own); one more waits until the oldest is read by everyone."""

_HEAD = struct.Struct("<8sII")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<IIQ")

_COMMITTED = 16
_CLOSED = 24
_DEFAULT_CAPACITY = 28
_GENERATION = 32
_NEXT_SUB_ID = 40
_BYTES = 48
_LARGE_BYTES = 56
_ARENA_TABLE = 64
_SEGMENT_TABLE = _ARENA_TABLE + ARENA_ENTRIES * _ENTRY.size
_HISTORY = 640
_HISTORY_HELD = 648
HISTORY_HELD_WORD = _HISTORY_HELD // 8
COMMITTED_WORD = _COMMITTED // 8
GENERATION_WORD = _GENERATION // 8
BYTES_WORD = _BYTES // 8


class ControlBlock:
    """Typed access to a mapped control block."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.buf = mapping.view
        # The counters as machine words: each read or write is one aligned 8-byte access,
        # which no reader can see half-done, and cheaper than a struct call.
        self.words = self.buf[:SIZE].cast("Q")

    @property
    def unmapped(self) -> bool:
        return self.mapping.closed

    def close(self) -> None:
        """Unmap; `unmapped` then says this ran."""
        self.words.release()
        self.mapping.close()

    @classmethod
    def initialize(cls, mapping: Mapping, slot_size: int, default_capacity: int,
                   large_bytes: int) -> "ControlBlock":
        _HEAD.pack_into(mapping.view, 0, MAGIC, LAYOUT_VERSION, slot_size)
        _U32.pack_into(mapping.view, _DEFAULT_CAPACITY, default_capacity)
        _U64.pack_into(mapping.view, _LARGE_BYTES, large_bytes)
        return cls(mapping)

    @classmethod
    def attach(cls, mapping: Mapping, where: str) -> "ControlBlock":
        if len(mapping) < SIZE:
            raise IncompatibleBus(
                f"{where}: control block is {len(mapping)} bytes, expected {SIZE}; it is "
                "corrupt or not a shmbus bus. Run `shmbus gc` and recreate the bus."
            )
        magic, version, _ = _HEAD.unpack_from(mapping.view, 0)
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
        return cls(mapping)

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
    def large_bytes(self) -> int:
        return int(_U64.unpack_from(self.buf, _LARGE_BYTES)[0])

    @property
    def history(self) -> int:
        """How many of the last events the emitter keeps for late joiners (0: none)."""
        return self.words[_HISTORY // 8]

    def set_history(self, depth: int) -> None:
        self.words[_HISTORY // 8] = depth

    @property
    def history_held(self) -> int:
        return self.words[HISTORY_HELD_WORD]

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
    def bytes_emitted(self) -> int:
        return self.words[BYTES_WORD]

    def set_bytes_emitted(self, total: int) -> None:
        self.words[BYTES_WORD] = total

    # -- the large-event tables -----------------------------------------------------

    def arena_entries(self) -> list[tuple[int, int]]:
        """(nonce, size) of every arena segment that exists or may exist."""
        return self._entries(_ARENA_TABLE, ARENA_ENTRIES)

    def segment_entries(self) -> list[tuple[int, int]]:
        """(nonce, size) of every segment of an event larger than the arena."""
        return self._entries(_SEGMENT_TABLE, SEGMENT_ENTRIES)

    def arena_entry(self, index: int) -> tuple[int, int] | None:
        """(nonce, size) of arena table entry `index`, if it is in use."""
        return self._entry(_ARENA_TABLE, index)

    def segment_entry(self, index: int) -> tuple[int, int] | None:
        """(nonce, size) of segment table entry `index`, if it is in use."""
        return self._entry(_SEGMENT_TABLE, index)

    def set_arena_entry(self, index: int, nonce: int, size: int) -> None:
        _ENTRY.pack_into(self.buf, _ARENA_TABLE + index * _ENTRY.size, nonce, 1, size)

    def clear_arena_entry(self, index: int) -> None:
        _ENTRY.pack_into(self.buf, _ARENA_TABLE + index * _ENTRY.size, 0, 0, 0)

    def set_segment_entry(self, index: int, nonce: int, size: int) -> None:
        _ENTRY.pack_into(self.buf, _SEGMENT_TABLE + index * _ENTRY.size, nonce, 1, size)

    def clear_segment_entry(self, index: int) -> None:
        _ENTRY.pack_into(self.buf, _SEGMENT_TABLE + index * _ENTRY.size, 0, 0, 0)

    def _entries(self, table: int, count: int) -> list[tuple[int, int]]:
        return [entry for index in range(count)
                if (entry := self._entry(table, index)) is not None]

    def _entry(self, table: int, index: int) -> tuple[int, int] | None:
        nonce, used, size = _ENTRY.unpack_from(self.buf, table + index * _ENTRY.size)
        return (int(nonce), int(size)) if used else None
