"""A member's end of a queue: `subscribe(name, group=...)` and `subscribe(name, durable=...)`.

## Shape

A `QueueSubscription` is a `Subscription` (recv, recv_many, iteration, asyncio) whose
events come from a queue (`_group`): a ring shared by the members of a group, or owned
by one process at a time and kept when it dies (durable). Each call:

1. finishes what the caller was done with (`auto_ack`: everything earlier calls handed
   out; else only what `ack()` said), moving the ring's `tail` over the finished prefix,
2. claims the next events (given-back ones first), all under the claims lock, once,
3. decodes them outside the lock and hands them out.

Events handed out are the member's until finished. If its process dies first, they are
given back and another member (or the durable subscription's next owner) gets them:
delivery is at least once, and an event comes twice only if the one who had it died
before finishing it. `close()` finishes what was handed out (with `auto_ack`; without,
only what was acknowledged) and gives back the rest.

The stream ends (`Closed`, or `EmitterDied`) once the bus has ended and every event has
been finished, or is held by this member: a member does not leave while another might
still die and give events back. So without `auto_ack`, a member that keeps events
unacknowledged while it waits for more makes the others wait for it at the end (two
such members wait for each other): acknowledge, or wait with a timeout, before waiting
for more.

## What is atomic under interruption

Claims live in shared memory, the member's bookkeeping in this object: what it claimed
and has not decoded (`_pending`), what it decoded and has not handed out (`_parked`,
`_surplus`), and what it handed out and has not finished (`_out`, parked events
included, never finished while parked). A call that is interrupted between claiming and
writing that down leaves `_suspect` set, and the next call reconciles: whatever the
segment says this member holds and the bookkeeping does not know is given back. So an
interruption can cost a redelivery, never an event.

## Why asyncio polls here

A lone subscriber's `arecv` sleeps on a wake pipe the emitter writes to (`_wakepipe`);
a queue has one ring and many members, and the emitter wakes one pipe per ring. So
`arecv` here tries without waiting and sleeps in the event loop between tries, from half
a millisecond growing to `ASYNC_POLL_MAX`: no thread, a bounded delay.
"""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
import time
from collections.abc import Callable
from typing import Any


from . import _codec, _group, _ring
from ._arena import ArenaReader
from ._control import COMMITTED_WORD, ControlBlock
from ._errors import (
    Closed,
    DeserializationError,
    EmitterDied,
    InvalidArgument,
    ShmBusError,
    Timeout,
    shown,
)
from ._liveness import LifeLock
from ._receiver import EndReason, RingReceiver, check_max_n, join_when_there
from ._registry import QueueJoin, Registry, validate_name, validate_queue_name
from ._ring import EMITTER_SLEEPING, EMITTER_WAITING, SUB_SLEEPING
from ._subscription import BATCH_BYTES, RawEvent
from ._wait import (
    Waiter,
    acquire_by,
    deadline_after,
    expired,
    fence,
    slice_until,
    waiter_from_env,
)

DEFAULT_EXPIRE_AFTER = 60.0
"""How long a durable subscription is kept without an owner before it is removed, unless
`subscribe(..., expire_after=)` says otherwise: long enough for a supervisor to restart a
crashed process, short enough that an abandoned one holds the emitter back (once its
ring is full) for at most a minute."""

ASYNC_POLL_MAX = 0.02
"""The longest `arecv` sleeps between two tries (see the module docstring)."""

LOCK_GRACE = 0.1
"""However short a call's timeout, it waits this long for the claims lock: another
member holds it for microseconds, and `recv(timeout=0)` must not fail for that."""


class _Parcel:
    """Events decoded and not yet handed out: their offsets (counted from the ring's
    start) and values, or the `DeserializationError` of the one at `offsets[0]`."""

    __slots__ = ("offsets", "values", "error")

    def __init__(self, offsets: list[int], values: list[Any], error: Exception | None
                 ) -> None:
        self.offsets = offsets
        self.values = values
        self.error = error

    def split(self, n: int) -> "tuple[_Parcel, _Parcel | None]":
        if len(self.offsets) <= n:
            return self, None
        return (_Parcel(self.offsets[:n], self.values[:n], None),
                _Parcel(self.offsets[n:], self.values[n:], None))


