"""The feed: a remote subscription's connection, consumer and prefetched messages.

## Shape

A `Feed` runs on its own event-loop thread (`_loop`): it connects, attaches to the
subscription's durable pull consumer, and keeps up to `capacity` messages fetched ahead
in a buffer. The caller's threads look at the buffer's first message (`first`), drop it
once judged (`discard`), queue acknowledgements (`ack`) and ask for a resync; the loop
thread fills the buffer, sends acknowledgements in batches, and redelivers after a
reconnect. Every piece of state both sides touch (the buffer, its epoch, the queued
acknowledgements, a fatal error, the closing flag) is touched under `_lock`, and each
change a waiter may be waiting for announces it (`_notice`). Everything else
(the connection, the fetching task) belongs to the loop thread alone.

## Acknowledged when handed over, redelivered from the floor

Acknowledgements are explicit and sent when an event is handed to the caller, never
before: prefetched messages are unacknowledged, so a dead process loses none of them.
The consumer's `ack_wait` is an hour: redelivery is driven by resets, not by that timer,
which would send a message again late and out of order, long after the loss that
called for it. A reset
(`_jetstream.reset_consumer`) makes the server send again, at once and in stream order,
everything after the acknowledgement floor; the feed resets on attaching (a previous
process may have left deliveries), after a reconnect (what was in flight is lost), and
when the subscription sees a jump in the numbers (`_order`). A reset empties the buffer
and starts a new *epoch*: a fetch that was under way when it happened finds its epoch
gone and drops what it got, which comes again.

## Durable names

A named consumer outlives the process, so a restarted subscriber resumes where it
stopped, and the stream holds events for it meanwhile (up to its bounds, then the
bridge blocks: `forget()` removes an abandoned one). A nameless consumer is private to
one subscription: `close()` deletes it, and the server 30 s after its process died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from .._errors import Closed, NatsError, NatsUnavailable, ShmBusError
from ._notice import ChangeNotice
from ._jetstream import (
    CONNECT_TIMEOUT,
    RECONNECT_WAIT,
    connect,
    ensure_stream,
    require_jetstream,
    reset_consumer,
)
from ._loop import CALL_TIMEOUT, LoopThread
from ._wire import RemoteAddress

log = logging.getLogger("shmbus.nats")

ANONYMOUS_TTL = 30.0
_ACK_WAIT = 3600.0
_FETCH_SLICE = 1.0
_RETRY_MAX = 0.5
_ATTACH_TIMEOUT = CONNECT_TIMEOUT * 3 + CALL_TIMEOUT


class Feed:
    """The loop thread's half of a remote subscription (see the module docstring)."""

    def __init__(self, address: RemoteAddress, capacity: int) -> None:
        self.address = address
        self.capacity = capacity
        self.consumer = address.durable or f"shmbus_{secrets.token_hex(8)}"
        self.notice = ChangeNotice()
        self._lock = threading.Lock()
        self._buffer: deque[Msg] = deque()
        self._epoch = 0
        self._acks: list[Msg] = []
        self._acks_scheduled = False
        self._fetcher_waiting = False
        self._fatal: ShmBusError | None = None
        self._closing = False
        # The loop thread's alone (asyncio's primitives bind to a loop when first used):
        self._nc: NatsClient | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._psub: Any = None
        self._batch = capacity
        self._room = asyncio.Event()
        self._redelivering = asyncio.Lock()
        self._runner = LoopThread(f"shmbus-remote-{address.bus}")

    # -- opening and closing, from the caller's thread --------------------------------------

    def open(self, deadline: float | None) -> None:
        """Connect and attach, retrying until `deadline` while no server answers."""
        pause = 0.05
        while True:
            try:
                self._runner.call(self._attach(), timeout=_ATTACH_TIMEOUT)
                return
            except concurrent.futures.TimeoutError:
                raise NatsError(f"the NATS server at {self.address.shown} did not let "
                                f"{self.address.bus!r} be subscribed to within "
                                f"{_ATTACH_TIMEOUT:g} s") from None
            except NatsUnavailable as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                log.debug("waiting for %s: %s", self.address.shown, exc)
            time.sleep(pause if deadline is None else
                       max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(2 * pause, _RETRY_MAX)

    def shut_out(self) -> None:
        """Refuse every further look (`first` raises `Closed`) and wake every waiter."""
        with self._lock:
            self._closing = True
        self.notice.announce()

    def close(self, forget: bool) -> None:
        """Send what is acknowledged, disconnect (deleting the consumer if `forget`) and
        stop the loop thread. Idempotent; bounded even if the server hangs."""
        self.shut_out()
        if self._runner.alive:
            try:
                self._runner.call(self._disconnect(forget))
            except Exception as exc:
                log.debug("closing %s: %r", self.address.shown, exc)
        self._runner.stop()

    @property
    def running(self) -> bool:
        """Whether the loop thread still runs."""
        return self._runner.alive

    # -- the caller's side ------------------------------------------------------------------

    def first(self) -> Msg | None:
        """The first message fetched and not yet discarded, or None if none is here yet.

        Raises `Closed` once shut out, and the error that stopped the feed once it has
        nothing left to give.
        """
        with self._lock:
            if self._closing:
                raise Closed(f"this remote subscription to {self.address.shown!r} was closed")
            if self._buffer:
                return self._buffer[0]
            if self._fatal is not None:
                raise self._fatal
            return None

    def discard(self, msg: Msg) -> None:
        """Drop `msg` if it is still first: it has been judged. Idempotent."""
        with self._lock:
            if not self._buffer or self._buffer[0] is not msg:
                return
            self._buffer.popleft()
            wake = self._fetcher_waiting
            self._fetcher_waiting = False
        if wake:
            self._runner.call_soon(self._room.set)

    def ack(self, msgs: Iterable[Msg | None]) -> None:
        """Acknowledge `msgs` (None: nothing to); sent in a batch by the loop thread."""
        with self._lock:
            self._acks.extend(msg for msg in msgs if msg is not None)
            if not self._acks or self._acks_scheduled:
                return
            self._acks_scheduled = True
        self._runner.call_soon(self._send_acks)

    def resync(self) -> None:
        """Drop what is fetched and have the server send everything unacknowledged again,
        in stream order. Returns at once; the messages come as they come."""
        self._new_epoch()
        try:
            self._runner.submit(self._redeliver())
        except RuntimeError:  # the loop is gone: closing
            pass

    # -- the loop thread's side -------------------------------------------------------------

    def _current_epoch(self) -> int:
        with self._lock:
            return self._epoch

    def _is_closing(self) -> bool:
        with self._lock:
            return self._closing

    def _new_epoch(self) -> int:
        with self._lock:
            self._epoch += 1
            self._buffer.clear()
            return self._epoch

    def _send_acks(self) -> None:
        with self._lock:
            self._acks_scheduled = False
            acks, self._acks = self._acks, []
        if acks and self._nc is not None:
            asyncio.ensure_future(_publish_acks(self._nc, acks))

    async def _attach(self) -> None:
        address = self.address
        nc = self._nc = await connect(address.servers, address.shown,
                                      name=f"shmbus {address.bus}",
                                      reconnected_cb=self._on_reconnect)
        try:
            js = nc.jetstream()
            await require_jetstream(js, address.shown)
            await ensure_stream(js, address.shown, address.bus, address.stream)
            info = await self._consumer_info(js)
        except BaseException:
            self._nc = None
            await nc.close()
            raise
        limit = info.config.max_ack_pending or -1
        self._batch = self.capacity if limit < 0 else max(1, min(self.capacity, limit // 2))
        await self._start_fetching(self._current_epoch())

    async def _consumer_info(self, js: Any) -> ConsumerInfo:
        stream = self.address.stream
        try:
            info = await js.consumer_info(stream, self.consumer)
        except nats.js.errors.NotFoundError:
            created: ConsumerInfo = await js.add_consumer(stream, self._consumer_config())
            return created
        wanted = 2 * self.capacity
        if 0 < (info.config.max_ack_pending or 0) < wanted:
            # A fetch larger than the consumer allows unacknowledged waits out its whole
            # timeout for messages the server will not send.
            info = await js.add_consumer(stream, info.config.evolve(
                max_ack_pending=wanted, metadata=None))
        assert self._nc is not None
        await reset_consumer(self._nc, stream, self.consumer)  # a previous process's
        found: ConsumerInfo = info
        return found

    def _consumer_config(self) -> ConsumerConfig:
        anonymous = self.address.durable is None
        return ConsumerConfig(
            durable_name=self.consumer,
            description=f"shmbus remote subscription to {self.address.bus}",
            filter_subject=self.address.subject,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT,
            max_ack_pending=2 * self.capacity,
            inactive_threshold=ANONYMOUS_TTL if anonymous else None,
        )

    async def _start_fetching(self, epoch: int) -> None:
        assert self._nc is not None
        self._psub = await self._nc.jetstream().pull_subscribe_bind(
            self.consumer, stream=self.address.stream)
        self._fetcher = asyncio.ensure_future(self._fetch(self._psub, epoch))

    async def _stop_fetching(self) -> None:
        task, self._fetcher = self._fetcher, None
        psub, self._psub = self._psub, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=2 * _FETCH_SLICE)
        if psub is not None:
            try:
                await psub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe: %r", exc)

    async def _fetch(self, psub: Any, epoch: int) -> None:
        """Keep the buffer filled, while this epoch lasts."""
        while True:
            room = self._room_for(epoch)
            if room is None:
                return
            if room <= 0:
                await self._room.wait()
                continue
            try:
                msgs = await psub.fetch(room, timeout=_FETCH_SLICE)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.js.errors.NotFoundError as exc:
                self._fail(NatsError(
                    f"the consumer {self.consumer!r} of {self.address.shown!r} is gone "
                    f"(deleted, or expired while this process was stopped): {exc!r}; "
                    "subscribe again"))
                return
            except Exception as exc:  # disconnected: nats-py is reconnecting
                log.debug("fetch from %s: %r", self.address.shown, exc)
                await asyncio.sleep(RECONNECT_WAIT)
                continue
            with self._lock:
                if self._epoch != epoch:
                    return  # reset meanwhile: these come again
                self._buffer.extend(msgs)
            self.notice.announce()

    def _room_for(self, epoch: int) -> int | None:
        """How many messages to fetch now; None once this epoch is over."""
        with self._lock:
            if self._epoch != epoch or self._closing:
                return None
            room = min(self._batch, self.capacity - len(self._buffer))
            self._fetcher_waiting = room <= 0
            if self._fetcher_waiting:
                self._room.clear()
            return room

    def _fail(self, error: ShmBusError) -> None:
        with self._lock:
            self._fatal = error
        self.notice.announce()

    async def _on_reconnect(self) -> None:
        # Deliveries in flight when the connection dropped are lost; what the server sends
        # next may skip them, so start again from the acknowledgement floor.
        self.resync()

    async def _redeliver(self) -> None:
        async with self._redelivering:  # a reconnect and a jump may coincide
            await self._stop_fetching()
            epoch = self._new_epoch()  # what came since the caller's resync goes too
            while not self._is_closing():
                try:
                    assert self._nc is not None
                    await reset_consumer(self._nc, self.address.stream, self.consumer)
                    break
                except nats.js.errors.NotFoundError as exc:
                    self._fail(NatsError(f"the consumer {self.consumer!r} of "
                                         f"{self.address.shown!r} is gone: {exc!r}; "
                                         "subscribe again"))
                    return
                except Exception as exc:
                    log.debug("reset consumer %s: %r", self.consumer, exc)
                    await asyncio.sleep(RECONNECT_WAIT)
            if not self._is_closing():
                await self._start_fetching(epoch)

    async def _disconnect(self, forget: bool) -> None:
        await self._stop_fetching()
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            with self._lock:
                acks, self._acks = self._acks, []
            await _publish_acks(nc, acks)
            await nc.flush(timeout=2)
            if forget:
                await nc.jetstream().delete_consumer(self.address.stream, self.consumer)
        except Exception as exc:
            log.debug("closing %s: %r", self.address.shown, exc)
        await nc.close()


async def _publish_acks(nc: NatsClient, acks: list[Msg]) -> None:
    try:
        for msg in acks:
            await nc.publish(msg.reply, Msg.Ack.Ack)
    except Exception as exc:  # lost acks mean redeliveries, which are skipped by number
        log.debug("acknowledgements not sent: %r", exc)

