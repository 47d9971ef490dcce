"""The subscription: one process's end of the bus, reading its own ring in order.

## Shape

`subscribe(name)` registers a subscriber and creates its ring, both owned by the calling
process, and returns at once; the emitter adopts the ring on its next `emit` (it notices
the control block's `generation` moved), so the subscription receives every event
whose `emit` begins after `subscribe()` returned, and none that finished before.

`recv` reads event `start_seq + tail` once the control block's `committed` has passed
it. When it has not, `recv` waits on the ring's `data` semaphore (the doorbell), one
slice at a time, after a short spell of yielding the CPU (`_wait.SPIN`). When nothing
arrives within a slice it checks how the emitter is doing:

- the emitter closed (`closed` flag): read what is left, then raise `Closed`;
- the emitter died (its life lock is free): read every committed event, which includes
  every event whose `emit` returned, then raise `EmitterDied` (a `Closed`).

Either way the end is seen within one slice plus one probe of the emitter's lock.

## What is atomic under interruption

`recv` decodes the event *before* it advances `tail`, and parks the result until it is
returned, in the ring protocol's `Reader.parked` (so that the compiled core's `take_one`
can park the usual event in the same call that consumes it). A `KeyboardInterrupt` that
lands before `tail` moves leaves the event unread; one that lands after it makes the
next `recv` return the parked event. Either way the caller sees each event exactly once.

## Threads

Any number of threads may receive from one subscription; each event goes to one of
them. A call takes events under the subscription's lock and parks them; it takes them
back after letting the lock go, in bytecode with no call in it, so no other thread runs
in between. Until it has, other threads leave the parked events alone
(`Reader.handing`): otherwise a thread could take another's events as if an interrupted
call had left them.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import posix_ipc

from . import _codec, _liveness, _ring
from ._arena import ArenaReader
from ._control import ControlBlock
from . import _core
from ._errors import (
    Closed,
    EmitterDied,
    ShmBusError,
    Timeout,
)
from ._liveness import LifeLock
from ._protocol import Undecodable
from ._receiver import EndReason, RingReceiver, check_max_n, join_when_there
from ._registry import Registry, validate_name
from ._ring import EMITTER_WAITING, SUB_WAITING
from ._wait import (
    POLL_MAX_SLEEP,
    SPIN,
    Waiter,
    acquire_by,
    deadline_after,
    expired,
    fence,
    slice_until,
    spin,
    waiter_from_env,
)
from ._wakepipe import WakePipe

_loads = pickle.loads
_decode = _codec.decode

MAX_VIEWED_EVENTS = 16
"""How many events' views (`recv(view=True)`) may be in use at once: each keeps shared
memory the emitter is waiting to reuse."""

BATCH_BYTES = 1 << 20
"""`recv_many` stops adding large events to its list once they hold this many pickled
bytes. Decoding many large events at once makes the allocator fetch (and fault in) fresh
memory for each batch, which costs more than the batch saves: 64 events of 1 MiB went
ten times slower in one list than one by one."""


_Parked = tuple[int, list[Any], "Exception | None"]
"""Events consumed from the ring but not yet returned to the caller, in order: (seq,
values, error). `values` are decoded events from `seq` on; or `values` is empty and
`error` is the `DeserializationError` of event `seq`, which is reported alone. A plain
tuple, not a class: every `recv` makes one, and a tuple costs a sixth as much."""


def _split(parked: _Parked, max_n: int, behind: "_Parked | None"
           ) -> "tuple[_Parked, _Parked | None]":
    """The first `max_n` of `parked`, and the rest followed by `behind`, whose error (an
    undecodable event) keeps its place among them as an `Undecodable` (see `_head`)."""
    seq, values, _ = parked
    rest = values[max_n:]
    if behind is not None:
        rest = rest + (behind[1] if behind[2] is None else [Undecodable(behind[2])])
    return (seq, values[:max_n], None), ((seq + max_n, rest, None) if rest else None)


def _head(parked: _Parked, max_n: int) -> "tuple[_Parked, _Parked | None]":
    """`_split(parked, max_n, None)`, ending before an `Undecodable` among the values:
    that event is reported alone, as a parcel of its own, once it comes first."""
    seq, values, _ = parked
    for index, value in enumerate(values[:max_n]):
        if isinstance(value, Undecodable):
            if index == 0:
                rest = values[1:]
                return (seq, [], value.error), ((seq + 1, rest, None) if rest else None)
            return _split(parked, index, None)
    return _split(parked, max_n, None)


@runtime_checkable
class Subscription(Protocol):
    """What every subscription offers, local (`LocalSubscription`) or read back from NATS
    (`shmbus.nats.RemoteSubscription`): what `shmbus.subscribe()` returns.

    Events arrive in the emitter's order, once each. `recv` and `arecv` wait for the
    next; `recv_many` and `arecv_many` take what is ready, 1 to `max_n`; iteration (`for`,
    `async for`) ends quietly when the bus was closed and everything read, and raises
    `EmitterDied` when the emitter died. `end_reason` says which, once it is over.
    """

    @property
    def name(self) -> str: ...

    @property
    def end_reason(self) -> "EndReason | None": ...

    @property
    def closed(self) -> bool: ...

    def recv(self, *, timeout: float | None = None) -> Any: ...

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]: ...

    async def arecv(self, *, timeout: float | None = None) -> Any: ...

    async def arecv_many(self, max_n: int, *, timeout: float | None = None
                         ) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __next__(self) -> Any: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def __anext__(self) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class RawEvent:
    """An event as it lay in shared memory, not unpickled: for code that passes events
    on (a bridge to another system) rather than use them.

    `seq` is its number on the bus (the same for every subscriber); `data` is its pickle,
    or, if `laid_out`, a large event's layout (the pickle and its out-of-band buffers,
    see `_codec.Parts`). `decode()` makes the event of either.
    """

    seq: int
    data: bytes
    laid_out: bool

    def decode(self) -> Any:
        if self.laid_out:
            with memoryview(self.data) as view:
                return _codec.decode_laid_out(view)
        return _codec.decode(self.data)


def subscribe_local(name: str, *, capacity: int | None = None,
                    wait: float = 0.0, history: bool = False) -> "LocalSubscription":
    """Subscribe to the bus called `name` on this host; see `shmbus.subscribe`."""
    validate_name(name)
    return join_when_there(
        lambda: LocalSubscription._join(Registry(), name, capacity, history), wait)


class LocalSubscription(RingReceiver):
    """A subscriber's end of a bus: `recv()` events, or iterate until the stream ends."""

    _kind = "subscription"

    def __init__(self) -> None:
        raise TypeError("use shmbus.subscribe(name) or EventEmitter.subscribe()")

    @classmethod
    def _join(cls, registry: Registry, name: str, capacity: int | None,
              history: bool = False) -> "LocalSubscription":
        validate_name(name)
        if capacity is not None:
            _ring.validate_capacity(capacity)
        waiter = waiter_from_env()
        token, control, (sub_id, life, ring) = cls._open_bus(
            registry, name, capacity, history,
            lambda token, control, wanted, record: registry.join(name, token, control,
                                                                 wanted, record))
        self = object.__new__(cls)
        self._init(registry, name, token, control, sub_id, life, ring, waiter)
        return self

    def _init(self, registry: Registry, name: str, token: str, control: ControlBlock,
              sub_id: int, life: LifeLock, ring: _ring.Ring, waiter: Waiter) -> None:
        self._init_ring(registry, name, token, control, sub_id, ring)
        self._life = life
        self._waiter = waiter
        self._reader = _core.Reader(ring, control)  # the ring protocol's consumer side
        self._large = ArenaReader(token, self._set_pin)
        self._wake_pipe: WakePipe | None = None  # created by the first async wait
        self._left = False  # the registry has forgotten this subscriber
        self._opened()

    # -- public -------------------------------------------------------------------------

    def recv(self, *, timeout: float | None = None, view: bool = False) -> Any:
        """The next event, waiting for it as long as `timeout` allows (None: forever).

        Raises `Timeout` if none arrived in time (nothing is consumed), `Closed` once the
        bus is closed and every event has been read (`EmitterDied` if the emitter died),
        and `DeserializationError` for an event that cannot be unpickled here (that
        event is consumed; the next call returns the next one).

        With `view=True`, the numpy arrays (any out-of-band pickle buffer) of a large
        event are not copied: they are read-only views of the bus's shared memory. They
        stay valid, and that memory stays reserved for them, for as long as you hold them
        (the emitter waits rather than overwrite it, once the bus's large-event memory is
        full). So keep a view only while you work on it, and `.copy()` what you keep;
        holding views of more than `MAX_VIEWED_EVENTS` events at once is refused.
        """
        if not view:
            # The usual case, in one call of the ring protocol (every call costs here): a
            # small event ready, nothing parked, no other thread receiving. It parks
            # the event in the reader and consumes it; it is taken back below with no
            # call in between (see the module docstring).
            try:
                taken = self._reader.take_one(self._lock, timeout)
                if taken == 2:
                    self._wake_emitter_loop()
            except BaseException:
                if self._reader.handing == threading.get_ident():
                    self._reader.handing = 0  # what it parked is the next call's
                raise
            if taken:
                parked: _Parked | None
                parked, self._reader.parked = self._reader.parked, None
                self._reader.handing = 0
                if parked is not None:  # (else a signal handler's recv took it)
                    if parked[2] is None and not parked[1][1:]:  # no call on the way
                        return parked[1][0]
                    self._reader.parked = parked  # a handler's leftovers: the general way

        deadline = None if timeout is None else deadline_after(timeout)
        while True:
            try:
                self._park(deadline, 1, view)
            except BaseException:
                self._reader.handing = 0
                raise
            # No call may stand between taking the parked events and returning them: an
            # interruption there would drop events that are already consumed.
            parked, self._reader.parked = self._reader.parked, None
            self._reader.handing = 0
            if parked is not None:
                # The usual case falls through to the return: some Pythons check for
                # signals on a jump taken, and `parked` lives only in this frame.
                if parked[2] is None:
                    return parked[1][0]
                raise parked[2]

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """The next events, at least one and at most `max_n`: all that are ready now
        (up to about `BATCH_BYTES` of large events).

        Waits as `recv` does for the first event, never for more. Markedly cheaper per
        event than `recv` when events arrive faster than they are handled. Ends and errors
        as `recv`: an undecodable event is raised alone, never inside a list.
        """
        check_max_n(max_n)
        deadline = None if timeout is None else deadline_after(timeout)
        while True:
            try:
                self._park(deadline, max_n)
            except BaseException:
                self._reader.handing = 0  # see recv
                raise
            parked: _Parked | None
            parked, self._reader.parked = self._reader.parked, None
            self._reader.handing = 0
            if parked is not None:
                if parked[2] is None:
                    return parked[1]
                raise parked[2]

    def recv_raw(self, max_n: int, *, timeout: float | None = None) -> list[RawEvent]:
        """As `recv_many`, the events as they lay in shared memory, not unpickled (see
        `RawEvent`): an event this process could not unpickle is passed on all the same."""
        check_max_n(max_n)
        deadline = deadline_after(timeout)
        while True:
            try:
                self._park(deadline, max_n, raw=True)
            except BaseException:
                self._reader.handing = 0  # see recv
                raise
            parked: _Parked | None
            parked, self._reader.parked = self._reader.parked, None
            self._reader.handing = 0
            if parked is not None:
                return parked[1]

    @property
    def last_seq(self) -> int | None:
        """The number of the last event this subscription took from its ring (returned,
        or about to be after an interruption); None before the first."""
        start, tail = self._reader.start, self._reader.tail
        return None if start is None or not tail else start + tail - 1

    def close(self) -> None:
        """Leave the bus and remove this subscription's ring. Idempotent.

        An emitter blocked on this subscription's full ring is released at once, and a
        `recv` blocked in another thread raises `Closed` within one slice.
        """
        super().close()

    def _leave(self) -> None:
        if self._wake_pipe is not None:
            self._wake_pipe.close()
        self._large.close()
        if not self._ring.detached:
            self._ring.mark_sub_closed()
            with contextlib.suppress(posix_ipc.Error):  # closed by an earlier try
                self._ring.space.release()  # an emitter blocked on this ring moves on
            if self._ring.flags[EMITTER_WAITING]:
                self._wake_emitter_loop()
            self._close_waker()
            self._reader.close()  # before the memory it reads goes
            self._ring.detach()
        if not self._left:
            # Even if a mapping is gone already (a dropped handle is finalized with what
            # it holds, in any order): the registry and the names are what count.
            self._registry.leave(self._token, self._sub_id, self._life,
                                 None if self._control.unmapped else self._control)
            self._left = True

    def __repr__(self) -> str:
        return (f"<shmbus.LocalSubscription {self._name!r} #{self._sub_id} "
                f"tail={self._reader.tail}>")

    # -- receiving, step by step ------------------------------------------------------

    def _park(self, deadline: float | None, max_n: int, view: bool = False,
              raw: bool = False) -> None:
        """Leave the next events, consumed, in `self._reader.parked`: between 1 and `max_n`."""
        if self._closed or self._epoch != _liveness.fork_epoch:  # see `Handle.inherited`
            self._check_usable()
        if not (self._lock.acquire() if deadline is None else acquire_by(self._lock, deadline)):
            raise Timeout(f"another thread is receiving from {self._name!r}")
        try:
            self._await_hand_over(deadline)
            if self._closed:
                self._check_usable()
            if view and self._large.viewed >= MAX_VIEWED_EVENTS:
                    raise ShmBusError(
                        f"views of {self._large.viewed} events from recv(view=True) are "
                        f"still in use on bus {self._name!r}; each keeps shared memory "
                        "the emitter needs. Drop them (del array) or copy what you keep "
                        "(array.copy()) before asking for more views."
                    )
            if self._reader.parked is not None or self._reader.surplus is not None:
                if self._hand_out_leftovers(max_n):
                    if not raw:
                        self._top_up(max_n, view)
                    self._reader.handing = threading.get_ident()
                    return
            seq = self._reader.ready()
            if seq is None:
                seq = self._await_event(deadline)
            if raw:
                self._consume(self._read_raw(seq, min(max_n, self._reader.available())))
            else:
                self._take(seq, max_n, view)
            self._reader.handing = threading.get_ident()
        finally:
            self._lock.release()

    def _take(self, seq: int, max_n: int, view: bool) -> None:
        """The ready events, taken by the ring protocol (`Reader.take`) into `parked`."""
        # Parked before anything is consumed: `take` fills the list, then moves `tail`.
        values: list[Any] = []
        parked = self._reader.parked = (seq, values, None)
        taken = self._reader.take(values, max_n, _loads, _decode,
                                  self._load_view if view else self._load_large,
                                  BATCH_BYTES)
        first = values[0]
        if isinstance(first, Undecodable):
            self._reader.parked = (seq, [], first.error)
        elif taken > max_n:  # a batch: the rest is kept for the next calls, in order
            self._reader.parked, self._reader.surplus = _split(parked, max_n,
                                                               self._reader.surplus)
        if self._reader.emitter_waiting:
            self._wake_emitter_loop()

    def _load_large(self, seq: int, kind: int, ref: bytes) -> Any:
        return self._large.load(seq, kind == _ring.KIND_ARENA, ref)

    def _load_view(self, seq: int, kind: int, ref: bytes) -> Any:
        # Pinned before `tail` moves past it (see `_ring` on `pinned`).
        event = self._large.load(seq, kind == _ring.KIND_ARENA, ref, as_views=True)
        fence(self._ring.space)
        return event

    def _hand_out_leftovers(self, max_n: int) -> bool:
        """Park at most `max_n` of the events an interrupted call consumed; True if any.

        `parked` comes first, then `surplus` (both the reader's), in order. A signal
        handler that receives from this subscription (the lock is re-entrant) may take
        `parked` at any call, so it is replaced only if it is still the one looked at,
        with no call between the check and the store.
        """
        surplus = self._reader.surplus
        if surplus is not None and self._reader.resync() <= surplus[0]:
            # A top-up interrupted before `tail` moved past what it decoded (see
            # `_top_up`): none of it was consumed, and the ring hands it out again.
            # Dropped first: joined to the rest of `parked` below, it would come out twice.
            self._reader.surplus = surplus = None
        parked = self._reader.parked
        if parked is not None and self._parked_was_consumed(parked):
            if not any(isinstance(value, Undecodable) for value in parked[1]):
                if len(parked[1]) > max_n:
                    head, rest = _split(parked, max_n, surplus)
                    if self._reader.parked is parked:
                        self._reader.parked, self._reader.surplus = head, rest
                return True
            # An interruption between `take` and `_take` reporting its undecodable event
            # left it among the values: all of them go the way of leftovers, below.
            _, surplus = _split(parked, 0, surplus)
            if self._reader.parked is not parked:
                return True
            self._reader.parked, self._reader.surplus = None, surplus  # one step: see above
        if surplus is not None:
            if surplus[2] is not None:
                self._reader.parked, self._reader.surplus = surplus, None
                return True
            head, rest = _head(surplus, max_n)
            self._reader.parked, self._reader.surplus = head, rest
            return True
        return False

    def _top_up(self, max_n: int, view: bool) -> None:
        """After leftovers were parked: add events ready in the ring, up to `max_n` in
        all, so that `recv_many` returns all that are ready (as its docstring says)."""
        parked = self._reader.parked
        if (parked is None or parked[2] is not None or len(parked[1]) >= max_n
                or self._reader.surplus is not None):
            return
        seq = self._reader.ready()
        if seq is None:
            return
        # The new events land in `surplus` before `tail` moves past them, and move to
        # `parked` in one store: an interruption anywhere loses and repeats nothing.
        more: _Parked = (seq, [], None)
        self._reader.surplus = more
        room = max_n - len(parked[1])
        taken = self._reader.take(more[1], room, pickle.loads, _codec.decode,
                                  self._load_view if view else self._load_large,
                                  BATCH_BYTES)
        if not taken:
            self._reader.surplus = None
        elif isinstance(more[1][0], Undecodable):
            self._reader.surplus = (seq, [], more[1][0].error)  # raised by the next call
        else:
            head, rest = _split(more, room, None)
            merged: _Parked = (parked[0], parked[1] + head[1], None)
            if self._reader.parked is parked:
                self._reader.parked, self._reader.surplus = merged, rest
        if self._reader.emitter_waiting:
            self._wake_emitter_loop()

    def _consume(self, parked: _Parked) -> None:
        # Decoded before `tail` moves, parked before the caller gets it: see the module
        # docstring on interruptions.
        self._reader.parked = parked
        count = len(parked[1]) or 1
        self._reader.advance(count)
        if self._reader.emitter_waiting:  # read after the doorbell: see `_wakepipe`
            self._wake_emitter_loop()

    async def _arecv(self, receive: Callable[..., Any], timeout: float | None) -> Any:
        # Each try is synchronous, and cancellation lands only at the `await`: an event
        # is either returned or left in the ring, never consumed and then dropped.
        deadline = deadline_after(timeout)
        while True:
            try:
                return receive(timeout=0)
            except Timeout:
                if expired(deadline):
                    raise Timeout(f"no event on bus {self._name!r} within the timeout") from None
            await self._await_wake_pipe(deadline)

    async def _await_wake_pipe(self, deadline: float | None) -> None:
        pipe = self._listen()
        if pipe is False:
            await asyncio.sleep(POLL_MAX_SLEEP)  # another thread is receiving
        elif isinstance(pipe, WakePipe):
            try:
                await pipe.wait(slice_until(deadline))
            finally:
                self._stop_listening()

    def _listen(self) -> "WakePipe | bool":
        """Raise this subscription's flag and return its wake pipe to wait on; True if there
        is something to look at already; False if another thread holds the ring.

        Under the lock, like every touch of the ring: `close()` from another thread
        cannot free the ring or its semaphores halfway through.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._check_usable()
            if self._wake_pipe is None:
                self._wake_pipe = WakePipe(
                    self._registry.wake_pipe_path(self._token, self._sub_id))
            self._ring.flags[SUB_WAITING] = 1
            fence(self._ring.data)
            if self._reader.ready() is not None or self._control.closed:
                self._ring.flags[SUB_WAITING] = 0
                return True
            return self._wake_pipe
        finally:
            self._lock.release()

    def _stop_listening(self) -> None:
        # Never waits for the lock (that would block the event loop behind a `recv` in
        # another thread); a flag left up costs the emitter a byte written to a pipe.
        if self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._ring.flags[SUB_WAITING] = 0
            finally:
                self._lock.release()

    def _what(self) -> str:
        return f"bus {self._name!r}"

    def _await_event(self, deadline: float | None) -> int:
        """The sequence number of the next event once it is readable."""
        if self._end is not None:
            self._raise_end()
        while True:
            # Before each sleep too: a thread that got the lock ahead of `close()` (it
            # is not fair) must not sleep a slice first, or K blocked threads held
            # `close()` up for K - 1 slices.
            if self._closing:
                raise Closed(f"this subscription to {self._name!r} was closed")
            got = self._sleep(deadline)
            if self._closing:
                raise Closed(f"this subscription to {self._name!r} was closed")
            seq = self._reader.ready()
            if seq is not None:
                return seq
            end = self._emitter_gone(check_life=not got)
            if end is not None:
                seq = self._reader.ready()
                if seq is not None:
                    return seq  # drain what was committed before the end
                self._end = end
                self._raise_end()
            if not got and expired(deadline):
                raise Timeout(f"no event on bus {self._name!r} within the timeout")

    def _sleep(self, deadline: float | None) -> bool:
        """One slice of waiting for an event: a spell of spinning on the counter, then
        sleeping on the `data` doorbell with the sleeping flag up so that the emitter
        posts it (see `_ring`). True if posted, or if there is something to look at."""
        if spin(self._reader.ready, min(SPIN, slice_until(deadline))):
            return True
        ready = self._reader.before_wait()
        try:
            if ready is not None or self._control.closed:
                return True
            return self._waiter.sleep(self._ring.data, slice_until(deadline))
        finally:
            self._reader.after_wait()

    def _raise_end(self) -> None:
        if self._end is EndReason.EMITTER_DIED:
            raise EmitterDied(
                f"the emitter of bus {self._name!r} died; every event it finished "
                "emitting has been received"
            )
        raise Closed(f"bus {self._name!r} is closed and every event has been received")

    def _read_raw(self, seq: int, count: int) -> _Parked:
        """Events `seq` to `seq + count - 1` as `RawEvent`s."""
        events: list[Any] = []
        for index in range(seq, seq + count):
            if len(events) >= count:
                break
            kind, many, payload = self._reader.slot(index)
            if kind == _ring.KIND_INLINE:
                events.append(RawEvent(index, payload, False))
            elif kind == _ring.KIND_BATCH:  # plain data, as one list: one pickle each
                events += [RawEvent(index + i, _codec.encode(event), False)
                           for i, event in enumerate(pickle.loads(payload))]
                break
            else:
                events.append(RawEvent(index, self._large.raw(kind == _ring.KIND_ARENA,
                                                              payload), True))
        return (seq, events, None)

    def _set_pin(self, seq: int) -> None:
        """Write the `pinned` word (see `ArenaReader`), from any thread; not once the
        ring is gone."""
        if not self._ring.detached:
            with contextlib.suppress(ValueError):  # detached meanwhile: nobody to tell
                self._ring.pin(seq)

    def _handing_thread(self) -> int:
        return self._reader.handing  # the parking place is the reader's (`take_one`)

    def _parked_was_consumed(self, parked: _Parked) -> bool:
        # After an interruption: did `tail` move past the parked event before it landed?
        if self._reader.resync() > parked[0]:
            return True
        self._reader.parked = None
        return False


