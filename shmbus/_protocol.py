"""The ring protocol, in pure Python: the one place that moves `committed` and `tail`.

## Shape

Two halves, one per side, and nothing else in shmbus reads or writes the counters:

- `Fanout`, the emitter's side of every ring it writes. `publish` puts the next events
  (slots already made) into every ring, all or none: it checks that every ring has room
  (`tail` against `committed`), copies the slots into each, stores `committed` past them
  (the one store that makes them exist), and posts the `data` doorbell of each
  subscriber that sleeps. If a ring is full it writes nothing and says which; waiting
  for room is the emitter's business (`_emitter`), and so is everything that is not per
  event. `publish_inline` is the same for one small event, without its slot made first;
  `fast_emit` is the whole usual `emit` in one call (pickling, the emitter's lock, and
  whether the emitter's list of rings is still fresh: `fresh_for`), and hands anything
  unusual back to the emitter untouched.
- `Reader`, a subscriber's side of its ring. `ready` says whether the next event has
  been committed; `take` decodes the ready events into a list the subscription owns
  (those in their slots itself, large ones through a callback into `_arena`), then
  moves `tail` past them and posts the `space` doorbell if the emitter sleeps on it;
  `slot` and `advance` serve the one caller that does not decode (raw reads for a
  bridge). `take_one` is the whole usual `recv` in one call: it parks the event in
  `parked`, the subscription's parking place, before it consumes it (see `_subscription`
  on interruptions), and leaves anything unusual to the subscription.

Why the two fast paths live here: the per-call bookkeeping in Python (a lock, a few
checks, a tuple) cost more than the ring protocol itself, and in the compiled core it
is a few hundred nanoseconds. Each declines, doing nothing, wherever the general way
must decide, so the rules stay in one place: `_emitter` and `_subscription`.

Each half also raises and lowers its own side's sleeping flag around a wait
(`before_wait`, `after_wait`): the waits themselves are the caller's (`_wait`), but who
posts a doorbell when is the protocol's (see `_ring` on doorbells).

The compiled core (`_ringcore`, C) implements the same two classes on the same memory
layout and the same doorbell rules, so a compiled emitter and a pure-Python subscriber
(or the reverse) share one bus; `_core` picks one. Doorbells and counters follow `_ring`'s
rules: counters are the truth, a doorbell only says "look", and it is posted only for a
side whose sleeping flag says it sleeps.

`close()` lets go of the memory and semaphores; the owner calls it before it closes
them (the compiled core holds the memory by address: see `_platform.Mapping.borrow`).

## What is atomic

`publish` commits in one store, so subscribers see every slot of the call or none. An
interruption before that store leaves nothing visible (the slots beyond `committed` are
written over by the next call); after it, the caller posts the doorbells again
(`repost`: one spurious wake-up at worst). `take` puts every decoded event into the
caller's list *before* it moves `tail`, so an interruption can neither lose an event
(it is in the list) nor hand one out twice (it is behind `tail`).

## Memory order

A slot is written before `committed` is stored, and read after `committed` is loaded;
`tail` is stored after the slots it frees were read, and loaded before they are written
over. x86-64 keeps plain loads and stores in that order. ARM64 does not, and Python has
no fences, so there (`_platform.NEEDS_FENCES`) each half puts a semaphore operation, a
full barrier, between the two: a post and a take of the ring's own doorbell, net zero.
The compiled core uses C11 acquire and release instead.

A store followed by a load of another word is reordered even on x86, so between a
counter stored and the other side's sleeping flag read (and between a flag raised and
the counter read again) both cores put a full barrier on every platform: here that
post-and-take, once per `publish` or `take` whatever the number of rings, and in C an
`atomic_thread_fence`.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import posix_ipc

from . import _codec, _liveness, _platform
from ._control import BYTES_WORD, COMMITTED_WORD, GENERATION_WORD, ControlBlock
from ._errors import DeserializationError
from ._ring import (
    EMITTER_SLEEPING,
    EMITTER_WAITING,
    KIND_BATCH,
    KIND_INLINE,
    SUB_SLEEPING,
    SLOT_HEADER_SIZE,
    SLOT_SIZE,
    SUB_WAITING,
    TAIL_WORD,
    Ring,
    inline_slot,
    large_length,
)
from ._wait import fence

NAME = "python"

_INLINE_MAX = SLOT_SIZE - SLOT_HEADER_SIZE
"""The largest pickle `fast_emit` publishes: one that fits in a slot."""

Decode = Callable[[Any], Any]
LoadLarge = Callable[[int, int, bytes], Any]
_Method = TypeVar("_Method", bound=Callable[..., Any])

Lock = threading.RLock
"""The lock of every emitter and subscription: here `threading.RLock`. The compiled
core's `Lock` has the same methods and is taken by its fast paths without a call."""


