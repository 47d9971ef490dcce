"""One bridge's work: read the bus, and publish it while leading, or keep up while standing by.

## Shape

A `Pump` loops: take what the bus has (`LocalSubscription.recv_raw`, on a worker thread:
it blocks), then, if it holds the stream's leadership, have the `Publisher` store it;
if not, keep what the leader has not stored yet. It talks to its `Bridge` only through
a `Status`: a stop request in, and how far it got out.

## Leadership and standby

A bridge is a subscriber like any other: it receives the events emitted after it
subscribed, and a bridge killed by SIGKILL takes with it what it had read from the bus
but not had stored, plus whatever is emitted until a new one subscribes. No restart can
recover those; the local bus keeps no events for subscribers that are gone. The
restarted bridge's events carry the bus's numbers, so remote subscribers see the jump
and raise `EventsLost` for exactly those events: the loss is reported, never silent.

So by default a bridge reads the bus through a durable subscription,
`bridge.<stream>` (see `shmbus.subscribe(name, durable=...)`): the bus keeps its ring
while no bridge runs, and the leader acknowledges each event only once the stream has
stored it. A bridge restarted after a SIGKILL takes the durable subscription over and
resumes at the first event the stream may lack; the publisher's probe and the message
ids make the overlap exact. The bridge's own `expire_after` (see `Bridge`) bounds how
long the bus keeps events for a bridge that never comes back.

For fast failover, run two on the same host: every bridge subscribes
and reads the whole bus, but only the holder of a `flock` on `bridge.<stream>.lock` in
the registry directory publishes; the kernel hands the lock to a standby the moment the
leader dies. The leader announces on core NATS how far the stream has stored, and a
standby keeps every event past that point (bounded: it reads no further ahead than its
limit, so it paces the emitter like any subscriber). On taking over it publishes what
it holds from the first event the stream lacks, which de-duplication and the
publisher's probe make exact. A standby is ready (`Status.ready`) once the leader has
stored everything before its first event: from then on either bridge may die.

## Why a lock file, not an election over NATS

Both bridges are on the bus's host (they must be: they read its shared memory), so the
kernel can decide, at once and without a network: a lock held by a dead process is
free. An election over NATS would need leases and timeouts, and would let two leaders
publish for as long as a partition lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .._errors import Closed, Timeout
from .._liveness import LifeLock
from .._member import QueueSubscription
from .._receiver import EndReason
from .._registry import Registry
from .._subscription import LocalSubscription
from ._publisher import WINDOW, Publisher
from ._wire import Message, end_message, event_message, subject_for

log = logging.getLogger("shmbus.bridge")

STOP_GRACE = 5.0
"""Seconds a stopping leader keeps trying to store what it already took from the bus."""
_TAKE_SLICE = 0.2
_HEARTBEAT = 0.25


class Status:
    """What a pump and its bridge share: a stop request, and how far the pump got."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.started = threading.Event()
        """Set once the pump reads the bus."""
        self.ready = threading.Event()
        """Set once events emitted from then on will reach the stream."""
        self.on_ready: Callable[[], None] | None = None
        self.published = 0
        """Events (and lost-event markers) the pump got stored, or found stored."""
        self.leading = False

    def mark_ready(self) -> None:
        if self.ready.is_set():
            return
        self.ready.set()
        if self.on_ready is not None:
            self.on_ready()


