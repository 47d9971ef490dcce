"""Large events: written once into shared memory, however many subscribers get them.

## Shape

An event whose pickle does not fit in a ring slot is written into a segment of its own,
`/sb_<token>_b<k>`, and each ring's slot carries only `(k, incarnation, length)`. Fanning a
1 MiB event out to four subscribers therefore costs one 1 MiB write, not four.

The emitter owns these segments. Segment `k` is free again once every ring's `tail` has
moved past the event that used it (a subscriber reads the segment before it advances its
tail). Free segments stay mapped in a pool and are filled again by later events of a
size they fit, because creating a segment and faulting in its pages costs far more than
the copy; beyond the pool's budget (`FREE_POOL_BYTES`) the largest are removed. An index
whose segment is replaced gets a new incarnation, which tells a subscriber that its own
cached mapping of that index (`BlobReader`) is stale. Indices stay below a small bound
that the emitter records in the control block (`blob_limit`) *before* creating a segment
past it; whoever removes a dead or abandoned bus unlinks every index below that bound,
pooled ones included, so nothing is orphaned even on macOS, where segments cannot be
listed.

## Why not a chunked ring

Splitting a large event across consecutive slots would copy it into every subscriber's
ring, and would cap an event at the ring's size (faster-fifo's issue #21: a message larger
than its buffer blocks forever). Here an event may be as large as memory allows.
"""

from __future__ import annotations

import mmap
import time
from collections import deque
from typing import Any

import posix_ipc

from . import _codec, _names, _platform
from ._control import ControlBlock
from ._errors import ForeignObject, IncompatibleBus


SEGMENT_GRAIN = 64 * 1024
"""Large-event segments are sized in multiples of this, so that a segment can be reused
for any event up to its size."""

FREE_POOL_BYTES = 32 * 1024 * 1024
"""Freed segments are kept (mapped, their pages already in place) for reuse up to this
many bytes in all, or up to the most that segments in use have held within the last
`POOL_MEMORY` seconds if that is more; beyond it the largest are removed. Creating and
first touching a segment costs far more than copying an event into one that exists, and
a stream of large events soon needs again what it frees, batch after batch."""

POOL_MEMORY = 1.0

SQUAT_RETRIES = 8
"""How many large-event names in a row may turn out to be someone else's before `emit`
gives up with `ForeignObject`: each one skipped is never tried again."""

MAPPINGS_KEPT = 64
"""A subscriber keeps at most this many large-event segments mapped for reuse."""


class _Segment:
    __slots__ = ("index", "incarnation", "size", "mapping")

    def __init__(self, index: int, incarnation: int, size: int, mapping: "mmap.mmap") -> None:
        self.index = index
        self.incarnation = incarnation  # changes whenever the index gets a new segment
        self.size = size
        self.mapping = mapping