def emit_method(general: _Method, *, fanout: str, lock: str, wake: str, declined: str,
                unless: tuple[str, ...]) -> _Method:
    """An emitter's `emit`, `general`, with its usual call done by the core.

    Here `general` itself, whose own fast path calls `Fanout.fast_emit`. The compiled
    core returns a method descriptor that, unless one of the instance's attributes named
    in `unless` is true, calls `fast_emit` with the attributes named `fanout` and
    `lock`; then calls the one named `wake` if a subscriber waits on its wake pipe, and
    returns how many rings got the event; or, if `fast_emit` declined, returns
    `declined(event, pickle or None, timeout)`. Every other call goes to `general`."""
    del fanout, lock, wake, declined, unless  # only the compiled core reads them
    return general


class _Target:
    """One ring as `Fanout` writes it."""

    __slots__ = ("ring", "start", "known_tail", "capacity", "data", "space", "words", "flags",
                 "sleeping", "posted")

    def __init__(self, ring: Ring, start: int) -> None:
        self.ring = ring
        self.start = start
        self.known_tail = 0
        self.capacity = ring.capacity
        self.data = ring.data
        self.space = ring.space
        self.words = ring.words
        self.flags = ring.flags
        self.sleeping = ring.sleeping
        self.posted = 0  # the subscriber's wait (number) last posted for


def _next_number(number: int) -> int:
    """A sleeping flag's next value: nonzero, and not the last one."""
    return number % 0xFFFFFFFF + 1


