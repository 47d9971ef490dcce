"""Remote subscriptions: a bus's stream read back from NATS JetStream, on any host.

`shmbus.subscribe("nats://host:4222/NAME?durable=worker1")` returns a `RemoteSubscription`:
a `shmbus.Subscription` like a local one (`recv`, `recv_many`, `arecv`, `arecv_many`,
`for`, `async for`, `with`, `async with`, `close`, `end_reason`), over the stream a
bridge (`_bridge`) publishes the bus to.

## Shape

Three parts, one concept each: the `Feed` (`_feed`) owns the connection, the durable
pull consumer and the messages fetched ahead, on its own event-loop thread; the `Cursor`
(`_order`) judges each message by its number; this class hands the outcomes to the
caller, from any thread or event loop, and owns the lifecycle (`_handle.Handle`: an
idempotent `close`, fork ownership, the exit hook). Iteration and `end_reason` are every
subscription's (`_receiver.Receiver`).

Taking is never waiting. Under the subscription's lock, a call takes what the feed has
ready (judging, parking and acknowledging it) and returns at once, with events or with
nothing; only then, outside the lock, does it wait for the change notice (`_notice`) that
the loop thread announces when messages arrive and `close()` when it begins. So a
thread in `recv` and a task in `arecv` wait the same way, without holding anything:
two threads receiving at once each take whole outcomes under the lock (never the same
one twice, never one dropped), and `close()` from any thread wakes every waiter, which
raises `Closed` at once, then waits only for a take under way (which never waits)
before it stops the loop thread.

## What is atomic under interruption and cancellation

An outcome (an event, or the error that stands in its place) is *parked* before
anything else happens to it, and acknowledged only when it is handed over: an
interruption leaves it parked for the next call, and a subscription closed before then
leaves it unacknowledged for the next subscriber of the same durable consumer (so an end
marker or lost-event marker seen ahead of the caller is never swallowed). `arecv` takes
synchronously and awaits only the change notice: cancelling it is exactly a timeout.

## Trust

Events cross the network as pickles, and unpickling runs code: whoever may publish to
`shmbus.<NAME>` on the server may run code in every remote subscriber. Give the
bridge's credentials alone publish rights on `shmbus.>` (NATS accounts and
permissions), and keep the server on a network you trust: a `nats://` name has no TLS
options yet. Credentials go in the URL, and no message or log ever shows the password.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .._errors import Closed, InvalidArgument, NatsUnavailable, Timeout, shown
from .._receiver import EndReason, Receiver, check_max_n
from .._wait import POLL_MAX_SLEEP, acquire_by, deadline_after, expired
from ._feed import Feed
from ._order import RESYNC, SKIP, Cursor, Outcome
from ._wire import RemoteAddress, read_envelope

DEFAULT_CAPACITY = 256



class _Busy:
    """Another thread is taking: look again shortly."""


_BUSY = _Busy()


def subscribe_remote(name: str, *, capacity: int | None = None,
                     durable: str | None = None, wait: float = 0.0) -> "RemoteSubscription":
    """Subscribe to a bus bridged to NATS JetStream: `nats://HOST:PORT/NAME[?durable=D]`.

    `capacity` is how many events are fetched ahead of the caller (default 256).
    `wait` is how long to wait for a NATS server to answer (`math.inf`: as long as it
    takes), so that subscribers may start before the server and its bridge; the bus's
    stream is created if no bridge has made it yet, so a subscriber started first gets
    every event the bridge later publishes. Raises `NatsUnavailable` if no server
    answered in time, `NatsError` if one answers but cannot serve the stream.
    """
    address = RemoteAddress.parse(name, durable)
    if capacity is None:
        capacity = DEFAULT_CAPACITY
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidArgument(f"capacity must be an int >= 1, got {shown(capacity)}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise InvalidArgument(f"wait must be a number of seconds >= 0, got {shown(wait)}")
    try:
        return RemoteSubscription._open(address, capacity, deadline_after(wait))
    except NatsUnavailable as exc:
        if not wait:
            raise
        raise NatsUnavailable(f"{exc} (waited {wait:g} s for it)") from exc.__cause__


class RemoteSubscription(Receiver):
    """A subscriber's end of a bridged bus: `recv()` events, or iterate until it ends."""

    _kind = "remote subscription"

    def __init__(self) -> None:
        raise TypeError("use shmbus.subscribe('nats://HOST:PORT/NAME')")

    @classmethod
    def _open(cls, address: RemoteAddress, capacity: int,
              deadline: float | None) -> "RemoteSubscription":
        self = object.__new__(cls)
        self._init(address, capacity)
        try:
            self._feed.open(deadline)
        except BaseException:
            self._feed.close(forget=self._forget)
            raise
        self._opened()
        return self

    def _init(self, address: RemoteAddress, capacity: int) -> None:
        self._address = address
        self._feed = Feed(address, capacity)
        self._cursor = Cursor(address.bus)
        self._parked: list[Outcome] = []
        self._lock = threading.RLock()  # re-entrant: see `_wait.acquire_by`
        self._close_lock = threading.Lock()
        self._closing = threading.Event()
        self._end: EndReason | None = None
        self._forget = address.durable is None

    # -- public -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The `nats://` name subscribed to, without its password if it had one."""
        return self._address.shown

    @property
    def durable(self) -> str | None:
        """The consumer's name when it outlives this subscription, else None."""
        return self._address.durable

    @property
    def capacity(self) -> int:
        return self._feed.capacity

    def recv(self, *, timeout: float | None = None) -> Any:
        """The next event, waiting for it as long as `timeout` allows (None: forever).

        Raises `Timeout` if none arrived in time, `Closed` once the bus was closed and
        every event was received (`EmitterDied` if its emitter died), `EventsLost` for
        events that will never arrive, and `DeserializationError` for an event that
        cannot be unpickled here; after those two the next call goes on.
        """
        return self._receive(1, deadline_after(timeout))[0]

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """The next events, at least one and at most `max_n`: those ready now.

        Waits as `recv` does for the first event, never for more; ends and errors as
        `recv`, an error never inside a list.
        """
        check_max_n(max_n)
        return self._receive(max_n, deadline_after(timeout))

    async def arecv(self, *, timeout: float | None = None) -> Any:
        """`recv` for asyncio: the event loop runs while this waits.

        Waiting costs no thread. Cancelling the awaiting task is like a timeout: nothing
        is consumed, the next call returns the next event.
        """
        return (await self._areceive(1, deadline_after(timeout)))[0]

    async def arecv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """`recv_many` for asyncio, waiting as `arecv` does."""
        check_max_n(max_n)
        return await self._areceive(max_n, deadline_after(timeout))

    def close(self) -> None:
        """Flush acknowledgements and disconnect; delete the consumer if it has no name.

        Idempotent, and safe from any thread: a `recv` or `arecv` waiting elsewhere
        raises `Closed` at once.
        """
        super().close()

    def forget(self) -> None:
        """Close, and delete the durable consumer: the stream stops keeping events for it."""
        self._forget = True
        self.close()

    def __repr__(self) -> str:
        return f"<shmbus.nats.RemoteSubscription {self.name!r} at {self._cursor.last}>"

    # -- waiting ------------------------------------------------------------------------

    def _receive(self, max_n: int, deadline: float | None) -> list[Any]:
        notice = self._feed.notice
        while True:
            values = self._take_now(max_n, deadline)
            if values is not None:
                return values
            ticket = notice.listen()  # then look again: a change from now on is not missed
            try:
                values = self._take_now(max_n, deadline)
                if values is not None:
                    return values
                self._check_deadline(deadline)
                notice.wait(ticket, deadline)
            finally:
                notice.forget(ticket)

    async def _areceive(self, max_n: int, deadline: float | None) -> list[Any]:
        # Taking never waits, so cancellation can land only at an `await`: an outcome
        # is either handed over or left where it was.
        notice = self._feed.notice
        while True:
            ticket = notice.listen()
            try:
                values = self._try_take_now(max_n)
                if isinstance(values, list):
                    return values
                self._check_deadline(deadline)
                if values is _BUSY:
                    await asyncio.sleep(POLL_MAX_SLEEP)
                else:
                    await notice.await_(ticket, deadline)
            finally:
                notice.forget(ticket)

    def _check_deadline(self, deadline: float | None) -> None:
        if expired(deadline):
            raise Timeout(f"no event from {self.name!r} within the timeout")

    # -- taking -------------------------------------------------------------------------

    def _take_now(self, max_n: int, deadline: float | None) -> list[Any] | None:
        """What `recv_many(max_n)` returns if something is ready now, else None."""
        self._check_open()
        if not acquire_by(self._lock, deadline):
            raise Timeout(f"another thread is receiving from {self.name!r}")
        try:
            return self._hand_over(max_n)
        finally:
            self._lock.release()

    def _try_take_now(self, max_n: int) -> list[Any] | None | _Busy:
        """As `_take_now`, or `_BUSY` at once if another thread is taking."""
        self._check_open()
        if not self._lock.acquire(blocking=False):
            return _BUSY
        try:
            return self._hand_over(max_n)
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        self._check_usable()
        if self._closing.is_set():
            raise Closed(f"this remote subscription to {self.name!r} was closed")

    def _hand_over(self, max_n: int) -> list[Any] | None:
        # Under the lock, and checked again there: close() may have begun meanwhile.
        self._check_open()
        self._park_ready(max_n)
        parked = self._parked
        if not parked:
            return None
        # Acknowledged before handed over: an interruption in between leaves them parked
        # (handed over by the next call), never handed over and unacknowledged.
        first = parked[0]
        if first.error is not None:
            self._feed.ack([first.msg])
            if first.ends is not None:
                self._end = first.ends
            del parked[0]
            raise first.error
        count = 1
        while count < min(max_n, len(parked)) and parked[count].error is None:
            count += 1
        self._feed.ack([outcome.msg for outcome in parked[:count]])
        # No call may stand between taking parked outcomes and handing them over.
        values = [outcome.value for outcome in parked[:count]]
        del parked[:count]
        return values

    def _park_ready(self, max_n: int) -> None:
        """Park outcomes that are ready now, up to `max_n` and the first error."""
        parked = self._parked
        while True:
            self._settle()
            if len(parked) >= max_n or (parked and parked[-1].error is not None):
                return
            outcome = self._next_outcome()
            if outcome is None:
                return
            parked.append(outcome)  # the commit point: `_settle` finishes what follows

    def _settle(self) -> None:
        # Idempotent: completes what an interrupted `_park_ready` began after its commit.
        if self._parked:
            newest = self._parked[-1]
            self._cursor.advance(newest)
            if newest.consumes and newest.msg is not None:
                self._feed.discard(newest.msg)

    def _next_outcome(self) -> Outcome | None:
        """The next outcome if the feed has it now; None if not (yet)."""
        while True:
            if self._cursor.ended is not None:
                return self._cursor.end_again()
            msg = self._feed.first()
            if msg is None:
                return None
            envelope = read_envelope(msg.headers)
            verdict = SKIP if envelope is None else self._cursor.judge(msg, envelope)
            if verdict is SKIP:  # not a bridge's, or already handed over
                self._feed.discard(msg)
                self._feed.ack([msg])
            elif verdict is RESYNC:
                self._feed.resync()
                return None
            else:
                assert isinstance(verdict, Outcome)
                return verdict

    # -- closing ------------------------------------------------------------------------

    def _close(self) -> None:
        with self._close_lock:  # a second close() waits for the first to finish
            if not self._feed.running:
                return
            self._closing.set()
            self._feed.shut_out()  # every waiter wakes, and raises Closed
            with self._lock:  # a take under way ends first; it never waits in there
                if self._end is None:
                    self._end = EndReason.UNSUBSCRIBED
            self._feed.close(forget=self._forget)

    def _what(self) -> str:
        return repr(self.name)

