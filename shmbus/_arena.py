"""Large events: written once into shared memory that every process maps once.

## Shape

An event whose pickle does not fit in a ring slot is laid out (`_codec.Parts`) in the
bus's **arena**, a shared segment `/sb_<token>_a<nonce>` used as a byte ring, and each
ring's slot carries only `(nonce, offset, length)`. Fanning a 1 MiB event out to four
subscribers costs one 1 MiB write, not four. The emitter allocates at the head; an
allocation is free once every ring's `tail` has passed its event (a subscriber decodes
an event before it moves its tail), and events are consumed in order, so space is freed
from the oldest end: a byte ring, no allocator. Every process maps the arena once, so in
steady state a large event costs no system call and no page fault, however many are in
flight and however slow the subscribers.

    arena  [ free | event 7 | event 8 | event 9 | free ]
                   ^ oldest not yet read by everyone   ^ head: the next event

## Growing, and the bound

The arena starts small (`START_BYTES`, or room for a few of the first large event) and,
when it is full, is joined by a larger one, as large as the emitter's bound
(`large_bytes`, `DEFAULT_LARGE_BYTES`) leaves: the arenas alive together never take more
than the bound. New events go to the new one; the old one is removed once everything in
it has been read, and a subscriber lets go of its mapping as soon as it reads from the
new one. It only ever grows, so in steady state one arena serves every event and nothing
is mapped or faulted in per event. If the bound is reached, or `/dev/shm` has no room
for a larger one, `emit` waits for the slowest subscriber exactly as for a full ring:
same timeout, same all-or-nothing.

An event larger than half the bound gets a segment of its own (`/sb_<token>_x<nonce>`),
which the subscriber maps, reads and unmaps at once, and the emitter removes as soon as
everyone has read it. It counts against the bound like the arenas, with one exception:
while fewer than `OVERSIZED_PAST_BOUND` such segments exist, one is made whatever the
arenas hold, or an event larger than what they leave could never go. So shared memory
held for large events is at most the bound plus two events: with a 64 MiB bound, a
subscriber that stalls holds back a third 40 MiB event, where it once let 32 of them
pile up.

## Who removes what

The emitter names every segment in the control block's tables *before* it creates it
and clears the entry after removing it (`_control`), so whoever removes a dead bus finds
them all, even on macOS, where shared memory cannot be listed. Names carry a random nonce:
another user who lists `/dev/shm` cannot create the next one first.

## Why not a segment per event

That was shmbus's first design. With more events in flight than a subscriber kept
mapped, every subscriber mapped, faulted in and unmapped a segment per event, and a
subscriber's cache of mappings kept memory the emitter had already freed (unlinking a
segment frees nothing while it is mapped): 20 events of 100 MiB pinned 2 GiB of
`/dev/shm`. A byte ring is mapped once and never pins anything but itself.

## Why not a chunked ring

Splitting a large event across consecutive slots would copy it into every subscriber's
ring, and would cap an event at the ring's size (faster-fifo's issue #21: a message larger
than its buffer blocks forever).
"""

from __future__ import annotations

import secrets
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import posix_ipc

from . import _codec, _names, _platform
from ._control import ARENA_ENTRIES, SEGMENT_ENTRIES, ControlBlock
from ._errors import IncompatibleBus, InvalidArgument, OutOfSharedMemory, ShmBusError, shown

DEFAULT_LARGE_BYTES = 64 << 20
"""The bound of large events' shared memory: they take at most this much (plus two events
larger than half of it, each in a segment of its own), and `emit` waits when it is full."""

OVERSIZED_PAST_BOUND = 2
"""Events larger than half the bound that may be in flight past it: two, because the usual
`recv(view=True)` loop holds the view of one while it waits for the next (the view keeps
its event's memory, see `_subscription`). With one, that loop and its emitter would each
wait for the other."""

MIN_LARGE_BYTES = 1 << 20

MAX_LARGE_BYTES = 1 << 46
"""The largest bound: 64 TiB, far beyond any machine's shared memory, and well inside the
control block's 64-bit words."""

