"""Remote subscriptions: a bus's stream read back from NATS JetStream, on any host.

`shmbus.subscribe("nats://host:4222/NAME?durable=worker1")` returns a `RemoteSubscription`
with the interface of a local subscription (`recv`, `recv_many`, iteration, `close`,
context manager, `name`, `end_reason`), over the stream a bridge (`_bridge`) publishes
the bus to (`_wire` for the format, `_jetstream` for the stream).

## Once and in order

Acknowledgements are explicit and sent when an event is handed to the caller, never
before. Order survives failures because the subscription never trusts the order of
redeliveries: after a reconnect, on (re)attaching to a durable consumer, and whenever an
event's number is not the next one, it resets the consumer to its acknowledgement floor
(the server then redelivers, in stream order, everything not acknowledged) and drops what
it had prefetched. Anything it has already returned comes back with a number it has
passed, and is acknowledged and skipped. A jump that survives a reset is real: those
events never reached the stream, and `recv` raises `EventsLost` for them once, then goes
on.

## Threads

nats-py is asyncio; the interface is synchronous. Each subscription runs one event-loop
thread (`_loop`) that owns its connection and prefetches up to `capacity` messages into
a buffer; the caller's thread takes from that buffer and hands acknowledgements back to
the loop. Prefetched messages are unacknowledged, so a dead process loses none of them.

## Durable names

`?durable=NAME` in the URL (or `durable=` here) names the consumer; it outlives the
process, so a restarted subscriber resumes where it stopped, and the stream holds events
for it in the meantime (up to the stream's bounds, then the bridge blocks: remove an
abandoned one with `forget()`). Without a name the consumer is private to this
subscription: `close()` deletes it, and the server deletes it 30 s after its process died.

## Trust

Events cross the network as pickles, and unpickling runs code: whoever may publish to
`shmbus.<NAME>` on the server may run code in every remote subscriber. Give the
bridge's credentials alone publish rights on `shmbus.>` (NATS accounts and permissions),
and keep the server on a network you trust: a `nats://` name has no TLS options yet.
Credentials go in the URL (`nats://user:password@host:4222/NAME`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .._errors import (
    Closed,
    DeserializationError,
    EmitterDied,
    EventsLost,
    InvalidArgument,
    NatsError,
    ShmBusError,
    Timeout,
    shown,
)
from .._subscription import EndReason
from ._jetstream import (
    CONNECT_TIMEOUT,
    RECONNECT_WAIT,
    connect,
    ensure_stream,
    require_jetstream,
    reset_consumer,
)
from ._loop import CALL_TIMEOUT, LoopThread
from ._wire import Envelope, RemoteAddress, decode_body, read_envelope

log = logging.getLogger("shmbus.nats")

DEFAULT_CAPACITY = 256
ANONYMOUS_TTL = 30.0
_ACK_WAIT = 3600.0  # redelivery is driven by resets, never by this timer
_FETCH_SLICE = 1.0


@dataclass
class _Outcome:
    """An event, or the error that stands in its place, ready to hand to the caller."""

    value: Any
    error: ShmBusError | None
    position: tuple[str, int]
    msg: Msg | None
    ends: EndReason | None = None


_open_remote: "weakref.WeakSet[RemoteSubscription]" = weakref.WeakSet()


def subscribe_remote(name: str, *, capacity: int | None = None,
                     durable: str | None = None, wait: float = 0.0) -> "RemoteSubscription":
    """Subscribe to a bus bridged to NATS JetStream: `nats://HOST:PORT/NAME[?durable=D]`.

    `capacity` is how many events are fetched ahead of the caller (default 256).
    Raises `NatsUnavailable` if no server answers, `NatsError` if it cannot serve.
    """
    address = RemoteAddress.parse(name, durable)
    if capacity is None:
        capacity = DEFAULT_CAPACITY
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidArgument(f"capacity must be an int >= 1, got {shown(capacity)}")
    return RemoteSubscription._open(address, capacity)


class RemoteSubscription:
    """A subscriber's end of a bridged bus: `recv()` events, or iterate until it ends."""

    def __init__(self) -> None:
        raise TypeError("use shmbus.subscribe('nats://HOST:PORT/NAME')")

    @classmethod
    def _open(cls, address: RemoteAddress, capacity: int) -> "RemoteSubscription":
        self = object.__new__(cls)
        self._init(address, capacity)
        try:
            self._runner.call(self._attach(), timeout=CONNECT_TIMEOUT * 3 + CALL_TIMEOUT)
        except BaseException:
            self._closed = True
            try:
                self._runner.call(self._disconnect())
            finally:
                self._runner.stop()
            raise
        _open_remote.add(self)
        return self

    def _init(self, address: RemoteAddress, capacity: int) -> None:
        self._address = address
        self._capacity = capacity
        self._consumer = address.durable or f"shmbus_{secrets.token_hex(8)}"
        self._pid = os.getpid()
        self._buffer: deque[Msg] = deque()
        self._cond = threading.Condition()
        self._recv_lock = threading.RLock()
        self._parked: list[_Outcome] = []
        self._last: tuple[str, int] | None = None
        self._suspect: tuple[str, int] | None = None
        self._end: EndReason | None = None
        self._fatal: ShmBusError | None = None
        self._acks: list[Msg] = []
        self._acks_scheduled = False
        self._prefetch_waiting = False
        self._closing = False
        self._closed = False
        self._nc: NatsClient | None = None
        self._psub: Any = None
        self._prefetcher: asyncio.Task[None] | None = None
        self._batch = capacity
        self._room = asyncio.Event()
        self._redelivering = asyncio.Lock()
        self._runner = LoopThread(f"shmbus-remote-{address.bus}")

    # -- public -----------------------------------------------------------------------

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
        return self._capacity

    @property
    def end_reason(self) -> EndReason | None:
        """None while the stream may still deliver; else why it ended."""
        return self._end

    @property
    def closed(self) -> bool:
        return self._closed

    def recv(self, *, timeout: float | None = None) -> Any:
        """The next event, waiting for it as long as `timeout` allows (None: forever).

        Raises `Timeout` if none arrived in time, `Closed` once the bus was closed and
        every event was received (`EmitterDied` if its emitter died), `EventsLost` for
        events that will never arrive, and `DeserializationError` for an event that
        cannot be unpickled here; after those two the next call goes on.
        """
        return self._take(1, timeout)[0]

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """The next events, at least one and at most `max_n`: those ready now.

        Waits as `recv` does for the first event, never for more; ends and errors as
        `recv`, an error never inside a list.
        """
        if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
            raise InvalidArgument(f"max_n must be an int >= 1, got {shown(max_n)}")
        return self._take(max_n, timeout)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self.recv()
        except Closed:
            raise StopIteration from None

    def close(self) -> None:
        """Flush acknowledgements and disconnect; delete the consumer if it has no name.

        Idempotent. A `recv` blocked in another thread raises `Closed` within 0.1 s.
        """
        self._shut(forget=self._address.durable is None)

    def forget(self) -> None:
        """Close, and delete the durable consumer: the stream stops keeping events for it."""
        self._shut(forget=True)

    def __enter__(self) -> "RemoteSubscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<shmbus.nats.RemoteSubscription {self.name!r} at {self._last}>"

    # -- handing events to the caller ---------------------------------------------------

    def _take(self, max_n: int, timeout: float | None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_usable()
        if not self._recv_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise Timeout(f"another thread is receiving from {self.name!r}")
        try:
            while len(self._parked) < max_n:
                if not self._parked:
                    self._park_next(deadline)
                    continue
                if self._parked[-1].error is not None:
                    break
                try:
                    self._park_next(time.monotonic())  # only what is ready now
                except Timeout:
                    break
            # No call may stand between taking parked outcomes and handing them over: an
            # interruption there would drop events that are already acknowledged.
            first = self._parked[0]
            if first.error is not None:
                del self._parked[0]
                raise first.error
            count = 1
            while count < min(max_n, len(self._parked)) and self._parked[count].error is None:
                count += 1
            values = [outcome.value for outcome in self._parked[:count]]
            del self._parked[:count]
            return values
        finally:
            self._recv_lock.release()

    def _park_next(self, deadline: float | None) -> None:
        """Append the next outcome, acknowledged, to `self._parked`."""
        while True:
            self._finish_parking()
            if self._end is not None:
                self._park_end(self._end)
                return
            msg = self._wait_for_message(deadline)
            envelope = read_envelope(msg.headers)
            if envelope is None:
                self._consume(msg)  # not a bridge's message: not for us
                continue
            outcome = self._judge(msg, envelope)
            if outcome is None:
                continue
            self._parked.append(outcome)  # the commit point
            self._finish_parking()
            return

    def _finish_parking(self) -> None:
        # Idempotent: completes what an interrupted `_park_next` began after its commit.
        if not self._parked:
            return
        newest = self._parked[-1]
        self._last = newest.position
        if newest.ends is not None:
            self._end = newest.ends
        if newest.msg is not None:
            self._consume(newest.msg)  # acknowledging twice is harmless; never is not
            newest.msg = None

    def _judge(self, msg: Msg, envelope: Envelope) -> _Outcome | None:
        """The outcome `msg` stands for, or None if it was skipped (or must be re-read)."""
        token = envelope.bus_id
        if envelope.seq is None:
            assert envelope.end is not None
            return _Outcome(None, self._end_error(envelope.end),
                            (token, self._last_seq(token)), msg, ends=envelope.end)
        seq = envelope.seq
        last = self._last if self._last is not None and self._last[0] == token else None
        if last is not None and seq <= last[1]:
            self._consume(msg)  # a redelivery of something already handed over
            return None
        if last is not None and seq > last[1] + 1:
            if self._suspect != (token, seq):
                # Maybe only delivered out of order: ask again from the ack floor first.
                self._suspect = (token, seq)
                self._resync()
                return None
            lost = EventsLost(
                f"events {last[1] + 1} to {seq - 1} of bus {self._address.bus!r} never "
                "reached the stream (emitted while no bridge was subscribed, or held by a "
                "bridge that died alone); the next recv() goes on after them",
                last[1] + 1, seq - 1,
            )
            return _Outcome(None, lost, (token, seq - 1), None)
        self._suspect = None
        if envelope.lost is not None:
            error = EventsLost(
                f"event {seq} of bus {self._address.bus!r} could not be carried: "
                f"{envelope.lost}", seq, seq,
            )
            return _Outcome(None, error, (token, seq), msg)
        try:
            return _Outcome(decode_body(envelope, msg.data), None, (token, seq), msg)
        except DeserializationError as exc:
            return _Outcome(None, exc, (token, seq), msg)

    def _last_seq(self, token: str) -> int:
        if self._last is not None and self._last[0] == token:
            return self._last[1]
        return -1

    def _end_error(self, reason: EndReason) -> Closed:
        bus = self._address.bus
        if reason is EndReason.EMITTER_DIED:
            return EmitterDied(f"the emitter of bus {bus!r} died; every event the bridge "
                               "carried has been received")
        if reason is EndReason.UNSUBSCRIBED:
            return Closed(f"this remote subscription to {bus!r} is closed")
        return Closed(f"bus {bus!r} is closed and every event has been received")

    def _park_end(self, reason: EndReason) -> None:
        self._parked.append(_Outcome(None, self._end_error(reason), self._last or ("", -1),
                                     None, ends=reason))

    def _consume(self, msg: Msg) -> None:
        with self._cond:
            if self._buffer and self._buffer[0] is msg:
                self._buffer.popleft()
                self._wake_prefetcher()
        self._ack(msg)

    def _wait_for_message(self, deadline: float | None) -> Msg:
        with self._cond:
            while True:
                self._check_usable()
                if self._closing:
                    raise Closed(f"this remote subscription to {self.name!r} was closed")
                if self._buffer:
                    return self._buffer[0]
                if self._fatal is not None:
                    raise self._fatal
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"no event from {self.name!r} within the timeout")
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def _check_usable(self) -> None:
        if self._pid != os.getpid():
            raise ShmBusError(
                f"this remote subscription to {self.name!r} was inherited through fork; "
                "subscribe in the child instead"
            )
        if self._closed:
            raise Closed(f"this remote subscription to {self.name!r} is closed")

    # -- the loop thread's side -------------------------------------------------------

    def _ack(self, msg: Msg) -> None:
        self._acks.append(msg)
        if not self._acks_scheduled:
            self._acks_scheduled = True
            self._runner.loop.call_soon_threadsafe(self._send_acks)

    def _send_acks(self) -> None:
        self._acks_scheduled = False
        acks, self._acks = self._acks, []
        if acks and self._nc is not None:
            asyncio.ensure_future(self._publish_acks(self._nc, acks))

    @staticmethod
    async def _publish_acks(nc: NatsClient, acks: list[Msg]) -> None:
        try:
            for msg in acks:
                await nc.publish(msg.reply, Msg.Ack.Ack)
        except Exception as exc:  # lost acks mean redeliveries, which are skipped by number
            log.debug("acknowledgements not sent: %r", exc)

    def _wake_prefetcher(self) -> None:
        if self._prefetch_waiting:
            self._prefetch_waiting = False
            self._runner.loop.call_soon_threadsafe(self._room.set)

    async def _attach(self) -> None:
        address = self._address
        self._nc = await connect(address.servers, address.shown, name=f"shmbus {address.bus}",
                                 reconnected_cb=self._on_reconnect)
        js = self._nc.jetstream()
        await require_jetstream(js, address.shown)
        await ensure_stream(js, address.shown, address.bus, address.stream)
        try:
            info = await js.consumer_info(address.stream, self._consumer)
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(address.stream, self._consumer_config())
        else:
            wanted = 2 * self._capacity
            if 0 < (info.config.max_ack_pending or 0) < wanted:
                # A fetch larger than the consumer allows unacknowledged waits out its
                # whole timeout for messages the server will not send.
                info = await js.add_consumer(address.stream, info.config.evolve(
                    max_ack_pending=wanted, metadata=None))
            await self._reset_consumer()  # a previous process may have left deliveries
        limit = info.config.max_ack_pending or -1
        self._batch = self._capacity if limit < 0 else max(1, min(self._capacity, limit // 2))
        await self._start_prefetching()

    def _consumer_config(self) -> ConsumerConfig:
        anonymous = self._address.durable is None
        return ConsumerConfig(
            durable_name=self._consumer,
            description=f"shmbus remote subscription to {self._address.bus}",
            filter_subject=self._address.subject,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT,
            max_ack_pending=2 * self._capacity,
            inactive_threshold=ANONYMOUS_TTL if anonymous else None,
        )

    async def _reset_consumer(self) -> None:
        """Forget what was delivered and not acknowledged: it comes again, in order."""
        assert self._nc is not None
        await reset_consumer(self._nc, self._address.stream, self._consumer)

    async def _start_prefetching(self) -> None:
        assert self._nc is not None
        self._psub = await self._nc.jetstream().pull_subscribe_bind(
            self._consumer, stream=self._address.stream)
        self._prefetcher = asyncio.ensure_future(self._prefetch(self._psub))

    async def _stop_prefetching(self) -> None:
        task, self._prefetcher = self._prefetcher, None
        psub, self._psub = self._psub, None  # ends the loop even if a cancel is swallowed
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=2 * _FETCH_SLICE)
        if psub is not None:
            try:
                await psub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe: %r", exc)

    async def _prefetch(self, psub: Any) -> None:
        while psub is self._psub:
            with self._cond:
                room = min(self._batch, self._capacity - len(self._buffer))
                self._prefetch_waiting = room <= 0
                if self._prefetch_waiting:
                    self._room.clear()
            if room <= 0:
                await self._room.wait()
                continue
            try:
                msgs = await psub.fetch(room, timeout=_FETCH_SLICE)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.js.errors.NotFoundError as exc:
                self._fail(NatsError(
                    f"the consumer {self._consumer!r} of {self.name!r} is gone (deleted, or "
                    f"expired while this process was stopped): {exc!r}; subscribe again"))
                return
            except Exception as exc:  # disconnected: nats-py is reconnecting
                log.debug("fetch from %s: %r", self.name, exc)
                await asyncio.sleep(RECONNECT_WAIT)
                continue
            with self._cond:
                self._buffer.extend(msgs)
                self._cond.notify_all()

    def _fail(self, error: ShmBusError) -> None:
        with self._cond:
            self._fatal = error
            self._cond.notify_all()

    async def _on_reconnect(self) -> None:
        # Deliveries in flight when the connection dropped are lost; what the server sends
        # next may skip them, so start again from the ack floor.
        if not self._closing:
            asyncio.ensure_future(self._redeliver())

    async def _redeliver(self) -> None:
        async with self._redelivering:  # a reconnect and a suspicious gap may coincide
            await self._stop_prefetching()
            with self._cond:
                self._buffer.clear()
            while not self._closing:
                try:
                    await self._reset_consumer()
                    break
                except nats.js.errors.NotFoundError as exc:
                    self._fail(NatsError(f"the consumer {self._consumer!r} of {self.name!r} "
                                         f"is gone: {exc!r}; subscribe again"))
                    return
                except Exception as exc:
                    log.debug("reset consumer %s: %r", self._consumer, exc)
                    await asyncio.sleep(RECONNECT_WAIT)
            if not self._closing:
                await self._start_prefetching()

    def _resync(self) -> None:
        try:
            self._runner.call(self._redeliver())
        except (TimeoutError, asyncio.TimeoutError):
            pass  # the next message read decides again

    # -- closing ------------------------------------------------------------------------

    def _shut(self, forget: bool) -> None:
        if self._closed:
            return
        if self._pid != os.getpid():
            self._closed = True  # inherited through fork: the parent owns the connection
            return
        self._closing = True
        with self._recv_lock:
            if self._closed:
                return
            if self._end is None:
                self._end = EndReason.UNSUBSCRIBED
            try:
                self._runner.call(self._disconnect(forget=forget))
            except Exception as exc:
                log.debug("closing %s: %r", self.name, exc)
            self._runner.stop()
            self._closed = True
            _open_remote.discard(self)

    async def _disconnect(self, forget: bool = False) -> None:
        await self._stop_prefetching()
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            acks, self._acks = self._acks, []
            await self._publish_acks(nc, acks)
            await nc.flush(timeout=2)
            if forget:
                await nc.jetstream().delete_consumer(self._address.stream, self._consumer)
        except Exception as exc:
            log.debug("closing %s: %r", self.name, exc)
        await nc.close()


@atexit.register
def _close_open_remote_subscriptions() -> None:
    for sub in list(_open_remote):
        try:
            sub.close()
        except Exception:
            pass