class Fanout:
    """The emitter's side of the rings it writes (see the module docstring)."""

    def __init__(self, control: ControlBlock) -> None:
        self._words = control.words
        self._targets: dict[int, _Target] = {}
        self._all: list[_Target] = []  # self._targets' values, for the hot path
        self._waits = 0  # the number of the emitter's last wait
        self._closed = False
        self._epoch = _liveness.fork_epoch
        self._generation = -1  # `fast_emit` publishes while the control block says this
        self._fresh_until = 0.0  # and until then (`time.monotonic()`)
        self.wanting: list[int] = []
        """After `publish`: the subscribers (ids) waiting on their wake pipe, to be woken."""

    @property
    def committed(self) -> int:
        """The next event's sequence number."""
        return self._words[COMMITTED_WORD]

    def add(self, ring: Ring, start: int) -> None:
        """Write to `ring` from event `start` on (it was adopted at `start`)."""
        self._targets[ring.sub_id] = _Target(ring, start)
        self._all = list(self._targets.values())

    def remove(self, sub_id: int) -> None:
        if self._targets.pop(sub_id, None) is not None:
            self._all = list(self._targets.values())

    def __len__(self) -> int:
        return len(self._all)

    def has_room(self, sub_id: int, seq: int) -> bool:
        """Whether event `seq` fits in ring `sub_id` without overwriting an unread slot."""
        target = self._targets[sub_id]
        if seq - target.start - target.known_tail < target.capacity:
            return True
        target.known_tail = target.ring.tail
        return seq - target.start - target.known_tail < target.capacity

    def unread(self, sub_id: int, seq: int) -> int:
        """How many events before `seq` ring `sub_id` holds that its subscriber has not
        consumed (for messages)."""
        target = self._targets[sub_id]
        return max(0, min(seq - target.start - target.ring.tail, target.capacity))

    def oldest_unread(self, sub_id: int) -> int:
        """The oldest event whose memory subscriber `sub_id` may still read: not yet
        consumed, or consumed but still read in place (`_ring` on `pinned`)."""
        target = self._targets[sub_id]
        return min(target.start + target.ring.tail, target.ring.pinned)

    def publish(self, block: bytes, count: int, nbytes: int) -> int:
        """Put `count` events, whose slots `block` holds end to end, into every ring.

        Returns how many rings got them, or, if a ring had no room, `-1 - sub_id` of the
        first such ring (and nothing was written anywhere). `nbytes` is the events'
        pickled size, for statistics.
        """
        words = self._words
        seq = words[COMMITTED_WORD]
        last = seq + count - 1
        targets = self._all
        for target in targets:
            if last - target.start - target.known_tail >= target.capacity:
                target.known_tail = target.ring.tail
                if last - target.start - target.known_tail >= target.capacity:
                    return -1 - target.ring.sub_id
        for target in targets:
            target.ring.write_slots(seq, block)
        if targets and _platform.NEEDS_FENCES:
            fence(targets[0].data)  # the slots before `committed`
        words[COMMITTED_WORD] = seq + count
        words[BYTES_WORD] += nbytes
        self._post_doorbells(False)
        return len(targets)

    def publish_inline(self, pickle: bytes) -> int:
        """`publish` of one event whose pickle fits in a slot: the usual emit."""
        return self.publish(inline_slot(self._words[COMMITTED_WORD], pickle), 1, len(pickle))

    def fast_emit(self, event: Any, timeout: float | None, lock: threading.RLock
                  ) -> int | bytes | None:
        """The usual `emit`, in one call: `event` pickled (as `_codec.plain_pickle`) and
        published inline, if it fits in a slot, `timeout` is a plain number or None (no
        argument to complain about), `lock` (the emitter's) is free, the rings are as
        the caller last listed them (`fresh_for`) and every ring has room. Returns how
        many rings got it; or, having published nothing, its pickle (bytes) for the
        caller to emit the general way, or None if it has none to give.

        Atomic as `publish`: an interruption after the commit posts the doorbells again
        (`repost`) before it propagates."""
        if (self._closed or self._epoch != _liveness.fork_epoch
                or not (timeout is None or type(timeout) in (float, int) and timeout >= 0)):
            return None
        data = _codec.plain_pickle(event)
        if data is None or len(data) > _INLINE_MAX or not lock.acquire(False):
            return data
        try:
            if not self.fresh:
                return data
            try:
                reached = self.publish_inline(data)
            except BaseException:
                self.repost()  # committed or not: a spurious wake-up at worst
                raise
            return reached if reached >= 0 else data
        finally:
            lock.release()

    @property
    def fresh(self) -> bool:
        """Whether the caller's list of rings stands (see `fresh_for`)."""
        return (not self._closed and self._words[GENERATION_WORD] == self._generation
                and time.monotonic() < self._fresh_until)

    def fresh_for(self, generation: int, seconds: float) -> None:
        """Let `fast_emit` publish while the control block's generation is `generation`,
        for `seconds` from now: until then the caller's list of rings stands (a negative
        `generation` stops it until the next call)."""
        self._generation = generation
        self._fresh_until = time.monotonic() + seconds

    def repost(self) -> None:
        """Post the doorbell of every subscriber that sleeps, even if it was posted for
        this wait: after an interrupted `publish` that had committed, and at the end."""
        self._post_doorbells(True)

    def before_wait(self, sub_id: int) -> None:
        """Raise the emitter's sleeping flag in ring `sub_id`: it is about to look at
        that ring once more and then wait on its `space` (see `_ring` on doorbells)."""
        target = self._targets[sub_id]
        self._waits = _next_number(self._waits)
        target.sleeping[EMITTER_SLEEPING] = self._waits
        fence(target.space)  # the flag before the look that follows

    def after_wait(self, sub_id: int) -> None:
        """Lower the flag `before_wait` raised (nothing if the ring was removed)."""
        target = self._targets.get(sub_id)
        if target is not None:
            target.sleeping[EMITTER_SLEEPING] = 0

    def close(self) -> None:
        """Let go of every ring and of the control block (see the module docstring);
        `closed` says it ran."""
        self._targets.clear()
        self._all = []
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _post_doorbells(self, again: bool) -> None:
        targets = self._all
        if not targets:
            self.wanting = []
            return
        # `committed` before the flags (see `_ring` on doorbells): a subscriber that
        # raised its flag before this either sees the counter or gets a token.
        fence(targets[0].data)
        numbers = [t.sleeping[SUB_SLEEPING] for t in targets]
        sleepers = [(t, n) for t, n in zip(targets, numbers) if n and (again or n != t.posted)]
        # One C-level loop: an interruption cannot land between two posts. Each wait is
        # marked posted after its post (by the number read before it: the subscriber may
        # be on its next wait already): an interruption in between makes one spurious
        # wake-up, never a lost one.
        any(map(_post, [t.data for t, _ in sleepers]))
        for target, number in sleepers:
            target.posted = number
        self.wanting = [t.ring.sub_id for t in targets if t.flags[SUB_WAITING]]