START_BYTES = 4 << 20
"""The arena's first size (a quarter of the bound, if that is less), unless the first
large event needs more: room for four of it, or the whole bound if that is half of it or
more. Once that is full, it grows in one step to what the bound leaves, if that is
larger; the old one goes once its events are read, so the two never take more than the
bound. Then it stays: in steady state, one arena, mapped once by every process."""

ALIGN = 64

REF = struct.Struct("<IIQQ")  # nonce, reserved, offset in the segment, laid-out length
"""What a ring slot holds for a large event (`_ring.KIND_ARENA` or `KIND_SEGMENT`)."""

_CREATE_TRIES = 16


def _aligned(length: int) -> int:
    return -(-length // ALIGN) * ALIGN


class _Segment:
    """One arena segment, as the emitter allocates in it."""

    __slots__ = ("entry", "nonce", "size", "mapping", "head", "tail")

    def __init__(self, entry: int, nonce: int, mapping: _platform.Mapping) -> None:
        self.entry = entry  # its index in the control block's arena table
        self.nonce = nonce
        self.size = len(mapping)
        self.mapping = mapping
        self.head = 0  # positions grow forever; offset = position % size
        self.tail = 0

    def allocate(self, size: int) -> int | None:
        """The offset of `size` free bytes, contiguous, or None if there are none."""
        position = self.head
        offset = position % self.size
        if offset + size > self.size:
            position += self.size - offset  # the end is too short: wrap to the start
            offset = 0
        if position + size - self.tail > self.size:
            return None
        self.head = position + size
        return offset


class Arena:
    """The emitter's large events of one bus: the arena and the oversized segments."""

    def __init__(self, token: str, control: ControlBlock) -> None:
        self._token = token
        self._control = control
        self.bound = control.large_bytes
        self._arenas: list[_Segment] = []  # oldest first; the last is where events go
        self._oversized: dict[int, tuple[int, _platform.Mapping]] = {}  # entry: nonce, map
        self._outstanding: deque[tuple[int, _Segment | int, int]] = deque()
        """(seq, arena segment or oversized entry, head after it) of every large event
        not yet read by everyone, seq ascending."""
        self.in_flight = self._outstanding
        """The same deque, read-only: truthy while a large event is not read by everyone
        (for the emitter's hot path, where the `outstanding` property costs a call)."""

    # -- what the emitter asks ----------------------------------------------------------

    @property
    def outstanding(self) -> bool:
        return bool(self._outstanding)

    @property
    def oldest_seq(self) -> int | None:
        """The event that must be read by everyone before there is more room."""
        return self._outstanding[0][0] if self._outstanding else None

    @property
    def held_bytes(self) -> int:
        """Shared memory the large events of this bus hold now."""
        return (sum(a.size for a in self._arenas)
                + sum(len(m) for _, m in self._oversized.values()))

    def oversized(self, length: int) -> bool:
        """Whether an event laid out in `length` bytes gets a segment of its own."""
        return _aligned(length) > self.bound // 2

    def put(self, seq: int, parts: _codec.Parts) -> bytes | None:
        """Write event `seq` into shared memory: the `REF` its slots carry, or None if
        there is no room until older events are read."""
        if self.oversized(len(parts)):
            return self._put_oversized(seq, parts)
        size = _aligned(len(parts))
        placed = self._allocate(size)
        if placed is None:
            return None
        segment, offset = placed
        self._outstanding.append((seq, segment, segment.head))  # before: see discard_newest
        with segment.mapping.view[offset : offset + size] as target:
            parts.write_into(target)
        return REF.pack(segment.nonce, 0, offset, len(parts))

    def discard_newest(self) -> None:
        """Undo the last `put`, for an event that was never committed."""
        _, where, _ = self._outstanding.pop()
        if isinstance(where, _Segment):
            newest = self._outstanding[-1] if self._outstanding else None
            if newest is not None and newest[1] is where:
                where.head = newest[2]
            else:
                where.head = where.tail
        else:
            self._remove_oversized(where)

    def reclaim(self, oldest_unread: int) -> None:
        """Free the space of every event below `oldest_unread` (read by everyone), and
        remove arena segments that no longer hold any."""
        outstanding = self._outstanding
        while outstanding and outstanding[0][0] < oldest_unread:
            _, where, head = outstanding.popleft()
            if isinstance(where, _Segment):
                where.tail = head
            else:
                self._remove_oversized(where)
        while len(self._arenas) > 1 and self._arenas[0].tail == self._arenas[0].head:
            self._remove_arena(self._arenas.pop(0))

    def close(self) -> None:
        """Unmap everything; the segments stay for whoever removes the bus."""
        for segment in self._arenas:
            segment.mapping.close()
        for _, mapping in self._oversized.values():
            mapping.close()
        self._arenas.clear()
        self._oversized.clear()

    # -- the arena ------------------------------------------------------------------------

    def _allocate(self, size: int) -> "tuple[_Segment, int] | None":
        current = self._arenas[-1] if self._arenas else None
        if current is not None:
            if current.tail == current.head:
                current.head = current.tail = 0  # empty: start at the beginning again
            offset = current.allocate(size)
            if offset is not None:
                return current, offset
        grown = self._grow(size)
        if grown is None:
            return None
        offset = grown.allocate(size)
        assert offset is not None, "a new arena has room for the event it was made for"
        return grown, offset

    def _grow(self, size: int) -> _Segment | None:
        """A larger arena for new events, if the bound and the tables allow it: the old
        ones and the new one together never take more than the bound."""
        page = _platform.page_size()
        current = self._arenas[-1].size if self._arenas else 0
        left = self.bound - sum(a.size for a in self._arenas)
        if self._arenas:
            wanted = left  # one step to what the bound leaves
        else:
            wanted = max(min(START_BYTES, self.bound // 4), 4 * size)
            if 2 * wanted >= self.bound:
                wanted = self.bound  # no second one could be larger: all of it at once
        wanted = min(left, max(wanted, size)) // page * page
        # Only ever larger: one no larger would replace the current one, then be
        # replaced in turn, each new one mapped and faulted in anew by every process.
        if (wanted < size or wanted <= current
                or len(self._arenas) >= ARENA_ENTRIES):
            return None  # wait for room in the one there is
        entry = next(i for i in range(ARENA_ENTRIES)
                     if all(a.entry != i for a in self._arenas))
        self._forget_arena_entry(entry)
        try:
            nonce, mapping = self._create_arena(entry, wanted, size, current)
        except ShmBusError:
            self._control.clear_arena_entry(entry)
            if not self._arenas:
                raise  # not even one arena: nothing can be sent
            return None  # no room for a larger one: wait for the one there is
        segment = _Segment(entry, nonce, mapping)
        self._arenas.append(segment)
        return segment

    def _create_arena(self, entry: int, wanted: int, needed: int, current: int
                      ) -> tuple[int, _platform.Mapping]:
        """An arena of `wanted` bytes or, where `/dev/shm` has less room, the largest
        that does fit, down to what one event of `needed` bytes takes."""
        page = _platform.page_size()
        smallest = max(current + page, -(-needed // page) * page)
        while True:
            try:
                return self._create("a", wanted, lambda n: self._control.set_arena_entry(
                    entry, n, wanted))
            except OutOfSharedMemory:
                if wanted // 2 < smallest:
                    raise
                wanted = max(smallest, wanted // 2 // page * page)

    def _forget_arena_entry(self, entry: int) -> None:
        """Remove what an entry not in use still names: a segment an interrupted
        `emit` made and never used (the table names it; nothing else does)."""
        stale = self._control.arena_entry(entry)
        if stale is not None:
            _platform.unlink_segment(_names.arena_name(self._token, stale[0]))
            self._control.clear_arena_entry(entry)

    def _forget_segment_entry(self, entry: int) -> None:
        stale = self._control.segment_entry(entry)
        if stale is not None:
            _platform.unlink_segment(_names.oversized_name(self._token, stale[0]))
            self._control.clear_segment_entry(entry)

    def _remove_arena(self, segment: _Segment) -> None:
        segment.mapping.close()
        _platform.unlink_segment(_names.arena_name(self._token, segment.nonce))
        self._control.clear_arena_entry(segment.entry)

    # -- events larger than the arena can take ------------------------------------------

    def _put_oversized(self, seq: int, parts: _codec.Parts) -> bytes | None:
        if (len(self._oversized) >= OVERSIZED_PAST_BOUND
                and self.held_bytes + len(parts) > self.bound):
            return None
        free = [i for i in range(SEGMENT_ENTRIES) if i not in self._oversized]
        if not free:
            return None
        entry = free[0]
        self._forget_segment_entry(entry)
        try:
            nonce, mapping = self._create("x", len(parts),
                                          lambda n: self._control.set_segment_entry(
                                              entry, n, len(parts)))
        except BaseException:
            self._control.clear_segment_entry(entry)
            raise
        self._oversized[entry] = (nonce, mapping)
        self._outstanding.append((seq, entry, 0))
        with mapping.view[:] as target:
            parts.write_into(target)
        return REF.pack(nonce, 0, 0, len(parts))

    def _remove_oversized(self, entry: int) -> None:
        nonce, mapping = self._oversized.pop(entry)
        mapping.close()  # the subscribers have unmapped it already
        _platform.unlink_segment(_names.oversized_name(self._token, nonce))
        self._control.clear_segment_entry(entry)

    def _create(self, kind: str, size: int, record: Any) -> tuple[int, _platform.Mapping]:
        """A new segment under a fresh random name, recorded in the control block
        before it exists; a name someone else holds is never used."""
        for _ in range(_CREATE_TRIES):
            nonce = secrets.randbits(32)
            record(nonce)
            name = _names.large_name(self._token, kind, nonce)
            try:
                return nonce, _platform.create_segment(name, size)
            except posix_ipc.ExistentialError:
                continue  # taken (by anyone): draw again
        raise ShmBusError(
            f"{_CREATE_TRIES} random names in a row for a large-event segment of bus "
            f"{self._token} were taken: another local user is squatting this bus's "
            "names. Nothing was sent; recreate the bus."
        )


class ArenaReader:
    """A subscriber's view of the large events of one bus.

    It keeps the arena it read from last mapped (one mapping, whatever the number of
    events in flight), and maps an oversized event's segment only while it reads it.

    With `as_views`, an event's out-of-band buffers (numpy arrays) are read-only views
    of shared memory instead of copies (`Mapping.lend`). Such an event stays *viewed*
    for as long as anything made from those views lives, and the subscriber keeps its
    memory pinned until then (`_ring` on `pinned`): the emitter cannot overwrite what a
    view still shows, and no mapping is unmapped under a view.
    """

    def __init__(self, token: str, pin: Callable[[int], None]) -> None:
        self._token = token
        # Writes this subscriber's `pinned` word (`_ring`). Weak: the subscription holds
        # this reader, and a cycle would leave a dropped subscription to the collector.
        self._pin = weakref.WeakMethod(pin)
        self._arena: tuple[int, _platform.Mapping] | None = None
        self._viewed: deque[_Viewed] = deque()  # oldest first
        # Views are given back by finalizers, in any thread and at any moment, even
        # inside this object's own calls (hence re-entrant).
        self._guard = threading.RLock()

    @property
    def viewed(self) -> int:
        """Events whose views are still in use (the pin stays at the oldest of them,
        so those given back behind it are still listed, but not counted)."""
        with self._guard:
            return sum(not viewed.done for viewed in self._viewed)

    def load(self, seq: int, kind_is_arena: bool, ref: bytes, as_views: bool = False) -> Any:
        """Decode large event `seq` from where its slot says it lies. With `as_views`,
        the event is pinned (before this returns) until its views are all gone."""
        nonce, _, offset, length = REF.unpack(ref)
        if kind_is_arena:
            mapping = self._arena_mapping(nonce)
        else:
            mapping = self._open(_names.oversized_name(self._token, nonce))
            offset = 0
        viewed = _Viewed(seq, self._given_back)
        lend = None
        if as_views:
            def lend(at: int, size: int) -> memoryview:
                viewed.lent += 1
                return mapping.lend(offset + at, size, viewed.give_back)
        try:
            with mapping.view[offset : offset + length] as laid_out:
                value = _codec.decode_laid_out(laid_out, lend)
        finally:
            if not kind_is_arena:
                mapping.close()  # now, or once its views are gone
        if viewed.lent:
            with self._guard:  # pinned before the caller moves its tail past the event
                self._viewed.append(viewed)
                self._repin()
        return value

    def raw(self, kind_is_arena: bool, ref: bytes) -> bytes:
        """A copy of the layout of the large event a slot refers to (see `_codec`)."""
        nonce, _, offset, length = REF.unpack(ref)
        if kind_is_arena:
            return bytes(self._arena_mapping(nonce).view[offset : offset + length])
        mapping = self._open(_names.oversized_name(self._token, nonce))
        try:
            return bytes(mapping.view[:length])
        finally:
            mapping.close()

    def _given_back(self) -> None:
        with self._guard:
            self._repin()

    def _repin(self) -> None:
        while self._viewed and self._viewed[0].done:
            self._viewed.popleft()
        pin = self._pin()
        if pin is not None:
            pin(self._viewed[0].seq if self._viewed else NO_PIN)

    def close(self) -> None:
        """Unmap everything, now or (where views are in use) once they are gone."""
        if self._arena is not None:
            self._arena[1].close()
            self._arena = None

    def _arena_mapping(self, nonce: int) -> _platform.Mapping:
        if self._arena is not None and self._arena[0] == nonce:
            return self._arena[1]
        if self._arena is not None:
            # Events are read in order: nothing this process reads again is in the old
            # one (views of it keep what they show mapped).
            self._arena[1].close()
            self._arena = None
        mapping = self._open(_names.arena_name(self._token, nonce))
        self._arena = (nonce, mapping)
        return mapping

    def _open(self, name: str) -> _platform.Mapping:
        try:
            return _platform.open_segment(name)
        except posix_ipc.ExistentialError:
            raise IncompatibleBus(
                f"large-event segment {name} is missing: it was removed before this "
                "subscriber read it (was it removed by hand?)"
            ) from None


class _Viewed:
    """One event whose buffers were lent out: done once every view of it is gone."""

    __slots__ = ("seq", "lent", "returned", "_changed")

    def __init__(self, seq: int, changed: Callable[[], None]) -> None:
        self.seq = seq
        self.lent = 0
        self.returned: list[None] = []  # appended by finalizers: atomic under the GIL
        self._changed = changed

    def give_back(self) -> None:
        self.returned.append(None)
        if self.done:
            self._changed()

    @property
    def done(self) -> bool:
        return len(self.returned) == self.lent


NO_PIN = (1 << 64) - 1
"""The `pinned` word when no event is viewed (`_ring.NO_PIN`)."""


def remove_all(token: str, control: ControlBlock) -> None:
    """Remove every large-event segment the control block names (a bus being removed)."""
    for nonce, _ in control.arena_entries():
        _platform.unlink_segment(_names.arena_name(token, nonce))
    for nonce, _ in control.segment_entries():
        _platform.unlink_segment(_names.oversized_name(token, nonce))


def validate_large_bytes(large_bytes: object) -> int:
    if isinstance(large_bytes, bool) or not isinstance(large_bytes, int):
        raise InvalidArgument(f"large_bytes must be an int, got {type(large_bytes).__name__}")
    if not MIN_LARGE_BYTES <= large_bytes <= MAX_LARGE_BYTES:
        raise InvalidArgument(
            f"large_bytes must be from {MIN_LARGE_BYTES} ({MIN_LARGE_BYTES >> 20} MiB) to "
            f"{MAX_LARGE_BYTES} ({MAX_LARGE_BYTES >> 40} TiB), got {shown(large_bytes)}"
        )
    return large_bytes
