"""The ring: one subscriber's bounded queue in shared memory.

## Shape

A segment `/sb_<token>_r<id>` with a 128-byte header and `capacity` fixed-size slots, and
two POSIX semaphores beside it:

    header  magic, version, capacity, slot_size
            adopted, start_seq   written once by the emitter when it first sees the ring:
                                 the first sequence number this ring receives
            tail                 written by the subscriber only: events consumed so far
            sub_closed           set by the subscriber when it closes
            blocked_ns           written by the emitter only: time spent waiting on it
            pinned               written by the subscriber only: the oldest event whose
                                 large-event memory it still reads in place (views
                                 handed out by `recv(view=True)`), or NO_PIN; the emitter
                                 reuses that memory only once this has moved past it
            sub_sleeping         written by the subscriber only: nonzero (a number of
                                 its own, new for every wait) while it waits on `data`
            emitter_sleeping     written by the emitter only: the same, while it waits
                                 on `space` for room in this ring
            sub_waiting          written by the subscriber only: it waits on its wake
                                 pipe (an asyncio wait, see `_wakepipe`)
            emitter_waiting      written by the emitter only: it waits on its wake
                                 pipe for room in this ring
    slot    seq (u64), kind (u32), length (u32), payload: the event's pickle inline if it
            fits in `slot_size - 16` bytes, else where it lies in the arena or in a
            segment of its own (`_arena.REF`)

Event `seq` lives in slot `seq % capacity`. The ring holds events `start_seq + tail` up to
(not including) the bus's `committed`; the emitter may write only while fewer than
`capacity` are held, so it never overwrites an unread slot. With the default capacity of
256, the emitter blocks on the 257th event a subscriber has not consumed.

## Counters are the truth, semaphores are the doorbells

`space` (the emitter sleeps on it) and `data` (the subscriber sleeps on it) carry no
count of anything: each side looks at the counters (`tail`, `committed`) and acts only on
what they say, and sleeps on its semaphore only when they say wait. Before it sleeps, a
side raises its sleeping flag with a number it has not used for its last wait, then
looks at the counter once more; after the other side moves the counter, it looks at that
flag and posts the semaphore once per number it sees (never twice for one wait). A full
barrier stands between each side's store and its look at the other's word, so that at
least one of the two sees the other (the flag, or the moved counter): no wake-up is
lost. While nobody sleeps, nobody posts: an event costs no semaphore operation at all.

A token posted for a wait that had found the counter moved already, or doubled by an
interruption, is a spurious wake-up for the next wait: it looks at the counters and
sleeps again. Neither can make the emitter overwrite a slot or the subscriber read one
twice, and at most one token per wait is ever posted, so tokens never pile up.

Memory order: the emitter writes a slot before it stores `committed`, and a subscriber
reads `committed` before the slot; the subscriber writes `tail` after reading the slot,
and the emitter reads `tail` before overwriting it. Each counter is one aligned 8-byte
access. x86-64's ordering (TSO) keeps these in program order; ARM64 does not: the
compiled core uses acquire and release there, the pure-Python one semaphore operations
(see `_protocol`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import posix_ipc

from . import _names, _platform
from ._errors import ForeignObject, IncompatibleBus, InvalidArgument, shown
from ._wait import fence

MAGIC = b"shmbusRG"
LAYOUT_VERSION = 3
"""3: the sleeping flags, and a doorbell posted only for a side that sleeps."""
HEADER_SIZE = 128
SLOT_HEADER_SIZE = 16
SLOT_SIZE = 512
"""Events whose pickle is at most 496 bytes travel inline; a 100-byte dict uses one slot
and a default ring of 256 slots takes 128 KiB of shared memory."""

MAX_CAPACITY = min(1 << 20, posix_ipc.SEMAPHORE_VALUE_MAX)
"""A ring's `space` semaphore starts at `capacity`, which the platform caps (32767 on
some systems); past a million slots a ring would also take 512 MiB."""

KIND_INLINE = 0
KIND_ARENA = 1
KIND_SEGMENT = 2
KIND_BATCH = 3
"""The first slot of a batch: events pickled as one list, laid across the slots of all
of them (each keeps its number, so a ring's capacity still counts events). Its kind word
carries the count above the low byte."""
_KINDS = (KIND_INLINE, KIND_ARENA, KIND_SEGMENT, KIND_BATCH)

_HEAD = struct.Struct("<8sIII")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_SLOT = struct.Struct("<QII")
_LARGE_LENGTH = struct.Struct("<Q")

_ADOPTED = 20
_START_SEQ = 24
_TAIL = 32
_SUB_CLOSED = 40
_BLOCKED_NS = 48
TAIL_WORD = _TAIL // 8
SUB_WAITING = 0
"""Index in `Ring.flags`: the subscriber listens on its wake pipe for events."""
EMITTER_WAITING = 1
"""Index in `Ring.flags`: the emitter listens on its wake pipe for room in this ring."""
_PINNED = 64
PINNED_WORD = _PINNED // 8
NO_PIN = (1 << 64) - 1
_SLEEPING = 72
_WAITING = 80
# The words both sides read on every event (the four flags) share the header's second
# cache line with `pinned`, all written only now and then; `tail`, written on every event,
# stays on the first, which the emitter reads once per lap of the ring at most. Side by
# side, every event moved that line between the two cores (15% of the throughput).
SUB_SLEEPING = 0
"""Index in `Ring.sleeping`: the subscriber sleeps on `data` (its wait's number)."""
EMITTER_SLEEPING = 1
"""Index in `Ring.sleeping`: the emitter sleeps on `space` (its wait's number)."""


def validate_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise InvalidArgument(f"capacity must be an int, got {type(capacity).__name__}")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(
            f"capacity must be between 1 and {MAX_CAPACITY} slots, got {shown(capacity)}"
        )
    return capacity


class Ring:
    """One mapped ring and its two semaphores, as either side sees it."""

    def __init__(
        self,
        sub_id: int,
        mapping: _platform.Mapping,
        data: posix_ipc.Semaphore,
        space: posix_ipc.Semaphore,
        names: tuple[str, str, str],
    ) -> None:
        buf = mapping.view
        magic, version, capacity, slot_size = _HEAD.unpack_from(buf, 0)
        self.sub_id = sub_id
        self.mapping = mapping
        self.buf = buf
        # Header counters as aligned machine words, as in the control block.
        self.words = buf[:HEADER_SIZE].cast("Q")
        # The two wake-pipe flags, 4 bytes each: each side writes only its own.
        self.flags = buf[_WAITING : _WAITING + 8].cast("I")
        # The two sleeping flags, the same way (see "doorbells" above).
        self.sleeping = buf[_SLEEPING : _SLEEPING + 8].cast("I")
        self.data = data
        self.space = space
        self.names = names
        self.capacity: int = capacity
        self.slot_size: int = slot_size
        self.inline_max = slot_size - SLOT_HEADER_SIZE

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    def create(cls, token: str, sub_id: int, capacity: int, slot_size: int) -> "Ring":
        """Create the ring and its semaphores; the subscriber that calls this owns them."""
        # Each step undoes only what this call created: a name that was already taken
        # (by anyone) is left alone.
        names = ring_object_names(token, sub_id)
        mapping = _platform.create_segment(names[0], HEADER_SIZE + capacity * slot_size)
        try:
            _HEAD.pack_into(mapping.view, 0, MAGIC, LAYOUT_VERSION, capacity, slot_size)
            _U64.pack_into(mapping.view, _PINNED, NO_PIN)
            data = _platform.create_semaphore(names[1], 0)
        except BaseException:
            mapping.close()
            _platform.unlink_segment(names[0])
            raise
        try:
            space = _platform.create_semaphore(names[2], capacity)
        except BaseException:
            data.close()
            mapping.close()
            _platform.unlink_segment(names[0])
            _platform.unlink_semaphore(names[1])
            raise
        return cls(sub_id, mapping, data, space, names)

    @classmethod
    def attach(cls, token: str, sub_id: int, slot_size: int) -> "Ring":
        """Open a ring some subscriber created. Raises `posix_ipc.ExistentialError`
        if it is gone, `ForeignObject` if any of its objects is not ours alone (a
        squatter's: never written to), and `IncompatibleBus` if its header makes no
        sense."""
        names = ring_object_names(token, sub_id)
        mapping = _platform.open_segment(names[0])
        try:
            _check_header(mapping.view, names[0], slot_size)
            data = _platform.open_semaphore(names[1])
            try:
                space = _platform.open_semaphore(names[2])
            except BaseException:
                data.close()
                raise
        except BaseException:
            mapping.close()
            raise
        return cls(sub_id, mapping, data, space, names)

    def detach(self) -> None:
        """Close this process's handles; the shared objects stay for their owner.

        The mapping goes last: callers test `detached` to know whether this ran.
        """
        for sem in (self.data, self.space):
            try:
                sem.close()
            except posix_ipc.Error:
                pass
        self.words.release()
        self.flags.release()
        self.sleeping.release()
        self.mapping.close()

    @property
    def detached(self) -> bool:
        return self.mapping.closed

    # -- header fields ----------------------------------------------------------------

    @property
    def adopted(self) -> bool:
        return bool(_U32.unpack_from(self.buf, _ADOPTED)[0])

    @property
    def start_seq(self) -> int:
        return int(_U64.unpack_from(self.buf, _START_SEQ)[0])

    def adopt(self, start_seq: int) -> None:
        _U64.pack_into(self.buf, _START_SEQ, start_seq)
        if _platform.NEEDS_FENCES:
            fence(self.data)  # `start_seq` before the flag that makes it valid
        _U32.pack_into(self.buf, _ADOPTED, 1)

    @property
    def tail(self) -> int:
        return self.words[TAIL_WORD]

    def set_tail(self, tail: int) -> None:
        self.words[TAIL_WORD] = tail

    @property
    def pinned(self) -> int:
        return self.words[PINNED_WORD]

    def pin(self, seq: int) -> None:
        """Keep the large-event memory of events from `seq` on (NO_PIN: none)."""
        self.words[PINNED_WORD] = seq

    @property
    def sub_closed(self) -> bool:
        return bool(_U32.unpack_from(self.buf, _SUB_CLOSED)[0])

    def mark_sub_closed(self) -> None:
        _U32.pack_into(self.buf, _SUB_CLOSED, 1)

    @property
    def blocked_ns(self) -> int:
        return int(_U64.unpack_from(self.buf, _BLOCKED_NS)[0])

    def add_blocked_ns(self, ns: int) -> None:
        _U64.pack_into(self.buf, _BLOCKED_NS, self.blocked_ns + ns)

    # -- slots --------------------------------------------------------------------------

    def write_slots(self, first: int, block: bytes) -> None:
        """Write `block` (slots end to end, made by `inline_slot`, `large_slot`,
        `batch_slot` and `slot_block`) from where event `first` belongs: one copy, two
        where it runs past the ring's end."""
        start = HEADER_SIZE + (first % self.capacity) * self.slot_size
        room = HEADER_SIZE + self.capacity * self.slot_size - start
        if len(block) <= room:
            self.buf[start : start + len(block)] = block
            return
        with memoryview(block) as view:
            self.buf[start : start + room] = view[:room]
            self.buf[HEADER_SIZE : HEADER_SIZE + len(block) - room] = view[room:]

    def slot(self, seq: int) -> tuple[int, int, bytes]:
        """(kind, count, payload) of the slot of event `seq`: its pickle inline, a large
        event's `_arena.REF`, or a batch's list pickle (`count` events). A copy, never a
        view: a view held by a traceback would pin the mapping."""
        off = HEADER_SIZE + (seq % self.capacity) * self.slot_size
        found, word, length = _SLOT.unpack_from(self.buf, off)
        kind, count = word & 0xFF, word >> 8 or 1
        limit = count * self.slot_size - SLOT_HEADER_SIZE
        if found != seq or kind not in _KINDS or length > limit or not \
                (count == 1 or (kind == KIND_BATCH and count <= self.capacity)):
            raise IncompatibleBus(
                f"{self.names[0]}: slot for event {seq} holds event {found} (kind {word}, "
                f"{length} bytes); the ring is corrupt. Close this subscription and "
                "subscribe again."
            )
        start = off + SLOT_HEADER_SIZE
        end = HEADER_SIZE + self.capacity * self.slot_size
        if start + length <= end:
            return kind, count, bytes(self.buf[start : start + length])
        head = bytes(self.buf[start:end])  # a batch that runs past the ring's end
        return kind, count, head + bytes(self.buf[HEADER_SIZE : HEADER_SIZE + length - len(head)])


def inline_slot(seq: int, payload: bytes) -> bytes:
    """Event `seq` as one ring slot holding its pickle (at most `slot_size - 16` bytes).

    Built once per event and copied into each ring with one slice assignment.
    """
    return _SLOT.pack(seq, KIND_INLINE, len(payload)) + payload


def slot_kind(slot: bytes) -> int:
    """The kind of a slot made by `inline_slot` or `large_slot`."""
    return int(_SLOT.unpack_from(slot, 0)[1])


def large_slot(seq: int, kind: int, ref: bytes) -> bytes:
    """Event `seq` as one ring slot referring to where it lies (`_arena.REF`)."""
    return _SLOT.pack(seq, kind, len(ref)) + ref


def slot_block(slots: list[bytes], slot_size: int = SLOT_SIZE) -> bytes:
    """Slots made by `inline_slot` or `large_slot`, padded to whole slots, end to end
    (the last one is not padded: nothing reads past its length)."""
    if len(slots) == 1:
        return slots[0]
    return b"".join([slot.ljust(slot_size, b"\0") for slot in slots[:-1]]) + slots[-1]


def batch_slot(seq: int, count: int, pickle: bytes) -> bytes:
    """Events `seq` to `seq + count - 1`, pickled as one list: the block that fills
    their slots (see `KIND_BATCH`)."""
    return _SLOT.pack(seq, KIND_BATCH | count << 8, len(pickle)) + pickle


def batch_fits(count: int, pickle: bytes, slot_size: int = SLOT_SIZE) -> bool:
    return len(pickle) <= count * slot_size - SLOT_HEADER_SIZE


def large_length(ref: bytes) -> int:
    """The size of the large event a slot's payload refers to (`_arena.REF`)."""
    return int(_LARGE_LENGTH.unpack_from(ref, 16)[0])


def ring_object_names(token: str, sub_id: int) -> tuple[str, str, str]:
    return (
        _names.ring_name(token, sub_id),
        _names.data_sem_name(token, sub_id),
        _names.space_sem_name(token, sub_id),
    )


def unlink_ring(token: str, sub_id: int) -> None:
    """Remove the ring's segment and semaphores, whichever of them exist."""
    segment, data, space = ring_object_names(token, sub_id)
    _platform.unlink_segment(segment)
    _platform.unlink_semaphore(data)
    _platform.unlink_semaphore(space)


def _check_header(buf: memoryview, name: str, slot_size: int) -> None:
    if len(buf) < HEADER_SIZE:
        raise IncompatibleBus(f"{name}: ring is {len(buf)} bytes, too small to be a ring")
    magic, version, capacity, found_slot = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC or version != LAYOUT_VERSION:
        raise IncompatibleBus(
            f"{name}: ring header has magic {magic!r} version {version}, expected "
            f"{MAGIC!r} version {LAYOUT_VERSION}: corrupt, or made by another shmbus "
            "version. Use one shmbus version in every process."
        )
    expected = HEADER_SIZE + capacity * found_slot
    if found_slot != slot_size or not 1 <= capacity <= MAX_CAPACITY or len(buf) < expected:
        raise IncompatibleBus(
            f"{name}: ring header says {capacity} slots of {found_slot} bytes in a "
            f"{len(buf)}-byte segment on a bus of {slot_size}-byte slots: corrupt."
        )


class RingStats(NamedTuple):
    """What a ring's header says, read by someone who is neither of its two sides."""

    capacity: int
    adopted: bool
    start_seq: int
    tail: int
    sub_closed: bool
    blocked_ns: int


def read_stats(token: str, sub_id: int) -> RingStats | None:
    """A snapshot of ring `sub_id`'s header, or None if it is gone or unreadable.

    Maps only the segment, never the semaphores, and writes nothing: an observer cannot
    disturb the stream.
    """
    name = _names.ring_name(token, sub_id)
    try:
        mapping = _platform.open_segment(name)
    except (posix_ipc.ExistentialError, ForeignObject):
        return None
    buf = mapping.view
    try:
        if len(buf) < HEADER_SIZE or _HEAD.unpack_from(buf, 0)[:2] != (MAGIC, LAYOUT_VERSION):
            return None
        return RingStats(
            capacity=int(_HEAD.unpack_from(buf, 0)[2]),
            adopted=bool(_U32.unpack_from(buf, _ADOPTED)[0]),
            start_seq=int(_U64.unpack_from(buf, _START_SEQ)[0]),
            tail=int(_U64.unpack_from(buf, _TAIL)[0]),
            sub_closed=bool(_U32.unpack_from(buf, _SUB_CLOSED)[0]),
            blocked_ns=int(_U64.unpack_from(buf, _BLOCKED_NS)[0]),
        )
    finally:
        mapping.close()
