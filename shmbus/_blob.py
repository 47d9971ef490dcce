"""Large events: written once into shared memory, however many subscribers get them.

## Shape

An event whose pickle does not fit in a ring slot is written into a segment of its own,
`/sb_<token>_b<k>`, and each ring's slot carries only `(k, length)`. Fanning a 1 MiB event
out to four subscribers therefore costs one 1 MiB write, not four.

The emitter owns these segments. It frees segment `k` once every ring's `tail` has moved
past the event that used it (a subscriber reads the segment before it advances its tail),
and reuses freed indices, so the indices stay below a small bound that it records in the
control block (`blob_limit`) *before* creating a segment past it. Whoever removes a dead
or abandoned bus unlinks every index below that bound, so nothing is orphaned even on
macOS, where segments cannot be listed.

## Why not a chunked ring

Splitting a large event across consecutive slots would copy it into every subscriber's
ring, and would cap an event at the ring's size (faster-fifo's issue #21: a message larger
than its buffer blocks forever). Here an event may be as large as memory allows.
"""

from __future__ import annotations

import mmap
from collections import deque
from typing import Any

import posix_ipc

from . import _codec, _segment
from ._control import ControlBlock
from ._errors import IncompatibleBus


class BlobStore:
    """The emitter's large-event segments of one bus."""

    def __init__(self, token: str, control: ControlBlock) -> None:
        self._token = token
        self._control = control
        self._free: list[int] = []
        self._limit = 0
        self.outstanding: deque[tuple[int, int]] = deque()
        """(seq, index) of every segment not freed yet, seq ascending; empty is falsy."""

    def put(self, seq: int, payload: bytes) -> int:
        """Write `payload` for event `seq` into a fresh segment; its index."""
        index = self._free.pop() if self._free else self._grow()
        # Tracked before it exists: if anything interrupts what follows, the segment is
        # still freed by `reclaim` once the rings pass `seq`, instead of outliving them.
        self.outstanding.append((seq, index))
        name = _segment.blob_name(self._token, index)
        try:
            mapping = _create_replacing_stale(name, len(payload))
        except BaseException:
            self.outstanding.remove((seq, index))
            self._free.append(index)
            raise
        try:
            mapping[:] = payload
        finally:
            mapping.close()
        return index

    def discard(self, index: int) -> None:
        """Undo `put` for an event that was never committed."""
        # Not necessarily the last one put: a chunk of events may hold several, and an
        # interrupted `put` may have left one behind them (freed later by `reclaim`).
        for entry in reversed(self.outstanding):
            if entry[1] == index:
                self.outstanding.remove(entry)
                break
        _segment.unlink_segment(_segment.blob_name(self._token, index))
        self._free.append(index)

    def reclaim(self, oldest_unread: int) -> None:
        """Free the segments of every event below `oldest_unread` (read by everyone)."""
        while self.outstanding and self.outstanding[0][0] < oldest_unread:
            _, index = self.outstanding.popleft()
            _segment.unlink_segment(_segment.blob_name(self._token, index))
            self._free.append(index)

    def _grow(self) -> int:
        index = self._limit
        self._limit += 1
        self._control.raise_blob_limit(self._limit)
        return index


def _create_replacing_stale(name: str, size: int) -> "mmap.mmap":
    try:
        return _segment.create_segment(name, size)
    except posix_ipc.ExistentialError:
        # Left by an emit interrupted before its event was committed: no subscriber can
        # refer to it, and the name is this emitter's own.
        _segment.unlink_segment(name)
        return _segment.create_segment(name, size)


def load(token: str, index: int, length: int) -> Any:
    """Decode a large event straight from its segment (subscriber side)."""
    name = _segment.blob_name(token, index)
    try:
        mapping = _segment.open_segment(name)
    except posix_ipc.ExistentialError:
        raise IncompatibleBus(
            f"large event segment {name} is missing: it was removed before this "
            "subscriber read it (was it removed by hand?)"
        ) from None
    try:
        with memoryview(mapping) as view, view[:length] as payload:
            return _codec.decode(payload)
    finally:
        mapping.close()


def unlink_all(token: str, limit: int) -> None:
    for index in range(limit):
        _segment.unlink_segment(_segment.blob_name(token, index))
