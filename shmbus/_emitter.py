"""The emitter: one per bus, fanning every event out to every subscriber's ring.

## Shape

`emit` pickles the event once, then, holding the emitter's thread lock:

1. **Reserve** a slot in every live subscriber's ring. Rings with room are taken first;
   then `emit` waits, one slice at a time, on each full ring's `space` semaphore (as
   iceoryx's blocking distributor does). Between slices it checks the subscriber still
   lives; a dead one is reaped and skipped, a closed one skipped at once.
2. **Write** the event into each reserved slot: inline, or as a reference to one shared
   large-event segment. Nothing is visible yet: subscribers read only below `committed`.
3. **Commit**: one 8-byte store moves the control block's `committed` past the event.
4. **Post the doorbells**: every ring's `data` semaphore, in one C-level loop.

A slow subscriber blocks `emit` at step 1 (backpressure); no event is ever dropped,
overwritten or skipped. As in the Rust original, a single `emit` is serial over rings.

## What is atomic

`emit` is all-or-nothing around step 3. An exception before it (a `Timeout`, a
`KeyboardInterrupt`, a full `/dev/shm`) gives back every reserved slot: no subscriber ever
sees the event. An exception after it (a `KeyboardInterrupt` landing during step 4)
finishes step 4 before propagating: every subscriber sees the event. A doorbell posted
twice that way costs a subscriber one spurious wake-up; see `_ring` on why that is harmless.

## Why not one lock-protected queue shared by all subscribers

A shared queue needs a cross-process mutex, and a process that dies holding one wedges
everyone (`multiprocessing.Queue`'s known hang). Here every shared word has exactly one
writer, and every wait is on a semaphore that can only make a waiter wake early.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, overload

import posix_ipc

from . import _codec, _core, _liveness, _names, _platform, _ring
from ._control import HISTORY_HELD_WORD
from ._wakepipe import WakePipe, Waker
from ._arena import DEFAULT_LARGE_BYTES, Arena, validate_large_bytes
from ._errors import Closed, InvalidArgument, SerializationError, ShmBusError, Timeout, shown
from ._handle import Handle
from ._registry import Registry, validate_name
from ._ring import EMITTER_WAITING, SUB_WAITING
from ._wait import (
    POLL_MAX_SLEEP,
    SPIN,
    acquire_by,
    deadline_after,
    expired,
    fence,
    slice_until,
    spin,
    waiter_from_env,
)

DEFAULT_CAPACITY = 256
"""Slots per subscriber ring: `emit` blocks on the 257th event a subscriber has not read."""

SWEEP_INTERVAL = 0.5
"""How often an emitter checks that its subscribers live, so that a dead subscriber whose
ring still has room stops counting as a recipient within about this long."""

UPKEEP_INTERVAL = 0.25
"""How often an idle emitter looks at its bus, from one thread that serves every emitter
of the process: a subscriber that died while nothing was emitted is reaped (its ring
removed and unmapped) within `SWEEP_INTERVAL` plus this, and one that joined is adopted
within this. An emit under way does the same itself, so the thread never waits for one."""

WAIT_STEP = 0.05
"""The longest `wait_for_subscribers` sleeps between two looks at the registry."""

BATCH_RETRY_AFTER = 16
"""After a chunk that could not go as one batch (events that name classes, or too large
for their slots), `emit_many` sends this many chunks event by event before trying again:
a stream of such events pays for the attempt once in a while, not on every chunk."""

WARN_AFTER = 5.0
"""An `emit` that has waited this many seconds for one subscriber says so, on the
`shmbus` logger (a warning naming the subscriber's pid and how full its ring is), and
again after twice as long, and so on, but at least every `WARN_AT_MOST_EVERY` seconds.
`EventEmitter(warn_after=None)` keeps it quiet."""

WARN_AT_MOST_EVERY = 60.0

UPKEEP_HOLD = 0.05
"""The longest an emit waits for the upkeep thread to let go of the emitter (it holds it
for a look at the registry: well under a millisecond), whatever its timeout: a call with
`timeout=0` must not fail because the upkeep happened to be looking."""

if TYPE_CHECKING:
    from ._member import QueueSubscription
    from ._subscription import LocalSubscription

_open_emitters: "weakref.WeakSet[EventEmitter]" = weakref.WeakSet()
log = logging.getLogger("shmbus")


class _Outlet:
    """What the emitter keeps about one adopted ring besides what `Fanout` writes."""

    __slots__ = ("ring", "sub_id", "capacity", "wake_pipe", "pid", "queue")

    def __init__(self, ring: _ring.Ring, wake_pipe: str, record: dict[str, Any]) -> None:
        self.ring = ring  # for waiting on its `space` doorbell, and its flags
        self.sub_id = ring.sub_id
        self.capacity = ring.capacity
        self.wake_pipe = wake_pipe  # written to when its subscriber waits from asyncio
        pid = record.get("pid")
        self.pid = pid if isinstance(pid, int) and pid > 0 else None  # for messages only
        queue = record.get("queue")
        # A group's or a durable subscription's ring (`_group`): its events are claimed
        # one by one, so they never travel as a batch slot.
        self.queue = f"{queue} {record.get('queue_name')!r}" if queue else None

    def who(self) -> str:
        if self.queue is not None:
            return f"the {self.queue} (ring {self.sub_id})"
        return f"subscriber {self.sub_id} (pid {self.pid if self.pid else '?'})"


class EventEmitter(Handle):
    """Creates a bus and delivers every event to every subscriber, in order.

    One emitter per bus; it may be used from several threads of its process at once,
    and every subscriber sees one and the same order. Use it as a context manager, or
    call `close()`: subscribers then read what is left and their iteration ends.
    """

    def __init__(self, name: str | None = None, *, capacity: int = DEFAULT_CAPACITY,
                 large_bytes: int = DEFAULT_LARGE_BYTES,
                 warn_after: float | None = WARN_AFTER, history: int = 0) -> None:
        self._capacity = _ring.validate_capacity(capacity)
        depth = _validate_history(history)
        large_bytes = validate_large_bytes(large_bytes)
        self._warn_after = _validate_warn_after(warn_after)
        self._name = validate_name(name) if name is not None else _generated_name()
        self._waiter = waiter_from_env()
        self._registry = Registry()
        self._registry.sweep_some()
        record = {"pid": os.getpid(), "capacity": capacity, "created": time.time()}
        self._token, self._life, self._control = self._registry.create_bus(
            self._name, record, _ring.SLOT_SIZE, self._capacity, large_bytes
        )
        self._control.set_history(depth)
        self._history: "collections.deque[tuple[int, bytes]] | None" = (
            collections.deque(maxlen=depth) if depth else None)
        """The slots of the last `history` events, oldest first, for late joiners who
        ask for them (`subscribe(name, history=True)`): kept in this process only, and
        copied into a joiner's ring when it is adopted."""
        self._lock = _core.Lock()
        self._outlets: dict[int, _Outlet] = {}
        self._fanout = _core.Fanout(self._control)  # the rings, as the ring protocol writes them
        self._next_sweep = 0.0
        self._inline_max = _ring.SLOT_SIZE - _ring.SLOT_HEADER_SIZE
        self._arena = Arena(self._token, self._control)
        self._in_flight = self._arena.in_flight  # truthy while a large event is unread
        self._keeps_history = self._history is not None
        self._expect_large = False
        self._batch_misses = 0  # chunks to go before `_batch_of` tries again
        self._wake_pipe: WakePipe | None = None  # created by the first aemit that has to wait
        self._waker = Waker()
        self._closing = False
        self._left = False  # the registry has forgotten this emitter
        self._upkeeping = False  # the upkeep thread holds the lock (see `_take_lock`)
        self._opened()
        _open_emitters.add(self)
        _ensure_upkeep()

    # -- public -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """The ring capacity a subscriber gets unless it asks for its own."""
        return self._capacity

    @property
    def wait_strategy(self) -> str:
        """'timed' (kernel timed waits) or 'poll' (see `SHMBUS_WAIT`)."""
        return self._waiter.name

    def emit(self, event: Any, *, timeout: float | None = None) -> int:
        """Deliver `event` to every subscriber; the number of subscribers it reached.

        Blocks while any live subscriber's ring is full. With `timeout`, raises `Timeout`
        if the event could not be placed in every ring in time, and then no subscriber
        ever sees it. Raises `SerializationError` (before touching any ring) if the
        event cannot be pickled, and `Closed` after `close()`.
        """
        if not (self._expect_large or self._in_flight or self._keeps_history):
            # The usual emit, in one call of the ring protocol (every emit costs here):
            # a small event, no other thread in the emitter, no large event in flight,
            # no history kept, the rings as last listed, every ring with room.
            done = self._fanout.fast_emit(event, timeout, self._lock)
            if isinstance(done, int):
                if self._fanout.wanting:
                    self._wake_loops_after_emit()
                return done
            return self._emit(event, done, timeout)
        return self._emit(event, None, timeout)

    # The compiled core makes the usual call one C call (see `_protocol.emit_method`).
    emit = _core.emit_method(emit, fanout="_fanout", lock="_lock",
                             wake="_wake_loops_after_emit", declined="_emit",
                             unless=("_expect_large", "_in_flight", "_keeps_history"))

    def _wake_loops_after_emit(self) -> None:
        """After an emit the fast way: wake the subscribers' event loops that listen on
        their wake pipes, never held up long by another thread's emit (whose own
        publish wakes them again). The event is delivered already."""
        if self._lock.acquire(timeout=UPKEEP_HOLD):
            try:
                self._wake_loops()
            finally:
                self._lock.release()

    def emit_many(self, events: Iterable[Any], *, timeout: float | None = None) -> int:
        """Deliver every one of `events`, in order; as `emit`, the number of subscribers
        reached (by the last of them, if subscribers came or went meanwhile).

        The same as calling `emit` for each, with the same ordering and no-loss rules,
        but markedly cheaper per event: the events are taken from `events` (any iterable,
        a generator too), pickled and committed in chunks of up to a quarter of the
        smallest ring (fewer events where large ones would not fit in the bus's
        large-event memory together), each chunk all-or-nothing like one `emit`, and
        other threads' emits wait until the last chunk is out. A `Timeout` or a
        `SerializationError` (an event that cannot be pickled) can stop it between
        chunks: then the events before were emitted and the rest were not, and the
        error's `emitted` says how many were. An interruption (`KeyboardInterrupt`) can too, and carries no count:
        subscribers see whole chunks, in order, never part of one. If `events` itself
        raises, the events it gave before are emitted, then its exception propagates,
        its `emitted` saying how many went out.
        """
        source = _iterate(events)
        deadline = deadline_after(timeout)
        sent = reached = 0
        failure: Exception | None = None
        try:
            self._enter(deadline)
            try:
                while failure is None:
                    self._look()  # the chunk must fit every ring, new ones included
                    chunk, failure = _take_chunk(source, self._chunk_size())
                    if not chunk:
                        break
                    batch = self._batch_of(chunk)
                    if batch is not None:
                        count, reached = self._send_batch(len(chunk), batch, deadline)
                        sent += count
                        continue
                    payloads = [self._encode(e) for e in chunk]
                    while payloads:  # in parts, if the arena cannot hold them all at once
                        count, reached = self._send(payloads, deadline)
                        sent += count
                        del payloads[:count]
            finally:
                self._lock.release()
        except (Timeout, SerializationError) as exc:
            exc.emitted = sent
            raise
        if failure is not None:
            failure.emitted = sent  # type: ignore[attr-defined]
            raise failure
        return reached

    async def aemit(self, event: Any, *, timeout: float | None = None) -> int:
        """`emit` for asyncio: the event loop runs while this waits for room.

        Waiting costs no thread and no CPU (see `_wakepipe`). Cancelling the awaiting task is
        like a timeout: no subscriber ever sees the event. Each try is a fresh `emit`, so
        a subscriber that joins while `aemit` waits receives the event too.
        """
        payload = self._encode(event)
        if isinstance(payload, _codec.Parts):
            # Other tasks run while this waits: send the event as it was when aemit was
            # called, not as they may leave its buffers.
            payload = payload.copied()
        deadline = deadline_after(timeout)
        patience = _Patience(self._warn_after)
        while True:
            # Each try is synchronous, and cancellation lands only at the `await`: the
            # event is committed whole or not at all.
            outcome = self._try_send(payload)
            if isinstance(outcome, int):
                return outcome
            waited = patience.exhausted()
            if waited is not None and outcome.outlets:
                log.warning("aemit on bus %r has waited %.0f s for %s, which has no room "
                            "for the event; it is alive (a stuck or slow reader?)",
                            self._name, waited, ", ".join(o.who() for o in outcome.outlets))
            if expired(deadline):
                names = (", ".join(o.who() for o in outcome.outlets)
                         or "another thread's emit")
                raise Timeout(
                    f"aemit timed out waiting for room for the event at {names} on bus "
                    f"{self._name!r}; no subscriber received the event"
                )
            await self._await_room_async(outcome, deadline)

    @overload
    def subscribe(self, *, capacity: int | None = None, history: bool = False
                  ) -> "LocalSubscription": ...

    @overload
    def subscribe(self, *, capacity: int | None = None, history: bool = False,
                  group: str, auto_ack: bool = True) -> "QueueSubscription": ...

    @overload
    def subscribe(self, *, capacity: int | None = None, history: bool = False,
                  durable: str, auto_ack: bool = True, expire_after: float | None = None
                  ) -> "QueueSubscription": ...

    def subscribe(self, *, capacity: int | None = None, history: bool = False,
                  group: str | None = None, durable: str | None = None,
                  auto_ack: bool = True, expire_after: float | None = None
                  ) -> "LocalSubscription | QueueSubscription":
        """A new subscription to this bus, owned by the calling process: as
        `shmbus.subscribe`, a `LocalSubscription`, or with `group` or `durable` a
        `QueueSubscription`."""
        from ._subscription import LocalSubscription

        self._check_usable()
        if group is None and durable is None:
            if not auto_ack or expire_after is not None:
                raise InvalidArgument("auto_ack= and expire_after= apply to a group or a "
                                      "durable subscription only")
            return LocalSubscription._join(self._registry, self._name, capacity, history)
        from ._member import subscribe_queue

        return subscribe_queue(self._name, group=group, durable=durable, capacity=capacity,
                               auto_ack=auto_ack, expire_after=expire_after, history=history)

    def wait_for_subscribers(self, count: int = 1, *, timeout: float | None = None) -> int:
        """Wait until at least `count` subscribers are live; how many there are then.

        Every event emitted after this returns reaches each of them: start the
        subscribers in any order, let them `subscribe(name, wait=...)`, and emit once
        they are all there. Raises `Timeout` (saying how many came) if they do not come
        in time.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidArgument(f"count must be an int >= 0, got {shown(count)}")
        deadline = deadline_after(timeout)
        pause = 0.002
        while True:
            live = self._joined(deadline)
            if live is not None and live >= count:
                return live
            if expired(deadline):
                if live is None:
                    live = self.subscriber_count
                    raise Timeout(f"{live} of {count} subscribers are on bus {self._name!r}, "
                                  f"but another thread's emit held the emitter for all of "
                                  f"{timeout:g} s, so none could be taken on")
                raise Timeout(f"only {live} of {count} subscribers joined bus "
                              f"{self._name!r} within {timeout:g} s")
            time.sleep(min(pause, slice_until(deadline)))
            pause = min(2 * pause, WAIT_STEP)

    def _joined(self, deadline: float | None) -> int | None:
        """Live subscribers whose rings every later `emit` writes to; None if another
        thread's emit holds the emitter. A subscriber still joining is listed in the
        registry before its ring exists: an event emitted then would not reach it, so it
        is not counted until its ring is adopted."""
        self._check_usable()
        soon = time.monotonic() + WAIT_STEP
        if not self._take_lock(soon if deadline is None else min(soon, deadline)):
            return None
        try:
            self._refresh()
            live = set(self._registry.live_subscribers(self._token, self._control))
            return len(live & set(self._outlets))
        finally:
            self._lock.release()

    @property
    def subscriber_count(self) -> int:
        """Live subscribers right now (dead ones are reaped on the way), counting only
        those whose ring is complete, whom the next emit reaches; a group, or a durable
        subscription kept for its owner, counts once: it is one ring, as `emit` counts
        it. Works on the registry only: it never waits for an emit in another thread,
        and never touches what `close()` frees (the emitter lets go of a reaped ring at
        its next look)."""
        self._check_usable()
        live = self._registry.live_subscribers(self._token, None)
        # A record is written before its ring (so that a crash leaves nothing unnamed):
        # a subscriber still joining is not counted yet, or `wait_for_subscribers` could
        # return before the next emit can reach it. Its ring's `space` semaphore is the
        # last thing its join creates, and a ring counted here is adopted by the next
        # emit even if the joiner has not yet told the emitter (moved `generation`).
        ready = [i for i in live
                 if _platform.semaphore_exists(_names.space_sem_name(self._token, i))]
        if any(i not in self._outlets for i in ready):
            self._fanout.fresh_for(-1, 0.0)  # the next look lists the rings again
        return len(ready)

    def close(self) -> None:
        """End the stream. Subscribers still read everything already emitted.

        Idempotent. An `emit` blocked in another thread raises `Closed` within a slice.
        """
        super().close()

    def _close(self) -> None:
        self._closing = True
        with self._lock:
            # Every step may be repeated: a close() interrupted halfway is finished by the
            # next call, or by the one at interpreter exit.
            if self._closed:
                return
            if not self._control.unmapped and not self._fanout.closed:
                self._control.mark_closed()
                self._refresh()  # rings that joined since the last emit hear the end too
                self._drop_departed()  # the dead are removed now, not by the last one out
                self._fanout.repost()  # every sleeping subscriber looks, sees `closed`
                self._wake_loops()
                for outlet in self._outlets.values():
                    self._fanout.remove(outlet.sub_id)
                    outlet.ring.detach()
                self._fanout.close()  # before the control block it writes goes
            self._waker.close()
            self._arena.close()
            if self._wake_pipe is not None:
                self._wake_pipe.close()
            self._outlets.clear()
            if not self._left:
                # Even if a mapping is gone already (a dropped handle is finalized with
                # what it holds, in any order): the registry and the names are what count.
                self._registry.release_name(self._name, self._token)
                self._registry.finish_emitter(self._token, self._life)
                self._left = True
            self._control.close()
            self._closed = True
            _open_emitters.discard(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._outlets)} rings"
        return f"<shmbus.EventEmitter {self._name!r} {state}>"

    # -- emit, step by step -----------------------------------------------------------

    def _emit(self, event: Any, pickled: bytes | None, timeout: float | None) -> int:
        """`emit` the general way, which waits as it must; `pickled` is the event's
        pickle if `fast_emit` made one."""
        if pickled is None:
            payload = self._encode(event)
        elif len(pickled) > self._inline_max:
            payload = self._encode_large(event)
        else:
            payload = pickled
        deadline = None if timeout is None else deadline_after(timeout)
        self._enter(deadline)
        try:
            self._look()
            return self._send([payload], deadline)[1]
        finally:
            self._lock.release()

    def _encode(self, event: Any) -> "bytes | _codec.Parts":
        """The event's pickle: bytes if it fits in a slot, else `Parts` for the arena."""
        # In parts while the events are large: see `_codec`. Threads may race on the
        # flag; it only picks the cheaper of two correct encodings.
        if not self._expect_large:
            payload = _codec.encode(event)
            if len(payload) <= self._inline_max:
                return payload  # the usual case, first
            return self._encode_large(event)
        parts = _codec.encode_in_parts(event)
        if len(parts) > self._inline_max:
            return parts if isinstance(parts, _codec.Parts) else _codec.Parts([parts], [], [])
        self._expect_large = False
        return _codec.encode(event)  # small after all: in band, in a slot

    def _encode_large(self, event: Any) -> "_codec.Parts":
        """An event whose pickle did not fit in a slot, pickled again in parts (its
        buffers out of band, written once into the arena); the next ones are expected
        large too."""
        self._expect_large = True
        parts = _codec.encode_in_parts(event)
        return parts if isinstance(parts, _codec.Parts) else _codec.Parts([parts], [], [])

    def _enter(self, deadline: float | None) -> None:
        if self._closed or self.inherited:
            self._check_usable()
        if not self._take_lock(deadline):
            raise Timeout("emit timed out waiting for another thread's emit; nothing sent")
        if self._closed:
            self._lock.release()
            raise Closed(f"bus {self._name!r} is closed")

    def _take_lock(self, deadline: float | None) -> bool:
        """The emitter's lock, by `deadline`; the upkeep thread's hold is always waited
        out (it is short): only another emit can make a call time out here."""
        if self._lock.acquire() if deadline is None else acquire_by(self._lock, deadline):
            return True
        return self._upkeeping and self._lock.acquire(timeout=UPKEEP_HOLD)

    _kind = "EventEmitter"

    def _what(self) -> str:
        return f"bus {self._name!r}"

    def _send(self, payloads: "list[bytes | _codec.Parts]", deadline: float | None,
              wait: bool = True) -> tuple[int, int]:
        """Commit `payloads` as consecutive events, all or none; (events sent,
        subscribers reached). Only the first of them are sent (all or none) if their large
        events together need more memory than the arena has (`_place`): the caller sends
        the rest next. The caller holds the lock and sized the chunk to fit every ring
        (`_look` first, then `_chunk_size`)."""
        count = len(payloads)
        seq = self._fanout.committed  # the truth, even after an interrupted emit
        if self._arena.outstanding:
            self._reclaim(seq)
        slots: list[bytes] = []  # made before any ring is touched: large events placed
        try:
            slots = self._place(seq, payloads, deadline, wait)
            if len(slots) < count:  # more large events than the arena holds: these first
                count, payloads = len(slots), payloads[:len(slots)]
            nbytes = len(payloads[0]) if count == 1 else sum(map(len, payloads))
            reached = self._publish(_ring.slot_block(slots), count, nbytes, seq, deadline,
                                    wait)
        except BaseException:
            self._abort(seq + count, count, slots)
            if self._fanout.committed == seq + count:
                self._remember(seq, slots)  # committed all the same
            raise
        self._remember(seq, slots)
        return count, reached

    def _remember(self, seq: int, slots: list[bytes]) -> None:
        """Keep the slots of events `seq`... just committed, for late joiners."""
        history = self._history
        if history is not None:
            history.extend(zip(range(seq, seq + len(slots)), slots))
            self._control.words[HISTORY_HELD_WORD] = len(history)

    def _history_for(self, end: int, capacity: int) -> list[bytes]:
        """The kept slots of the events just before `end`, as many as a ring of
        `capacity` takes; only an unbroken run (an emit interrupted at the wrong moment
        may have left one out: then what came before it is not offered)."""
        history = self._history or ()
        run: list[bytes] = []
        for seq, slot in reversed(history):
            if seq != end - len(run) - 1 or len(run) >= capacity:
                break
            run.append(slot)
        run.reverse()
        return run

    def _forget_history_through(self, seq: int) -> None:
        """Drop kept events up to `seq`: their large-event memory is needed for new ones."""
        history = self._history
        if history is not None:
            while history and history[0][0] <= seq:
                history.popleft()
            self._control.words[HISTORY_HELD_WORD] = len(history)

    def _send_batch(self, count: int, batch: bytes, deadline: float | None
                    ) -> tuple[int, int]:
        """As `_send`, for `count` events pickled as one list (`_batch_of`)."""
        seq = self._fanout.committed
        try:
            reached = self._publish(_ring.batch_slot(seq, count, batch), count, len(batch),
                                    seq, deadline, True)
        except BaseException:
            self._abort(seq + count, count, [])
            raise
        return count, reached

    def _publish(self, block: bytes, count: int, nbytes: int, seq: int,
                 deadline: float | None, wait: bool) -> int:
        while True:
            reached = self._fanout.publish(block, count, nbytes)
            if reached >= 0:
                self._wake_loops()
                return reached
            self._await_room_for(self._outlets[-1 - reached], seq + count - 1, deadline, wait)

    def _batch_of(self, events: list[Any]) -> bytes | None:
        """`events` pickled as one list, if that is worth it and safe (`_codec`)."""
        if len(events) < 2 or self._expect_large or self._batch_misses \
                or self._keeps_history:  # the history keeps events one by one
            self._batch_misses = max(0, self._batch_misses - 1)
            return None
        if any(o.queue is not None for o in self._outlets.values()):
            return None  # a queue's members claim events one by one (see `_Outlet`)
        batch = _codec.encode_batch(events)
        if batch is None or not _ring.batch_fits(len(events), batch):
            self._batch_misses = BATCH_RETRY_AFTER  # events like these: one by one a while
            return None
        return batch

    def _await_room_for(self, outlet: _Outlet, last: int, deadline: float | None,
                        wait: bool) -> None:
        """A ring is full: wait for room in it (or, without `wait`, say so with
        `_RingsFull`), or for its subscriber to be gone (then it is dropped)."""
        if wait:
            self._await_room(outlet, last, deadline)
        elif not self._gone(outlet):
            raise _RingsFull([outlet])

    def _wake_loops(self) -> None:
        """Wake the event loops of the subscribers waiting from asyncio (`_wakepipe`)."""
        for sub_id in self._fanout.wanting:
            outlet = self._outlets.get(sub_id)
            if outlet is not None:  # not dropped since the publish that listed it
                self._waker.wake(outlet.wake_pipe)

    def _place(self, seq: int, payloads: "list[bytes | _codec.Parts]", deadline: float | None,
               wait: bool) -> list[bytes]:
        """The slots of the first events of `payloads`, all of them unless the arena
        cannot hold more of them until they are committed and read: inline, or referring
        to where they were written in the arena (waiting for room there as for room in a
        ring)."""
        slots = []
        try:
            for offset, payload in enumerate(payloads):
                if isinstance(payload, _codec.Parts):
                    slot = self._place_large(seq + offset, payload, deadline, wait, seq)
                    if slot is None:
                        break
                    slots.append(slot)
                else:
                    slots.append(_ring.inline_slot(seq + offset, payload))
        except BaseException:
            self._discard_large(slots)
            raise
        return slots

    def _place_large(self, seq: int, parts: _codec.Parts, deadline: float | None,
                     wait: bool, first: int) -> bytes | None:
        """Event `seq`'s slot, once it is in the arena; None, rather than wait, if the
        caller placed events from `first` on and has not committed them yet: no
        subscriber can read those, and one may need them before it lets go of older
        memory (a `recv(view=True)` loop holds its last view until the next event), so
        waiting could wait for ever. The caller commits them, then comes back."""
        oversized = self._arena.oversized(len(parts))
        while True:
            ref = self._arena.put(seq, parts)
            if ref is not None:
                return _ring.large_slot(seq, _ring.KIND_SEGMENT if oversized
                                        else _ring.KIND_ARENA, ref)
            oldest = self._arena.oldest_seq
            if oldest is None:  # nothing to wait for: /dev/shm has not the room
                raise _platform.out_of_memory(f"a large event of bus {self._name!r}",
                                              len(parts))
            slowest = min(self._outlets.values(), default=None,
                          key=lambda o: self._fanout.oldest_unread(o.sub_id))
            if slowest is None or self._fanout.oldest_unread(slowest.sub_id) > oldest:
                # Read by everyone meanwhile, or nobody left to read it; if the history
                # still holds it, the history gives it up (it keeps fewer large events
                # than `history` rather than make emit wait for ever).
                self._forget_history_through(oldest)
                self._reclaim(seq)
                continue
            if seq > first:
                return None
            if not wait:
                raise _RingsFull([slowest], lambda: self._fanout.oldest_unread(
                    slowest.sub_id) > oldest)
            # Room comes when the slowest subscriber has read the oldest large event in
            # flight, and no longer reads it in place (a view it still holds).
            self._await(slowest, lambda: self._fanout.oldest_unread(slowest.sub_id) > oldest,
                        deadline, lambda: "has not finished with the large events that fill "
                        f"the bus's {self._arena.bound >> 20} MiB of large-event memory "
                        "(large_bytes)")

    def _discard_large(self, slots: list[bytes]) -> None:
        for slot in reversed(slots):
            if _ring.slot_kind(slot) != _ring.KIND_INLINE:
                self._arena.discard_newest()

    def _reclaim(self, seq: int) -> None:
        oldest = min((self._fanout.oldest_unread(sub_id) for sub_id in self._outlets),
                     default=seq)
        if self._history:
            oldest = min(oldest, self._history[0][0])  # late joiners may still get it
        self._arena.reclaim(oldest)

    def _abort(self, end: int, count: int, slots: list[bytes]) -> None:
        if self._fanout.committed == end:
            self._fanout.repost()  # may post a doorbell twice: one spurious wake-up
            self._wake_loops()
        else:
            self._discard_large(slots)

    def _look(self) -> None:
        """Bring the rings up to date if subscribers came or went, or a sweep is due."""
        if not self._fanout.fresh:
            self._refresh()

    def _chunk_size(self) -> int:
        smallest = min((o.capacity for o in self._outlets.values()), default=self._capacity)
        return max(1, smallest // 4)

    def _gone(self, outlet: _Outlet) -> bool:
        """Without waiting: whether `outlet`'s subscriber left or died (then it is
        dropped)."""
        if outlet.ring.sub_closed or self._registry.reap_if_dead(self._token, outlet.sub_id,
                                                                 self._control):
            self._drop(outlet)
            return True
        return False

    def _try_send(self, payload: "bytes | _codec.Parts") -> "int | _Waiting":
        """Emit without waiting: the subscribers reached; or, if rings are full, what to
        wait for (no outlets if another thread holds the emitter)."""
        self._check_usable()
        if not self._take_lock(time.monotonic()):
            return _Waiting([], None)
        try:
            self._check_usable()
            try:
                self._look()
                return self._send([payload], None, wait=False)[1]
            except _RingsFull as full:
                return self._listen_for_room(full)
        finally:
            self._lock.release()

    def _listen_for_room(self, full: _RingsFull) -> "_Waiting":
        """Under the lock (`close()` cannot free a ring meanwhile): raise the emitter's
        flag in each ring waited for, then look once more (see `_wakepipe`)."""
        if self._wake_pipe is None:
            self._wake_pipe = WakePipe(self._registry.wake_pipe_path(self._token, "emitter"))
        outlets = full.outlets
        for outlet in outlets:
            outlet.ring.flags[EMITTER_WAITING] = 1
        fence(outlets[0].ring.space)
        seq = self._fanout.committed
        if any(o.ring.sub_closed for o in outlets) or (
                full.has_room() if full.has_room is not None
                else any(self._fanout.has_room(o.sub_id, seq) for o in outlets)):
            return _Waiting(outlets, None)
        return _Waiting(outlets, self._wake_pipe)

    async def _await_room_async(self, waiting: "_Waiting", deadline: float | None) -> None:
        if not waiting.outlets:
            await asyncio.sleep(POLL_MAX_SLEEP)  # another thread is emitting
            return
        try:
            if waiting.wake_pipe is not None:
                await waiting.wake_pipe.wait(slice_until(deadline))
            else:
                await asyncio.sleep(0)  # room came meanwhile; the loop runs before a retry
        finally:
            self._stop_listening(waiting)

    def _stop_listening(self, waiting: "_Waiting") -> None:
        # Never waits for the lock (that would block the event loop behind an emit in
        # another thread); a flag left up costs a subscriber a byte written to a pipe.
        if not self._lock.acquire(blocking=False):
            return
        try:
            blocked = time.monotonic_ns() - waiting.began
            for outlet in waiting.outlets:
                if self._outlets.get(outlet.sub_id) is outlet:  # still attached
                    outlet.ring.flags[EMITTER_WAITING] = 0
                    outlet.ring.add_blocked_ns(blocked)
        finally:
            self._lock.release()

    def _await_room(self, outlet: _Outlet, seq: int, deadline: float | None) -> bool:
        """Wait until `outlet` has room for event `seq`: True, or False if its
        subscriber left."""
        return self._await(outlet, lambda: self._fanout.has_room(outlet.sub_id, seq),
                           deadline, lambda: "kept its ring full ("
                           f"{self._fanout.unread(outlet.sub_id, seq)} of {outlet.capacity} "
                           "unread)")

    def _await(self, outlet: _Outlet, ready: Callable[[], bool], deadline: float | None,
               why: Callable[[], str]) -> bool:
        """Wait until `ready()` says the subscriber of `outlet` has done what the emitter
        needs: True, or False if that subscriber left. Woken by its `space` doorbell, one
        slice at a time, checking between slices that it lives, and saying so in the log
        when it takes long (`warn_after`)."""
        began = time.monotonic_ns()
        patience = _Patience(self._warn_after)
        try:
            while True:
                if self._closing:
                    raise Closed(f"bus {self._name!r} was closed while emit was blocked")
                got = self._sleep_on(outlet, ready, deadline)
                if outlet.ring.sub_closed:
                    self._drop(outlet)
                    return False
                if ready():
                    return True
                if not got:
                    if self._registry.reap_if_dead(self._token, outlet.sub_id, self._control):
                        self._drop(outlet)
                        return False
                    if expired(deadline):
                        raise Timeout(
                            f"emit timed out: {outlet.who()} of bus {self._name!r} "
                            f"{why()}; no subscriber received the event"
                        )
                waited = patience.exhausted()
                if waited is not None:
                    log.warning("emit on bus %r has waited %.0f s for %s, which %s; it is "
                                "alive (a stuck or slow reader?)", self._name, waited,
                                outlet.who(), why())
        finally:
            if outlet.sub_id in self._outlets:
                outlet.ring.add_blocked_ns(time.monotonic_ns() - began)

    def _sleep_on(self, outlet: _Outlet, ready: Callable[[], bool],
                  deadline: float | None) -> bool:
        """One slice of waiting for room in `outlet`: a spell of spinning on `ready()`,
        then sleeping on its `space` doorbell with the emitter's sleeping flag up in that
        ring so that its subscriber posts it (see `_ring`): True if posted, or if `ready()`
        already."""
        if spin(ready, min(SPIN, slice_until(deadline))):
            return True
        self._fanout.before_wait(outlet.sub_id)
        try:
            if ready() or outlet.ring.sub_closed:
                return True
            return self._waiter.sleep(outlet.ring.space, slice_until(deadline))
        finally:
            self._fanout.after_wait(outlet.sub_id)

    # -- membership ---------------------------------------------------------------------

    def _upkeep(self) -> None:
        """What an idle emitter does every `UPKEEP_INTERVAL`: join and leave, reap."""
        if self._closed or self.inherited:
            return
        if not self._lock.acquire(blocking=False):
            return  # an emit is under way, and keeps the bus itself
        self._upkeeping = True
        try:
            if self._closed:
                return
            self._look()
            if self._arena.outstanding:
                self._reclaim(self._fanout.committed)  # large events read meanwhile
        finally:
            self._upkeeping = False
            self._lock.release()

    def _refresh(self) -> None:
        # No mutex: emit must not wait on a joiner that may be stopped mid-join. A ring
        # listed before it is complete fails to attach and is skipped; its joiner bumps
        # `generation` once it is complete, read here before listing, so the next emit
        # looks again.
        generation = self._control.generation
        ids = set(self._registry.subscriber_ids(self._token))
        for sub_id in set(self._outlets) - ids:
            self._drop(self._outlets[sub_id])
        for sub_id in sorted(ids - set(self._outlets)):
            self._adopt(sub_id)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._drop_departed()
        self._fanout.fresh_for(generation, self._next_sweep - now)

    def _adopt(self, sub_id: int) -> None:
        try:
            ring = _ring.Ring.attach(self._token, sub_id, _ring.SLOT_SIZE)
        except (posix_ipc.ExistentialError, ShmBusError):
            return  # left already, or unreadable: it cannot be delivered to
        start = self._fanout.committed
        record = self._registry.record_of(self._token, sub_id)
        kept = self._history_for(start, ring.capacity) if record.get("history") else []
        if kept:
            # A late joiner that asked for the history: its ring starts with the last
            # events before `start`, written before the ring says where it starts.
            start -= len(kept)
            ring.write_slots(start, _ring.slot_block(kept))
        ring.adopt(start)
        self._fanout.add(ring, start)
        if kept:
            ring.data.release()  # it may sleep already: one spurious wake-up at worst
        wake_pipe = self._registry.wake_pipe_path(self._token, sub_id)
        self._outlets[sub_id] = _Outlet(ring, wake_pipe, record)

    def _drop_departed(self) -> None:
        # Every record is probed, not only adopted rings: a subscriber that died halfway
        # through its own close() is no outlet any more, but its objects are still there.
        live = set(self._registry.live_subscribers(self._token, self._control))
        for outlet in list(self._outlets.values()):
            if outlet.sub_id not in live or outlet.ring.sub_closed:
                self._drop(outlet)

    def _drop(self, outlet: _Outlet) -> None:
        if self._outlets.pop(outlet.sub_id, None) is not None:
            self._fanout.remove(outlet.sub_id)  # before the ring goes: it writes there
            self._waker.forget(outlet.wake_pipe)
            outlet.ring.detach()


class _Waiting:
    """What an `aemit` that found rings full waits for: room in `outlets`, woken through
    `wake_pipe` (None: look again at once)."""

    __slots__ = ("outlets", "wake_pipe", "began")

    def __init__(self, outlets: list[_Outlet], wake_pipe: WakePipe | None) -> None:
        self.outlets = outlets
        self.wake_pipe = wake_pipe
        self.began = time.monotonic_ns()


def _take_chunk(source: Iterator[Any], size: int) -> tuple[list[Any], Exception | None]:
    """Up to `size` events from `source`, and the exception it raised if it did: the
    events it gave before that are still emitted."""
    chunk: list[Any] = []
    try:
        chunk.extend(itertools.islice(source, size))
    except Exception as exc:
        return chunk, exc
    return chunk, None


class _Patience:
    """When a wait that began now has lasted long enough to be logged: after `first`
    seconds, then twice as long, and so on, but at least every `WARN_AT_MOST_EVERY`."""

    __slots__ = ("began", "next")

    def __init__(self, first: float | None) -> None:
        self.began = time.monotonic()
        self.next = first

    def exhausted(self) -> float | None:
        """The seconds waited, if it is time to say so; else None."""
        waited = time.monotonic() - self.began
        if self.next is None or waited < self.next:
            return None
        self.next = min(2 * self.next, waited + WARN_AT_MOST_EVERY)
        return waited


class _RingsFull(Exception):
    """`_send(wait=False)` found no room for the event at these subscribers (their rings
    are full, or the large events they hold fill the arena); nothing was sent.
    `has_room()` says when to try again (None: when their rings have room)."""

    def __init__(self, outlets: list[_Outlet],
                 has_room: Callable[[], bool] | None = None) -> None:
        self.outlets = outlets
        self.has_room = has_room


def _validate_warn_after(warn_after: object) -> float | None:
    if warn_after is None:
        return None
    if isinstance(warn_after, bool) or not isinstance(warn_after, (int, float)) \
            or not warn_after > 0:
        raise InvalidArgument(
            f"warn_after must be None or a number of seconds > 0, got {shown(warn_after)}")
    return float(warn_after)


def _validate_history(history: object) -> int:
    if isinstance(history, bool) or not isinstance(history, int) \
            or not 0 <= history <= _ring.MAX_CAPACITY:
        raise InvalidArgument(
            f"history must be an int from 0 to {_ring.MAX_CAPACITY} (events kept for late "
            f"joiners), got {shown(history)}")
    return history


def _iterate(events: Iterable[Any]) -> Iterator[Any]:
    if isinstance(events, (str, bytes, bytearray, dict)):
        raise InvalidArgument(
            f"emit_many() takes an iterable of events, not a {type(events).__name__}; to "
            "send it as one event, use emit()")
    try:
        return iter(events)
    except TypeError:
        raise InvalidArgument(
            f"emit_many() takes an iterable of events, not {shown(events)}") from None


def _generated_name() -> str:
    return f"bus-{os.getpid()}-{os.urandom(3).hex()}"


_upkeep_guard = threading.Lock()
_upkeeper: threading.Thread | None = None


def _after_fork_in_child() -> None:
    # The upkeep thread did not come along, and may have held the guard at the fork.
    global _upkeep_guard, _upkeeper
    _upkeep_guard = threading.Lock()
    _upkeeper = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _ensure_upkeep() -> None:
    """Start the process's upkeep thread, unless it runs (it stops when no emitter is
    open, and a fork child starts without it)."""
    global _upkeeper
    with _upkeep_guard:
        if _upkeeper is None or not _upkeeper.is_alive():
            _upkeeper = threading.Thread(target=_upkeep_all, name="shmbus-upkeep",
                                         daemon=True)
            _upkeeper.start()


def _upkeep_all() -> None:
    global _upkeeper
    while True:
        time.sleep(UPKEEP_INTERVAL)
        with _upkeep_guard:
            emitters = list(_open_emitters)  # strong references for this round only
            if not emitters:
                _upkeeper = None
                return
        for emitter in emitters:
            try:
                emitter._upkeep()
            except Exception as exc:  # never the end of the thread: the next emit sees it
                _complain_once_a_minute(emitter, exc)
        del emitters, emitter


_complaints: dict[str, float] = {}


def _complain_once_a_minute(emitter: EventEmitter, exc: Exception) -> None:
    # A lasting cause (a process at its file limit) would log every UPKEEP_INTERVAL.
    said = f"upkeep of {emitter!r} failed: {exc}"
    now = time.monotonic()
    if now - _complaints.get(said, -math.inf) >= 60:
        if len(_complaints) > 1000:
            _complaints.clear()
        _complaints[said] = now
        log.warning("%s", said, exc_info=not isinstance(exc, ShmBusError))