class BlobStore:
    """The emitter's large-event segments of one bus."""

    def __init__(self, token: str, control: ControlBlock) -> None:
        self._token = token
        self._control = control
        self._free: list[_Segment] = []
        self._free_bytes = 0
        self._spare_indices: list[int] = []  # indices whose segment was removed
        self._in_use: dict[int, _Segment] = {}
        self._in_use_bytes = 0
        self._peak = 0  # the most `_in_use_bytes` has been lately, and when
        self._peak_at = 0.0
        self._limit = 0
        self._incarnations = 0
        self.outstanding: deque[tuple[int, int]] = deque()
        """(seq, index) of every segment not freed yet, seq ascending; empty is falsy."""

    def put(self, seq: int, payload: "bytes | _codec.Parts") -> tuple[int, int]:
        """Write `payload` for event `seq` into a segment; its (index, incarnation)."""
        segment = self._take_free(len(payload))
        if segment is None:
            segment = self._create(_round_up(len(payload)))
        # Tracked before it is written: if anything interrupts what follows, the segment
        # is still freed by `reclaim` once the rings pass `seq`.
        self._in_use[segment.index] = segment
        self._in_use_bytes += segment.size
        if self._in_use_bytes > self._peak:
            self._peak, self._peak_at = self._in_use_bytes, time.monotonic()
        self.outstanding.append((seq, segment.index))
        if isinstance(payload, _codec.Parts):
            _write_parts(segment.mapping, payload.pieces)
        else:
            segment.mapping[: len(payload)] = payload
        return segment.index, segment.incarnation

    def discard(self, index: int) -> None:
        """Undo `put` for an event that was never committed."""
        # Not necessarily the last one put: a chunk of events may hold several, and an
        # interrupted `put` may have left one behind them (freed later by `reclaim`).
        for entry in reversed(self.outstanding):
            if entry[1] == index:
                self.outstanding.remove(entry)
                break
        self._release(index)

    def reclaim(self, oldest_unread: int) -> None:
        """Free the segments of every event below `oldest_unread` (read by everyone)."""
        while self.outstanding and self.outstanding[0][0] < oldest_unread:
            _, index = self.outstanding.popleft()
            self._release(index)

    @property
    def has_excess(self) -> bool:
        """Whether the pool holds more than `FREE_POOL_BYTES`: `trim` may give some back."""
        return self._free_bytes > FREE_POOL_BYTES

    def trim(self) -> None:
        """Remove free segments beyond the budget, once the recent peak has passed."""
        while self._free and self._free_bytes > max(FREE_POOL_BYTES, self._recent_peak()):
            victim = max(self._free, key=lambda s: s.size)
            self._free.remove(victim)
            self._free_bytes -= victim.size
            self._remove(victim)
            self._spare_indices.append(victim.index)

    def close(self) -> None:
        """Unmap everything; the segments stay for whoever removes the bus."""
        for segment in [*self._free, *self._in_use.values()]:
            segment.mapping.close()
        self._free.clear()
        self._in_use.clear()

    def _take_free(self, size: int) -> "_Segment | None":
        fitting = [s for s in self._free if size <= s.size <= 2 * size + SEGMENT_GRAIN]
        if not fitting:
            return None
        segment = min(fitting, key=lambda s: s.size)
        self._free.remove(segment)
        self._free_bytes -= segment.size
        return segment

    def _create(self, size: int) -> _Segment:
        budget = max(FREE_POOL_BYTES, self._recent_peak())
        if self._spare_indices:
            index = self._spare_indices.pop()
        elif self._free and self._free_bytes + self._in_use_bytes + size > budget:
            # replace a free one rather than grow past the pool's budget
            victim = max(self._free, key=lambda s: s.size)
            self._free.remove(victim)
            self._free_bytes -= victim.size
            self._remove(victim)
            index = victim.index
        else:
            index = self._grow()
        for _ in range(SQUAT_RETRIES):
            try:
                mapping = _create_replacing_stale(_names.blob_name(self._token, index), size)
                break
            except ForeignObject:
                index = self._grow()  # someone else took that name: never use it
            except BaseException:
                self._spare_indices.append(index)
                raise
        else:
            self._spare_indices.append(index)
            raise ForeignObject(
                f"the names of {SQUAT_RETRIES} large-event segments of this bus in a row "
                f"({_names.blob_name(self._token, index)} the last) were created by "
                "someone else first: another local user is squatting this bus's names. "
                "Nothing was sent; recreate the bus (a new token) to get away from them."
            )
        self._incarnations += 1
        return _Segment(index, self._incarnations, size, mapping)

    def _release(self, index: int) -> None:
        segment = self._in_use.pop(index, None)
        if segment is None:
            return
        self._in_use_bytes -= segment.size
        self._free.append(segment)
        self._free_bytes += segment.size
        self.trim()

    def _recent_peak(self) -> int:
        if time.monotonic() - self._peak_at > POOL_MEMORY:
            self._peak, self._peak_at = self._in_use_bytes, time.monotonic()
        return self._peak

    def _remove(self, segment: _Segment) -> None:
        segment.mapping.close()
        _platform.unlink_segment(_names.blob_name(self._token, segment.index))

    def _grow(self) -> int:
        index = self._limit
        self._limit += 1
        self._control.raise_blob_limit(self._limit)
        return index


def _write_parts(mapping: "mmap.mmap", pieces: list[Any]) -> None:
    offset = 0
    for piece in pieces:
        end = offset + len(piece)
        mapping[offset:end] = piece
        offset = end


def _round_up(size: int) -> int:
    return -(-max(size, 1) // SEGMENT_GRAIN) * SEGMENT_GRAIN


def _create_replacing_stale(name: str, size: int) -> "mmap.mmap":
    try:
        return _platform.create_segment(name, size)
    except posix_ipc.ExistentialError:
        # Ours, if left by an emit interrupted before its event was committed, or replaced
        # by a larger one: no subscriber can refer to it. Someone else's (ForeignObject)
        # is left alone.
        _platform.remove_stale_segment(name)
        return _platform.create_segment(name, size)


class BlobReader:
    """A subscriber's mappings of the large-event segments it has read, kept for reuse.

    A segment is mapped once and read many times; an index whose incarnation changed
    got a new segment (the old one was removed), so its mapping is replaced.
    """

    def __init__(self, token: str) -> None:
        self._token = token
        self._mapped: dict[int, tuple[int, "mmap.mmap"]] = {}  # oldest first

    def load(self, index: int, incarnation: int, length: int) -> Any:
        """Decode a large event straight from its segment."""
        mapping = self._mapping(index, incarnation)
        with memoryview(mapping) as view, view[:length] as payload:
            return _codec.decode(payload)

    def close(self) -> None:
        for _, mapping in self._mapped.values():
            mapping.close()
        self._mapped.clear()

    def _mapping(self, index: int, incarnation: int) -> "mmap.mmap":
        known = self._mapped.get(index)
        if known is not None and known[0] == incarnation:
            return known[1]
        if known is not None:
            known[1].close()
            del self._mapped[index]
        name = _names.blob_name(self._token, index)
        try:
            mapping = _platform.open_segment(name)
        except posix_ipc.ExistentialError:
            raise IncompatibleBus(
                f"large event segment {name} is missing: it was removed before this "
                "subscriber read it (was it removed by hand?)"
            ) from None
        self._mapped[index] = (incarnation, mapping)
        if len(self._mapped) > MAPPINGS_KEPT:
            # A mapping keeps its segment's memory even after the emitter removed it.
            oldest = next(iter(self._mapped))
            self._mapped.pop(oldest)[1].close()
        return mapping


def unlink_all(token: str, limit: int) -> None:
    for index in range(limit):
        _platform.unlink_segment(_names.blob_name(token, index))