class Leadership:
    """The right to publish a stream from this host: an exclusive flock."""

    def __init__(self, stream: str) -> None:
        path = os.path.join(Registry().root, f"bridge.{stream}.lock")
        self._lock = LifeLock(path, os.O_RDWR | os.O_CREAT)

    def try_take(self) -> bool:
        try:
            fcntl.flock(self._lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        self._lock.release()


Reader = LocalSubscription | QueueSubscription


class Pump:
    """Reads the bus and, while it leads, publishes; while it stands by, keeps up.

    `take_durable` (None: the bridge is not durable) takes the bridge's durable
    subscription, or says None while another bridge owns it. A standby reads through a
    subscription of its own; once it leads, it takes the durable one over (the dead or
    stopped leader's: it holds everything not yet stored) and reads from there.
    """

    def __init__(self, bus: str, url: str, stream: str, nc: NatsClient,
                 js: JetStreamContext, sub: Reader, status: Status,
                 take_durable: "Callable[[], QueueSubscription | None] | None" = None
                 ) -> None:
        self._bus = bus
        self._url = url
        self._stream = stream
        self._nc = nc
        self._sub = sub
        self._status = status
        self._bus_id = sub.bus_id
        self._publisher = Publisher(nc, js, stream, subject_for(bus), self._should_give_up)
        self._pending: deque[Message] = deque()
        self._end: EndReason | None = None
        self._end_queued = False
        self._first_seq: int | None = None
        self._leader_through: int | None = None  # as the leader last announced
        self._progress_subject = f"shmbus-bridge.{stream}.progress"
        self._standby_limit = 2 * (sub.capacity + WINDOW)
        self._give_up_at: float | None = None
        self._last_announced = 0.0
        self._take_durable = take_durable
        self._acked: int | None = None
        self._durable_tried = 0.0

    @property
    def sub(self) -> Reader:
        """The subscription it reads now (the bridge closes it after `run`)."""
        return self._sub

    def on_disconnect(self) -> None:
        self._publisher.abandon()

    async def run(self) -> None:
        status = self._status
        leadership = Leadership(self._stream)
        progress = await self._nc.subscribe(self._progress_subject, cb=self._on_progress)
        try:
            status.started.set()
            while True:
                if not status.leading and leadership.try_take():
                    self._lead()
                if status.leading and not isinstance(self._sub, QueueSubscription):
                    self._switch_to_durable()
                if status.stop.is_set() and not self._has_more_to_store():
                    return
                await self._read()
                if status.leading:
                    done = await self._publish()
                    self._acknowledge()
                    if done:
                        return
                else:
                    self._keep_up()
        finally:
            with contextlib.suppress(Exception):
                await progress.unsubscribe()
            # What was stored is acknowledged, and the durable subscription let go of,
            # before the leadership: a standby that takes over can take it at once.
            with contextlib.suppress(Exception):
                self._acknowledge()
            self._sub.close()
            leadership.release()

    def _lead(self) -> None:
        self._status.leading = True
        self._publisher.lose_place()  # where the last leader stopped is unknown
        log.info("bridge of %r to %s now publishes", self._bus, self._url)
        self._status.mark_ready()

    def _switch_to_durable(self) -> None:
        """Leading through a subscription of its own: take the durable one over, if the
        bridge is durable and it is free (tried at most once a second)."""
        now = time.monotonic()
        if self._take_durable is None or now < self._durable_tried + 1.0:
            return
        self._durable_tried = now
        taken = self._take_durable()
        if taken is None:
            return
        log.info("bridge of %r to %s took over its durable subscription", self._bus,
                 self._url)
        old, self._sub = self._sub, taken
        old.close()
        # The durable subscription holds every event the stream may lack, from the
        # first one not known stored; what this one read on its own is not needed.
        self._pending.clear()
        self._first_seq = None

    def _acknowledge(self) -> None:
        """Finish, on a durable subscription, every event the stream has stored."""
        through = self._publisher.through
        if (isinstance(self._sub, QueueSubscription) and through is not None
                and (self._acked is None or through > self._acked)):
            self._sub.ack(through)
            self._acked = through

    def _has_more_to_store(self) -> bool:
        return self._status.leading and bool(self._pending)

    def _should_give_up(self) -> bool:
        if not self._status.stop.is_set():
            return False
        now = time.monotonic()
        if self._give_up_at is None:
            self._give_up_at = now + STOP_GRACE
        if now < self._give_up_at:
            return False
        log.error("bridge of %r stopped with %d event(s) taken from the bus but not stored; "
                  "remote subscribers will see them as lost", self._bus, len(self._pending))
        self._pending.clear()
        return True

    # -- reading the bus ----------------------------------------------------------------

    async def _read(self) -> None:
        leading = self._status.leading
        if self._end is not None or self._status.stop.is_set():
            if not leading:
                await asyncio.sleep(0.05)  # a standby waits for the leader to finish
            return
        room = WINDOW if leading else min(WINDOW, self._standby_limit - len(self._pending))
        if room <= 0:
            await asyncio.sleep(0.02)
            return
        wait = 0.0 if self._pending and leading else _TAKE_SLICE
        messages, end = await asyncio.to_thread(
            _take, self._sub, room, wait, self._nc.max_payload)
        if messages and self._first_seq is None:
            self._first_seq = messages[0].seq
        self._pending.extend(messages)
        if end is EndReason.UNSUBSCRIBED:
            self._status.stop.set()
        elif end is not None:
            self._end = end

    # -- leading ------------------------------------------------------------------------

    async def _publish(self) -> bool:
        """Store what is pending; True once there is nothing more to do."""
        if self._end is not None and not self._end_queued:
            self._pending.append(end_message(self._bus_id, self._end))
            self._end_queued = True
        if self._pending:
            self._status.published += await self._publisher.carry(self._pending)
            await self._announce()
        elif time.monotonic() - self._last_announced > _HEARTBEAT:
            await self._announce()
        if self._end_queued and not self._pending:
            assert self._end is not None
            log.info("bus %r ended (%s); its bridge is done", self._bus, self._end.value)
            return True
        return self._give_up_at is not None and not self._pending

    async def _announce(self) -> None:
        through = self._publisher.through
        if through is None:
            return
        self._last_announced = time.monotonic()
        with contextlib.suppress(Exception):
            await self._nc.publish(self._progress_subject, f"{self._bus_id}:{through}".encode())

    # -- standing by --------------------------------------------------------------------

    async def _on_progress(self, msg: Msg) -> None:
        bus_id, _, seq = msg.data.decode(errors="replace").partition(":")
        if bus_id == self._bus_id and seq.isdigit():
            through = int(seq)
            if self._leader_through is None or through > self._leader_through:
                self._leader_through = through

    def _keep_up(self) -> None:
        through = self._leader_through
        if through is None:
            return
        # Events the leader has stored are not needed; nor are those emitted before it
        # subscribed, which it could never store (the stream starts after them).
        pending = self._pending
        while pending and pending[0].seq is not None and pending[0].seq <= through:
            pending.popleft()
        if self._first_seq is not None and through >= self._first_seq - 1:
            self._status.mark_ready()


def _take(sub: Reader, max_n: int, wait: float,
          max_payload: int) -> tuple[list[Message], EndReason | None]:
    """Up to `max_n` events from the bus as messages, and why the bus ended if it did.

    Runs on a worker thread: `recv_raw` blocks. The events are not unpickled: each goes
    out as it lay in shared memory (see `_wire`).
    """
    try:
        events = sub.recv_raw(max_n, timeout=wait)
    except Timeout:
        return [], None
    except Closed:
        return [], sub.end_reason or EndReason.UNSUBSCRIBED
    return [event_message(sub.bus_id, event, max_payload) for event in events], None