def subscribe_queue(name: str, *, group: str | None = None, durable: str | None = None,
                    capacity: int | None = None, wait: float = 0.0, auto_ack: bool = True,
                    expire_after: float | None = None, history: bool = False
                    ) -> "QueueSubscription":
    """Join group `group`, or take durable subscription `durable`, of bus `name`; see
    `shmbus.subscribe`."""
    validate_name(name)
    if (group is None) == (durable is None):
        raise InvalidArgument("pass one of group= and durable=, not both")
    kind, queue = ("group", group) if group is not None else ("durable", durable)
    validate_queue_name(kind, queue)
    if capacity is not None:
        _ring.validate_capacity(capacity)
    if not isinstance(auto_ack, bool):
        raise InvalidArgument(f"auto_ack must be True or False, got {shown(auto_ack)}")
    if expire_after is not None and kind != "durable":
        raise InvalidArgument("expire_after= applies to a durable subscription only")
    expiry = DEFAULT_EXPIRE_AFTER if expire_after is None else expire_after
    if isinstance(expiry, bool) or not isinstance(expiry, (int, float)) \
            or not 0 < expiry < float("inf"):
        raise InvalidArgument(
            f"expire_after must be a number of seconds > 0, got {shown(expire_after)}")
    return join_when_there(
        lambda: QueueSubscription._join(Registry(), name, kind, str(queue), capacity,
                                        auto_ack, float(expiry), history), wait)