class Reader:
    """A subscriber's side of its ring (see the module docstring)."""

    def __init__(self, ring: Ring, control: ControlBlock) -> None:
        self.ring = ring
        self._control_words = control.words
        self._ring_words = ring.words
        self._start: int | None = None
        self.tail = 0
        """Events consumed from this ring (this process's copy of the shared word)."""
        self._committed = 0
        self._waits = 0  # the number of this subscriber's last wait
        self._posted = 0  # the emitter's wait (number) last posted for
        self.emitter_waiting = False
        """After `take` or `advance`: the emitter waits on its wake pipe for room here."""
        self.parked: Any = None
        """The caller's parking place (see `take_one`): what it consumed and has not
        handed out yet. The protocol only stores it, and never reads what is there."""
        self.handing = 0
        """The thread (ident) whose `take_one` parked an event and has not taken it back
        (the caller clears it); 0 if none."""
        self.surplus: Any = None
        """The caller's place for events it consumed ahead of `parked` (the rest of a
        batch): `take_one` does nothing while it holds any. Never read otherwise."""
        self._epoch = _liveness.fork_epoch
        self._closed = False

    @property
    def start(self) -> int | None:
        """The first event this ring receives; None until the emitter adopted it."""
        if self._start is None and self.ring.adopted:
            if _platform.NEEDS_FENCES:
                fence(self.ring.space)  # the flag before `start_seq`
            self._start = self.ring.start_seq
        return self._start

    def ready(self) -> int | None:
        """The sequence number of the next event if it is committed, else None."""
        start = self._start if self._start is not None else self.start
        if start is None:
            return None
        seq = start + self.tail
        if seq < self._committed:
            return seq
        self._committed = self._control_words[COMMITTED_WORD]
        return seq if seq < self._committed else None

    def available(self) -> int:
        """How many events are committed and not consumed (after a `ready` that said so)."""
        self._committed = self._control_words[COMMITTED_WORD]
        start = self.start
        return 0 if start is None else max(0, self._committed - start - self.tail)

    def take(self, into: list[Any], max_n: int, loads: Decode, decode: Decode,
             load_large: LoadLarge, large_limit: int) -> int:
        """Decode up to `max_n` ready events into `into`, then consume them all at once;
        how many were consumed.

        `loads` decodes a pickle in a slot; `decode` (`_codec.decode`) decodes again one
        that `loads` refused, and raises what the caller should see for it;
        `load_large(seq, kind, ref)` decodes a large event from where its slot says it
        lies (`_arena`), and stops the call, after at least one event, once large events
        have added `large_limit` pickled bytes. An undecodable event is consumed alone,
        an `Undecodable` standing in for it; one after others is left for the next call.
        A real interruption (a `KeyboardInterrupt` that `decode` tells from an event
        raising one) propagates once everything in `into` is consumed. A batch slot
        (events pickled as one list) is taken whole: `into` may get more than `max_n`.
        """
        seq = self.ready()
        if seq is None:
            return 0
        self._committed = self._control_words[COMMITTED_WORD]  # all that is there now
        if _platform.NEEDS_FENCES:
            fence(self.ring.data)  # `committed` before the slots
        before = len(into)
        index = seq
        large_bytes = 0
        try:
            while (index < self._committed and len(into) - before < max_n
                   and large_bytes < large_limit):
                kind, count, payload = self.ring.slot(index)
                if kind in (KIND_INLINE, KIND_BATCH):
                    decoded = _decoded(payload, loads, decode, count)
                else:
                    decoded = _decoded_large(index, kind, payload, load_large)
                    large_bytes += large_length(payload)
                if isinstance(decoded[0], Undecodable) and len(into) > before:
                    break  # reported alone, by the next call
                into.extend(decoded)  # a batch whole, even past `max_n`
                if isinstance(decoded[0], Undecodable):
                    break
                index += count
        finally:
            taken = len(into) - before
            if taken:
                self._consume(taken)
        return taken

    def take_one(self, lock: threading.RLock, timeout: float | None) -> int:
        """The usual recv, in one call: with `lock` (the caller's, taken only if free),
        decode the next event if it is ready and small, park it as `(seq, [event],
        None)` in `parked` and mark `handing` with this thread, then consume it. Returns
        1; 2 if the emitter waits on its wake pipe for room (see `emitter_waiting`); or
        0, having done nothing, wherever the caller's general way must decide: nothing
        ready, a large event or a batch, an event that does not decode, something parked,
        left over (`surplus`) or handed over already, `timeout` not a plain number or
        None, `lock` held.

        Parked before `tail` moves: a caller interrupted after this call finds the
        event in `parked` (see `_subscription` on interruptions)."""
        if (self.parked is not None or self.surplus is not None or self.handing
                or self._closed or self._epoch != _liveness.fork_epoch
                or not (timeout is None or type(timeout) in (float, int) and timeout >= 0)
                or self.ready() is None or not lock.acquire(False)):
            return 0
        try:
            seq = self.ready()
            if (seq is None or self.parked is not None or self.surplus is not None
                    or self.handing or self._closed):
                return 0
            if _platform.NEEDS_FENCES:
                fence(self.ring.data)  # `committed` before the slot
            kind, count, payload = self.ring.slot(seq)
            if kind != KIND_INLINE:
                return 0
            tail = self.tail
            try:
                event = pickle.loads(payload)
            except BaseException:
                try:
                    _codec.decode(payload)
                except DeserializationError:
                    return 0  # the event's own fault: the general way reports it
                raise  # an interruption, with nothing consumed
            if self._closed or self.tail != tail or self.parked is not None:
                return 0  # what the unpickler ran closed the ring, or received
            self.parked = (seq, [event], None)
            self.handing = threading.get_ident()
            self._consume(1)
            return 2 if self.emitter_waiting else 1
        finally:
            lock.release()

    def resync(self) -> int:
        """After an interruption: take `tail` from the ring again; the next event's
        sequence number (`start` + `tail`). The ring must have been adopted."""
        self.tail = self.ring.tail
        start = self.start
        assert start is not None, "resync before the ring was adopted"
        return start + self.tail

    def slot(self, seq: int) -> tuple[int, int, bytes]:
        """(kind, count, payload) of the slot of event `seq`, for the slow path."""
        return self.ring.slot(seq)

    def advance(self, count: int) -> None:
        """Consume the next `count` events (decoded by the caller's slow path)."""
        self._consume(count)

    def _consume(self, count: int) -> None:
        if _platform.NEEDS_FENCES:
            fence(self.ring.space)  # the slots read before `tail` frees them
        tail = self.tail + count
        self._ring_words[TAIL_WORD] = tail
        self.tail = tail
        fence(self.ring.space)  # `tail` before the emitter's flags (see `_ring`)
        sleeping = self.ring.sleeping[EMITTER_SLEEPING]
        if sleeping and sleeping != self._posted:
            self.ring.space.release()
            self._posted = sleeping  # after: an interruption in between posts twice
        self.emitter_waiting = bool(self.ring.flags[EMITTER_WAITING])

    def pin(self, seq: int) -> None:
        """Keep the large-event memory of events from `seq` on (`NO_PIN`: none)."""
        self.ring.pin(seq)

    def before_wait(self) -> int | None:
        """Raise the subscriber's sleeping flag, then look once more: the next event's
        number if it is there after all, else None. Either way, `after_wait` lowers the
        flag (after the wait on `ring.data`, if any; see `_ring` on doorbells)."""
        self._waits = _next_number(self._waits)
        self.ring.sleeping[SUB_SLEEPING] = self._waits
        fence(self.ring.data)  # the flag before the look
        return self.ready()

    def after_wait(self) -> None:
        self.ring.sleeping[SUB_SLEEPING] = 0

    def close(self) -> None:
        """Let go of the ring and the control block (see the module docstring)."""
        self._closed = True


_post = posix_ipc.Semaphore.release


def _decoded(payload: bytes, loads: Decode, decode: Decode, count: int) -> list[Any]:
    """The events of one slot (a batch's `count`, or 1), or `Undecodable`s for them."""
    try:
        value = loads(payload)
        return list(value) if count > 1 else [value]
    except BaseException:
        try:
            decode(payload)  # raises the caller's error, or an interruption
        except DeserializationError as error:
            return [Undecodable(error)] * count
        # It decodes on a second try: what stopped the first was no fault of the event's
        # but a signal handler's exception (see `_codec`), raised with nothing consumed.
        raise


def _decoded_large(seq: int, kind: int, ref: bytes, load_large: LoadLarge) -> list[Any]:
    try:
        return [load_large(seq, kind, ref)]
    except DeserializationError as error:
        return [Undecodable(error)]


class Undecodable:
    """Stands in `take`'s list for an event that could not be decoded: its error."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