class QueueSubscription(RingReceiver):
    """A member of a group, or the owner of a durable subscription (see the module
    docstring): a `Subscription` whose events are its own until it finishes them."""

    _kind = "subscription"

    def __init__(self) -> None:
        raise TypeError("use shmbus.subscribe(name, group=...) or (name, durable=...)")

    @classmethod
    def _join(cls, registry: Registry, name: str, kind: str, queue: str,
              capacity: int | None, auto_ack: bool, expire_after: float,
              history: bool = False) -> "QueueSubscription":
        waiter = waiter_from_env()
        # `wanted` is the size of the ring if this member creates it (one joining an
        # existing queue takes it as it is, and with it whatever history it began with).
        token, control, joined = cls._open_bus(
            registry, name, capacity, history,
            lambda token, control, wanted, record: registry.join_queue(
                name, token, control, kind, queue, capacity, record, expire_after, wanted))
        self = object.__new__(cls)
        self._init(registry, name, token, control, kind, queue, joined, auto_ack, waiter)
        return self

    def _init(self, registry: Registry, name: str, token: str, control: ControlBlock,
              kind: str, queue: str, joined: QueueJoin, auto_ack: bool, waiter: Waiter
              ) -> None:
        self._init_ring(registry, name, token, control, joined.sub_id, joined.ring)
        self._queue_kind = kind
        self._queue = queue
        self._state = joined.state
        self._claims = joined.lock
        self._member_id = joined.member_id
        self._row = joined.row
        self._life: LifeLock = joined.life
        self._auto_ack = auto_ack
        self._waiter = waiter
        self._member_path = registry._member_path_of(token, joined.sub_id)
        self._start: int | None = None
        self._pending: list[int] = []
        self._parked: _Parcel | None = None
        self._surplus: _Parcel | None = None
        self._out: list[int] = []
        self._suspect = False
        self._next_upkeep = 0.0
        self._large = ArenaReader(token, self._no_pin)
        self._space_posted = 0  # the emitter's last wait this member posted `space` for
        self._unsubscribing = False
        self._opened()

    # -- public -------------------------------------------------------------------------

    @property
    def member(self) -> int:
        """This member's number in its queue (never reused)."""
        return self._member_id

    @property
    def group(self) -> str | None:
        return self._queue if self._queue_kind == "group" else None

    @property
    def durable(self) -> str | None:
        return self._queue if self._queue_kind == "durable" else None

    @property
    def auto_ack(self) -> bool:
        return self._auto_ack

    def recv(self, *, timeout: float | None = None) -> Any:
        """The next event this member takes, waiting as long as `timeout` allows.

        With `auto_ack`, calling it finishes every event earlier calls handed out. Raises
        `Timeout`, `Closed` (`EmitterDied`) once the bus ended and every event is
        finished, and `DeserializationError` for an event that cannot be unpickled here
        (it counts as handed out).
        """
        deadline = deadline_after(timeout)
        while True:
            try:
                self._park(deadline, 1, False)
            except BaseException:
                self._handing = 0  # see LocalSubscription.recv
                raise
            parked, self._parked = self._parked, None
            self._handing = 0
            if parked is not None:
                if parked.error is None:
                    return parked.values[0]
                raise parked.error

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """The next events this member takes, 1 to `max_n` of those ready now (waiting
        as `recv` does for the first). Every one is this member's until finished."""
        check_max_n(max_n)
        deadline = deadline_after(timeout)
        while True:
            try:
                self._park(deadline, max_n, False)
            except BaseException:
                self._handing = 0  # see LocalSubscription.recv
                raise
            parked, self._parked = self._parked, None
            self._handing = 0
            if parked is not None:
                if parked.error is None:
                    return parked.values
                raise parked.error

    def recv_raw(self, max_n: int, *, timeout: float | None = None) -> list[RawEvent]:
        """As `recv_many`, the events as they lay in shared memory (see `RawEvent`)."""
        check_max_n(max_n)
        deadline = deadline_after(timeout)
        while True:
            try:
                self._park(deadline, max_n, True)
            except BaseException:
                self._handing = 0  # see LocalSubscription.recv
                raise
            parked, self._parked = self._parked, None
            self._handing = 0
            if parked is not None:
                values: list[RawEvent] = parked.values
                return values

    def ack(self, seq: int | None = None) -> int:
        """Finish every event handed out so far, or those numbered up to `seq`; how many.

        A finished event is never given to anyone again. Without `auto_ack`, this is the
        only way to finish one; with it, the next `recv` finishes them anyway.
        """
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise InvalidArgument(f"seq must be an event number (int) or None, got {shown(seq)}")
        self._check_usable()
        with self._lock:
            self._check_usable()
            start = self._start_seq()
            if start is None:
                return 0
            done = self._finishable(start, seq)
            if not done:
                return 0
            with self._claims.held(None, self._what()):
                freed = self._state.finish(self._ring, start, self._row, done)
                finished = set(done)
                self._out = [o for o in self._out if o not in finished]
            self._after_finish(freed)
            return len(done)

    def close(self) -> None:
        """Leave: finish what was handed out (with `auto_ack`; without it, only what was
        acknowledged), give back the rest, and go. The last member of a group removes
        its ring; a durable subscription's ring stays, for its next owner (or until it
        expires: `expire_after`). Idempotent."""
        super().close()

    def unsubscribe(self) -> None:
        """Close, and remove the durable subscription with what it holds (for a group
        member, the same as `close()`)."""
        self._unsubscribing = True
        self.close()

    def __repr__(self) -> str:
        return (f"<shmbus.QueueSubscription {self._name!r} {self._queue_kind} "
                f"{self._queue!r} member {self._member_id}>")

    def _what(self) -> str:
        return f"the {self._queue_kind} {self._queue!r} of bus {self._name!r}"

    # -- closing ------------------------------------------------------------------------

    def _leave(self) -> None:
        if not self._ring.detached:
            self._give_up_claims()
        if self._life.fd >= 0:
            keep = self._queue_kind == "durable" and not self._unsubscribing
            self._registry.leave_queue(
                self._token, self._sub_id, self._member_id, self._life, self._ring,
                self._state, None if self._control.unmapped else self._control, keep)
        self._large.close()
        self._close_waker()
        self._claims.close()
        if not self._state.mapping.closed:
            self._state.close()
        if not self._ring.detached:
            self._ring.detach()

    def _give_up_claims(self) -> None:
        """Finish what may be finished, give back the rest, and leave the row, under the
        claims lock; if it cannot be had, whoever next finds this member gone does it."""
        deadline = time.monotonic() + _group.LOCK_TIMEOUT
        if not self._claims.acquire(deadline):
            return
        freed = given = 0
        try:
            start = self._start_seq()
            if start is not None:
                if self._auto_ack:
                    freed = self._state.finish(self._ring, start, self._row,
                                               self._finishable(start, None))
                given = self._state.give_back(self._ring, start, self._row, None)
            self._state.remove_member(self._row)
            self._pending, self._out, self._parked, self._surplus = [], [], None, None
        finally:
            self._claims.release()
        self._after_finish(freed)
        _group.wake(self._ring.data, given)

    # -- receiving, step by step --------------------------------------------------------

    def _park(self, deadline: float | None, want: int, raw: bool) -> None:
        """Leave between 1 and `want` events, claimed and decoded, in `_parked`."""
        if self._closed or self.inherited:
            self._check_usable()
        if not (self._lock.acquire(blocking=False) or acquire_by(self._lock, deadline)):
            raise Timeout(f"another thread is receiving from {self._what()}")
        try:
            self._await_hand_over(deadline)
            if self._closed:
                self._check_usable()
            if self._suspect:
                self._reconcile()
            if self._parked is not None or self._surplus is not None:
                self._hand_out_leftovers(want)
                self._handing = threading.get_ident()
                return
            self._suspect = True
            start = self._start_seq()
            if self._pending and start is not None:
                self._finish_handed_out(start)
            else:
                start = self._claim_or_wait(want, deadline)
            self._decode(start, want, raw)
            self._suspect = False
            self._handing = threading.get_ident()
        finally:
            self._lock.release()

    def _hand_out_leftovers(self, want: int) -> None:
        parked = self._parked
        if parked is None:
            parked, self._surplus = self._surplus, None
            assert parked is not None
        head, rest = parked.split(want)
        if rest is not None:
            behind = self._surplus if parked is self._parked else None
            if behind is not None:
                rest = _Parcel(rest.offsets + behind.offsets, rest.values + behind.values,
                               None)
            self._surplus = rest
        self._parked = head

    def _start_seq(self) -> int | None:
        if self._start is None and self._ring.adopted:
            self._start = self._ring.start_seq
        return self._start

    def _finishable(self, start: int, through: int | None) -> list[int]:
        """Offsets handed out and not finished (none still parked), up to event `through`."""
        out = self._out
        if not out:
            return []
        if self._parked is None and self._surplus is None and through is None:
            return out[:]  # the usual case, on every recv
        held = set()
        for parcel in (self._parked, self._surplus):
            if parcel is not None:
                held.update(parcel.offsets)
        return [o for o in out if o not in held
                and (through is None or start + o <= through)]

    def _finish_handed_out(self, start: int) -> None:
        if not self._auto_ack:
            return
        done = self._finishable(start, None)
        if not done:
            return
        with self._claims.held(None, self._what()):
            freed = self._state.finish(self._ring, start, self._row, done)
            finished = set(done)
            self._out = [o for o in self._out if o not in finished]
        self._after_finish(freed)

    def _claim_or_wait(self, want: int, deadline: float | None) -> int:
        """Claim events into `_pending`, waiting for some; the ring's start."""
        woke = False
        check_life = False  # the emitter's lock is probed only after a slice without news
        while True:
            if self._closing:
                raise Closed(f"this subscription to {self._what()} was closed")
            start = self._start_seq()
            if start is not None and self._claim(start, want, woke, deadline):
                return start
            if self._end is not None:
                self._raise_end()
            end = self._emitter_gone(check_life)
            if end is not None and (start is None or self._drained(start, deadline)):
                self._end = end
                self._raise_end()
            if check_life and expired(deadline):
                raise Timeout(f"no event on {self._what()} within the timeout")
            # No spell of yielding first (`_wait.SPIN`): it pays off for a lone reader
            # racing its emitter, but members that spin take the cores from the emitter
            # and from each other, and one token wakes one member anyway.
            woke = self._sleep(start, deadline)
            check_life = not woke
            if not woke:
                self._next_upkeep = 0.0  # a slice without news: look for the dead

    def _sleep(self, start: int | None, deadline: float | None) -> bool:
        """Sleep on `data` for a slice, by the ring's doorbell rules (see `_ring`): raise
        the sleeping flag with a number no other wait uses (the members share the flag;
        the emitter posts once per number it sees), look once more, then sleep. True if
        there is news: a token, or events found on that last look."""
        ring = self._ring
        number = random.getrandbits(31) + 1
        ring.sleeping[SUB_SLEEPING] = number
        try:
            fence(ring.data)  # the flag before the look
            if start is not None and self._unclaimed(start):
                return True
            return self._waiter.sleep(ring.data, slice_until(deadline))
        finally:
            if ring.sleeping[SUB_SLEEPING] == number:  # another member may sleep on it now
                ring.sleeping[SUB_SLEEPING] = 0

    def _unclaimed(self, start: int) -> bool:
        return self._control.words[COMMITTED_WORD] - start > self._state.claimed

    def _claim(self, start: int, want: int, woke: bool, deadline: float | None) -> bool:
        """Finish what is due and claim up to `want` events, in one hold of the claims
        lock; whether any were claimed. (The path of every recv: written out flat.)"""
        done = self._finishable(start, None) if self._auto_ack else None
        committed = self._control.words[COMMITTED_WORD]
        state, ring, claims = self._state, self._ring, self._claims
        freed = given = 0
        claimed: list[int] = []
        try:
            if not claims.acquire(None if deadline is None else _lock_deadline(deadline)):
                raise Timeout(f"the claims lock of {self._what()} stayed taken (is a member "
                              "stopped, SIGSTOP?)")
            if done:
                freed = state.finish(ring, start, self._row, done)
                if len(self._out) == len(done):
                    self._out = []
                else:
                    finished = set(done)
                    self._out = [o for o in self._out if o not in finished]
            now = time.monotonic()
            if now >= self._next_upkeep:
                self._next_upkeep = now + _group.UPKEEP_EVERY
                given, _ = _group.requeue_dead(state, ring, start, self._member_path, self._row)
            claimed = self._pending = state.claim(ring, start, self._row, want, committed)
        finally:
            claims.release()
        if freed:
            self._after_finish(freed)
        if given:
            _group.wake(ring.data, given)
        if claimed and self._unclaimed(start):
            ring.data.release()  # more than this member took: wake another for the rest
        return bool(claimed)

    def _after_finish(self, freed: int) -> None:
        """Slots were freed: room for the emitter (`space` tokens, and its wake pipe)."""
        if freed:
            ring = self._ring
            fence(ring.space)  # `tail` before the emitter's flag (see `_ring`)
            sleeping = ring.sleeping[EMITTER_SLEEPING]
            if sleeping and sleeping != self._space_posted:
                ring.space.release()
                self._space_posted = sleeping
            if ring.flags[EMITTER_WAITING]:
                self._wake_emitter_loop()

    def _drained(self, start: int, deadline: float | None) -> bool:
        """After the bus ended, with nothing to claim: whether every event is finished
        or held by this member (else someone may still give some back)."""
        committed = self._control.committed
        given = 0
        with self._claims.held(_lock_deadline(deadline), self._what()):
            given, _ = _group.requeue_dead(self._state, self._ring, start,
                                           self._member_path, self._row)
            drained = (self._state.claimed >= committed - start
                       and not self._state.others_hold(self._ring, start, self._row))
        _group.wake(self._ring.data, given)
        return drained

    def _decode(self, start: int, want: int, raw: bool) -> None:
        """Decode up to `want` of `_pending` into `_parked` (an undecodable event alone)."""
        values: list[Any] = []
        offsets: list[int] = []
        error: Exception | None = None
        large = 0
        slot = self._ring.slot
        for offset in self._pending[:want]:
            if large >= BATCH_BYTES:
                break
            seq = start + offset
            kind, _, payload = slot(seq)
            try:
                if raw:
                    value: Any = self._raw(seq, kind, payload)
                elif kind == _ring.KIND_INLINE:
                    try:
                        value = pickle.loads(payload)
                    except BaseException:
                        value = _codec.decode(payload)  # says why, or was interrupted
                elif kind == _ring.KIND_BATCH:
                    raise ShmBusError(  # the emitter never batches into a queue's ring
                        f"{self._what()}: event {seq} came as a batch; use one shmbus "
                        "version in every process")
                else:
                    value = self._large.load(seq, kind == _ring.KIND_ARENA, payload)
                    large += _ring.large_length(payload)
            except DeserializationError as exc:
                if offsets:
                    break  # reported alone, by the next call
                offsets, error = [offset], exc
                break
            values.append(value)
            offsets.append(offset)
        taken = len(offsets)
        # Three stores, no call between: see "What is atomic under interruption".
        self._parked, self._out, self._pending = (
            _Parcel(offsets, values, error), self._out + offsets, self._pending[taken:])
        self._last_seq = start + offsets[-1]

    def _raw(self, seq: int, kind: int, payload: bytes) -> RawEvent:
        if kind == _ring.KIND_INLINE:
            return RawEvent(seq, payload, False)
        if kind == _ring.KIND_BATCH:
            raise ShmBusError(f"{self._what()}: event {seq} came as a batch; use one "
                              "shmbus version in every process")
        return RawEvent(seq, self._large.raw(kind == _ring.KIND_ARENA, payload), True)

    def _reconcile(self) -> None:
        """After an interrupted call: give back what this member holds in the segment
        but has no record of (see the module docstring)."""
        start = self._start_seq()
        if start is None:
            self._suspect = False
            return
        known = set(self._pending) | set(self._out)
        with self._claims.held(None, self._what()):
            held = self._state.held_by(self._ring, start, self._row)
            unknown = [o for o in held if o not in known]
            given = self._state.give_back(self._ring, start, self._row, unknown)
            mine = set(held)
            self._pending = [o for o in self._pending if o in mine]
            self._suspect = False
        _group.wake(self._ring.data, given)

    async def _arecv(self, receive: Callable[..., Any], timeout: float | None) -> Any:
        deadline = deadline_after(timeout)
        pause = 0.0005
        while True:
            try:
                return receive(timeout=0)
            except Timeout:
                if expired(deadline):
                    raise Timeout(f"no event on {self._what()} within the timeout") from None
            await asyncio.sleep(min(pause, slice_until(deadline)))
            pause = min(2 * pause, ASYNC_POLL_MAX)

    def _raise_end(self) -> None:
        if self._end is EndReason.EMITTER_DIED:
            raise EmitterDied(
                f"the emitter of bus {self._name!r} died; every event it finished "
                f"emitting has been taken from {self._what()}")
        raise Closed(f"bus {self._name!r} is closed and every event of {self._what()} "
                     "has been taken")

    def _no_pin(self, seq: int) -> None:
        """Members read large events only through copies: nothing is ever pinned (the
        ring's one `pinned` word could not say which member reads what)."""


def _lock_deadline(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline, time.monotonic() + LOCK_GRACE)


def unsubscribe(name: str, durable: str) -> None:
    """Remove durable subscription `durable` of bus `name`, and the events it holds, so
    that the emitter stops keeping them.

    Raises `BusNotFound`, `InvalidArgument` if the bus has no such durable subscription,
    and `DurableInUse` if a live process owns it (close it there: `unsubscribe()` on the
    subscription removes it too).
    """
    Registry().remove_durable(name, durable)


__all__ = ["DEFAULT_EXPIRE_AFTER", "QueueSubscription", "subscribe_queue", "unsubscribe"]
