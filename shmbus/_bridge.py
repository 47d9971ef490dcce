"""The bridge: a local subscriber that carries a bus into a NATS JetStream stream.

`run_bridge("jobs", "nats://host:4222")` (or `shmbus bridge jobs --nats URL`) subscribes
to bus `jobs` like any other subscriber and publishes every event, in order, to the
bus's stream (see `_remote` for the names, the wire format and the stream's retention),
where `shmbus.subscribe("nats://host:4222/jobs")` reads it from any host. It ends when the
bus does, after publishing an end marker that ends every remote subscription the same way
(`Closed`, or `EmitterDied`).

## What an event's number is

Every message id is `<bus>:<seq>`: the bus instance's random token and the event's own
sequence number on that bus (the emitter's `committed` count when it emitted it), read
from the subscription. It is the same number for every subscriber of the bus, so it names
the event, not a publish attempt: JetStream's de-duplication (`Nats-Msg-Id`) drops any
second copy, whether a retry after a lost acknowledgement, a restarted bridge, or a second
bridge publishing the same bus; and a remote subscriber can tell a skipped number from a
late one. A counter of the bridge's own would restart with the bridge and collide with
the ids still in the duplicate window, silently dropping new events as "duplicates".

## Publishing: exactly once, in order, no loss

A publish counts only once JetStream acknowledges it; until then the event stays in the
bridge's pending queue and is sent again. Publishes are pipelined in windows, and each
carries `Nats-Expected-Last-Sequence`: the stream position it must land right after. So
when one is refused (the stream is full, the connection dropped, the server restarted),
every later one in flight is refused too, and nothing can be stored out of order. Then the
bridge waits (backing off up to 0.5 s), asks the stream for its last position, and knows
exactly how many of its pending events were stored: everything after its last
acknowledged position is its own, in order. That survives what de-duplication alone
would not: a server restart forgets the ids of messages its consumers already removed.
When the position it last knew is lost (it has just become the publisher), it publishes
one event at a time with no expectation until the server stores one rather than calling
it a duplicate, then pipelines again.

A full stream therefore stops the bridge, whose ring fills, which blocks the emitter:
backpressure from the slowest remote subscriber to the local emitter.

## A bridge that dies, and why a second one

A bridge is a subscriber like any other: it receives the events emitted after it
subscribed, and a bridge killed by SIGKILL takes with it what it had read from the bus
but not yet had stored, plus whatever is emitted until a new one subscribes. No restart
can recover those; the local bus does not keep events for subscribers that are gone. The
restarted bridge's events carry the bus's numbers, so remote subscribers see the jump and
raise `EventsLost` for exactly those events: the loss is reported, never silent.

To lose nothing when a bridge dies, run two (on the same host): every bridge subscribes
and reads the whole bus, but only the holder of a `flock` on `bridge.<stream>.lock` in
the registry directory publishes; the kernel hands the lock to a standby the
moment the leader dies. The leader announces on core NATS how far the stream has stored,
and a standby keeps every event past that point (bounded: it reads no further ahead than
its limit, so it paces the emitter like any subscriber). On taking over it publishes what
it holds from the first event the stream lacks, which de-duplication and the probe above
make exact. A standby reports ready (`on_ready`) once the leader has stored everything
before its first event: from then on either bridge may die.

## Why the raw pickle is re-made

A local subscription hands out decoded events, not their bytes, so the bridge decodes and
re-encodes each one (`_codec`), and cannot carry an event it cannot unpickle: that one is
published as a `Shmbus-Lost` marker, as is one too large for the server's `max_payload`,
and remote subscribers get `EventsLost` in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from . import _codec, _remote
from ._errors import (
    Closed,
    DeserializationError,
    InvalidArgument,
    NatsError,
    SerializationError,
    Timeout,
    shown,
)
from ._liveness import LifeLock
from ._registry import Registry, validate_name
from ._subscription import EndReason, LocalSubscription, subscribe_local

log = logging.getLogger("shmbus.bridge")

DEFAULT_MAX_MSGS = _remote.DEFAULT_MAX_MSGS
DEFAULT_MAX_BYTES = _remote.DEFAULT_MAX_BYTES
WINDOW = 256
"""Publishes in flight at once; each window is one round trip."""
STOP_GRACE = 5.0
"""Seconds a stopping leader keeps trying to store what it already took from the bus."""
_ACK_TIMEOUT = 2.0
_API_TIMEOUT = 2.0
_TAKE_SLICE = 0.2
_HEARTBEAT = 0.25
_MAX_BACKOFF = 0.5
_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
_WRONG_LAST_SEQUENCE = 10071


@dataclass
class _Item:
    """One message to publish: an event, a lost-event marker, or the end marker."""

    seq: int | None
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Bridge:
    """Carries bus `name` into NATS JetStream at `nats_url` until the bus ends.

    `run()` blocks; `start()` runs it on a thread (also as a context manager) and
    `stop()` ends it, storing what it already took from the bus. `stream` defaults to
    `SHMBUS_<name>`; `max_msgs` and `max_bytes` bound it (a full stream blocks the
    bridge, then the emitter); `capacity` is the bridge's ring on the local bus.
    """

    def __init__(self, name: str, nats_url: str, *, stream: str | None = None,
                 max_msgs: int = DEFAULT_MAX_MSGS, max_bytes: int = DEFAULT_MAX_BYTES,
                 capacity: int | None = None) -> None:
        self.name = validate_name(name)
        self.url = _remote.redact(nats_url)
        self.stream = _remote.validate_stream(stream or _remote.stream_for(name))
        self._servers = _remote.parse_servers(nats_url)
        for label, value in (("max_msgs", max_msgs), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{label} must be an int >= 1, got {shown(value)}")
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.published = 0
        """Events (and lost-event markers) this bridge got stored, or found stored."""
        self.leading = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pump: _Pump | None = None

    # -- public -----------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Bridge until the bus ends or `stop()`; the number of events published.

        In the main thread, the first Ctrl-C stops the bridge as `stop()` does (what it
        took from the bus is stored first); a second one interrupts it.
        """
        return asyncio.run(self._main(on_ready))

    def start(self, timeout: float = 10.0) -> "Bridge":
        """Run on a daemon thread; return once subscribed, or raise why it could not."""
        self._thread = threading.Thread(target=self._run_in_thread, daemon=True,
                                        name=f"shmbus-bridge-{self.name}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                if self._error is not None:
                    raise self._error
                raise NatsError(f"the bridge of {self.name!r} to {self.url} did not start "
                                f"within {timeout} s")
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once events emitted from now on will reach the stream (see `on_ready`)."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float | None = None) -> int:
        """End the bridge (idempotent); events published."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self.published

    def __enter__(self) -> "Bridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        role = "leader" if self.leading else "standby"
        return f"<shmbus.Bridge {self.name!r} -> {self.url} {self.stream} {role}>"

    # -- running ------------------------------------------------------------------------

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self._error = exc
            if self._started.is_set():
                log.error("the bridge of %r stopped: %r", self.name, exc)

    async def _main(self, on_ready: Callable[[], None] | None) -> int:
        interrupt = _stop_on_first_interrupt(self._stop)
        try:
            nc = await _remote.connect(self._servers, self.url,
                                       name=f"shmbus bridge {self.name}",
                                       disconnected_cb=self._on_disconnect)
            try:
                js = nc.jetstream(timeout=_API_TIMEOUT)
                await _remote.require_jetstream(js, self.url)
                await _remote.ensure_stream(js, self.url, self.name, self.stream,
                                            max_msgs=self.max_msgs, max_bytes=self.max_bytes)
                sub = subscribe_local(self.name, capacity=self.capacity)
                try:
                    self._pump = _Pump(self, nc, js, sub, on_ready)
                    await self._pump.run()
                finally:
                    self._pump = None
                    sub.close()
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        finally:
            interrupt.restore()
        return self.published

    async def _on_disconnect(self) -> None:
        if self._pump is not None:
            self._pump.carrier.replies.abandon()

    def _became_ready(self, on_ready: Callable[[], None] | None) -> None:
        if self._ready.is_set():
            return
        self._ready.set()
        if on_ready is not None:
            on_ready()


def run_bridge(name: str, nats_url: str, *, stream: str | None = None,
               max_msgs: int = DEFAULT_MAX_MSGS, max_bytes: int = DEFAULT_MAX_BYTES,
               on_ready: Callable[[], None] | None = None, capacity: int | None = None) -> int:
    """Carry bus `name` into NATS JetStream until the bus ends or Ctrl-C.

    Returns the number of events published. Raises `NatsUnavailable` if no server
    answers at `nats_url`, `NatsError` if it cannot serve the stream, and
    `BusNotFound` if no live bus is called `name`. `on_ready` is called once events
    emitted from then on will reach the stream. See `Bridge`.
    """
    bridge = Bridge(name, nats_url, stream=stream, max_msgs=max_msgs, max_bytes=max_bytes,
                    capacity=capacity)
    try:
        return bridge.run(on_ready)
    except KeyboardInterrupt:  # the second Ctrl-C
        return bridge.published


class _Interrupt:
    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def restore(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGINT)
            self._loop = None


def _stop_on_first_interrupt(stop: threading.Event) -> _Interrupt:
    if threading.current_thread() is not threading.main_thread():
        return _Interrupt(None)
    loop = asyncio.get_running_loop()

    def first() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C interrupts for real

    loop.add_signal_handler(signal.SIGINT, first)
    return _Interrupt(loop)


# -- one bridge's work ------------------------------------------------------------------


class _Leadership:
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


class _Pump:
    """Reads the bus and, while it leads, publishes; while it stands by, keeps up."""

    def __init__(self, bridge: Bridge, nc: NatsClient, js: JetStreamContext,
                 sub: LocalSubscription, on_ready: Callable[[], None] | None) -> None:
        self.bridge = bridge
        self.nc = nc
        self.sub = sub
        self.on_ready = on_ready
        self.token: str = sub._token  # names the bus instance; not public on Subscription
        self.carrier = _Carrier(nc, js, bridge.stream, _remote.subject_for(bridge.name),
                                self._should_give_up)
        self.pending: deque[_Item] = deque()
        self.end: EndReason | None = None
        self.end_queued = False
        self.first_seq: int | None = None
        self.leader_through: int | None = None  # as the leader last announced
        self.progress_subject = f"shmbus-bridge.{bridge.stream}.progress"
        self.standby_limit = 2 * (sub.capacity + WINDOW)
        self.give_up_at: float | None = None
        self.last_announced = 0.0

    async def run(self) -> None:
        bridge = self.bridge
        leadership = _Leadership(bridge.stream)
        progress = await self.nc.subscribe(self.progress_subject, cb=self._on_progress)
        try:
            bridge._started.set()
            while True:
                if not bridge.leading and leadership.try_take():
                    bridge.leading = True
                    self.carrier.anchor = None  # where the last leader stopped is unknown
                    log.info("bridge of %r to %s now publishes", bridge.name, bridge.url)
                    bridge._became_ready(self.on_ready)
                if bridge._stop.is_set() and not self._begin_stopping():
                    return
                await self._read()
                if bridge.leading:
                    if await self._publish():
                        return
                else:
                    self._keep_up()
        finally:
            with contextlib.suppress(Exception):
                await progress.unsubscribe()
            leadership.release()

    def _begin_stopping(self) -> bool:
        """True if there is still something to store before stopping."""
        return self.bridge.leading and bool(self.pending)

    def _should_give_up(self) -> bool:
        if not self.bridge._stop.is_set():
            return False
        now = time.monotonic()
        if self.give_up_at is None:
            self.give_up_at = now + STOP_GRACE
        if now < self.give_up_at:
            return False
        log.error("bridge of %r stopped with %d event(s) taken from the bus but not stored; "
                  "remote subscribers will see them as lost", self.bridge.name,
                  len(self.pending))
        self.pending.clear()
        return True

    # -- reading the bus ------------------------------------------------------------------

    async def _read(self) -> None:
        if self.end is not None or self.bridge._stop.is_set():
            if not self.bridge.leading:
                await asyncio.sleep(0.05)  # a standby waits for the leader to finish
            return
        room = (WINDOW if self.bridge.leading
                else min(WINDOW, self.standby_limit - len(self.pending)))
        if room <= 0:
            await asyncio.sleep(0.02)
            return
        wait = 0.0 if self.pending and self.bridge.leading else _TAKE_SLICE
        items, end = await asyncio.to_thread(
            _take, self.sub, room, wait, self.token, self.nc.max_payload)
        if items and self.first_seq is None:
            self.first_seq = items[0].seq
        self.pending.extend(items)
        if end is EndReason.UNSUBSCRIBED:
            self.bridge._stop.set()
        elif end is not None:
            self.end = end

    # -- leading --------------------------------------------------------------------------

    async def _publish(self) -> bool:
        """Store what is pending; True once there is nothing more to do."""
        if self.end is not None and not self.end_queued:
            self.pending.append(_end_item(self.token, self.end))
            self.end_queued = True
        if self.pending:
            self.bridge.published += await self.carrier.carry(self.pending)
            await self._announce()
        elif time.monotonic() - self.last_announced > _HEARTBEAT:
            await self._announce()
        if self.end_queued and not self.pending:
            assert self.end is not None
            log.info("bus %r ended (%s); its bridge is done", self.bridge.name, self.end.value)
            return True
        return self.give_up_at is not None and not self.pending

    async def _announce(self) -> None:
        through = self.carrier.through
        if through is None:
            return
        self.last_announced = time.monotonic()
        with contextlib.suppress(Exception):
            await self.nc.publish(self.progress_subject, f"{self.token}:{through}".encode())

    # -- standing by ----------------------------------------------------------------------

    async def _on_progress(self, msg: Msg) -> None:
        token, _, seq = msg.data.decode(errors="replace").partition(":")
        if token == self.token and seq.isdigit():
            through = int(seq)
            if self.leader_through is None or through > self.leader_through:
                self.leader_through = through

    def _keep_up(self) -> None:
        through = self.leader_through
        if through is None:
            return
        # Events the leader has stored are not needed; nor are those emitted before it
        # subscribed, which it could never store (the stream starts after them).
        while self.pending and self.pending[0].seq is not None and self.pending[0].seq <= through:
            self.pending.popleft()
        if self.first_seq is not None and through >= self.first_seq - 1:
            self.bridge._became_ready(self.on_ready)


def _end_item(token: str, reason: EndReason) -> _Item:
    return _Item(None, b"", {_remote.MSG_ID: _remote.message_id(token, _remote.END_ID),
                             _remote.END: reason.value})


def _take(sub: LocalSubscription, max_n: int, wait: float, token: str,
          max_payload: int) -> tuple[list[_Item], EndReason | None]:
    """Up to `max_n` events from the bus as messages, and why the bus ended if it did.

    Runs on a worker thread: `recv` blocks.
    """
    try:
        events = sub.recv_many(max_n, timeout=wait)
    except Timeout:
        return [], None
    except DeserializationError as exc:
        seq = _last_seq(sub)
        return [_lost_item(token, seq, f"the bridge could not unpickle it: {exc}")], None
    except Closed:
        return [], sub.end_reason or EndReason.UNSUBSCRIBED
    first = _last_seq(sub) - len(events) + 1
    return [_event_item(token, first + i, event, max_payload)
            for i, event in enumerate(events)], None


def _last_seq(sub: LocalSubscription) -> int:
    last = sub.last_seq
    assert last is not None, "called after a receive"
    return last


def _event_item(token: str, seq: int, event: Any, max_payload: int) -> _Item:
    headers = {_remote.MSG_ID: _remote.message_id(token, seq)}
    try:
        body = _codec.encode(event)
    except SerializationError as exc:
        return _lost_item(token, seq, f"the bridge could not pickle it again: {exc}")
    if len(body) + 256 > max_payload:
        return _lost_item(token, seq, f"its pickle of {len(body)} bytes exceeds the NATS "
                                      f"server's max_payload of {max_payload} bytes")
    return _Item(seq, body, headers)


def _lost_item(token: str, seq: int, why: str) -> _Item:
    return _Item(seq, b"", {_remote.MSG_ID: _remote.message_id(token, seq),
                            _remote.LOST: why.replace("\r", " ").replace("\n", " ")})


class _Carrier:
    """Stores messages in the stream in order, exactly once, however often it must retry."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str, subject: str,
                 give_up: Callable[[], bool]) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.give_up = give_up
        self.replies = _Replies(nc)
        self.anchor: int | None = None
        """The stream position of the last message known stored, whose successor must be
        the first pending one; None when unknown (then `_probe`)."""
        self.through: int | None = None
        """The bus number of the last event known stored."""
        self.backoff = 0.0

    async def carry(self, pending: deque[_Item]) -> int:
        """Store `pending` from the left, removing what is stored; the events stored."""
        await self.replies.start()
        carried = 0
        while pending and not self.give_up():
            if self.anchor is None:
                carried += await self._probe(pending)
            else:
                carried += await self._window(pending)
        return carried

    async def _probe(self, pending: deque[_Item]) -> int:
        # No expectation: a copy of what the last publisher stored comes back as a
        # duplicate, and the first one the server stores anew is the next in line.
        answers = await self._send([(pending[0], None)])
        answer = answers[0]
        if answer is None or answer.error is not None:
            log.debug("probe publish to %s: %s", self.stream, answer)
            await self._wait()
            return 0
        if not answer.duplicate:
            self.anchor = answer.seq
        self.backoff = 0.0
        return self._stored(pending, 1)

    async def _window(self, pending: deque[_Item]) -> int:
        assert self.anchor is not None
        count = min(len(pending), WINDOW)
        answers = await self._send([(pending[i], self.anchor + i) for i in range(count)])
        stored, failure = 0, None
        for answer in answers:
            if answer is None or answer.error is not None:
                failure = answer  # every later one was refused too, or is sent again
                break
            stored += 1
            if answer.duplicate:  # stored earlier, elsewhere: our place is unknown
                self.anchor = None
                break
            self.anchor = answer.seq
        events = self._stored(pending, stored)
        if self.anchor is None:
            return events  # `_probe` finds our place
        if stored == count:
            self.backoff = 0.0
            return events
        if failure is None or failure.error != _WRONG_LAST_SEQUENCE:
            await self._wait()  # full, or not connected: give it time
        return events + await self._resync(pending)

    async def _send(self, batch: list[tuple[_Item, int | None]]) -> list[_Answer | None]:
        """Publish in order; the answers, None where none came in time."""
        futures = []
        try:
            for item, expected in batch:
                headers = item.headers
                if expected is not None:
                    headers = {**headers, _EXPECTED_LAST_SEQ: str(expected)}
                futures.append(await self.replies.publish(self.subject, item.body, headers))
        except Exception as exc:  # the outgoing buffer is full while disconnected
            log.debug("publish to %s: %r", self.stream, exc)
        if futures:
            await asyncio.wait(futures, timeout=_ACK_TIMEOUT)
        answers = [future.result() if future.done() and not future.exception() else None
                   for future in futures]
        self.replies.forget(futures)
        return answers + [None] * (len(batch) - len(answers))

    def _stored(self, pending: deque[_Item], count: int) -> int:
        """Drop the first `count` pending messages, stored; how many of them are events."""
        events = 0
        for _ in range(count):
            item = pending.popleft()
            if item.seq is not None:
                self.through = item.seq
                events += 1
        return events

    async def _resync(self, pending: deque[_Item]) -> int:
        """Learn from the stream how many pending messages it stored; drop those."""
        assert self.anchor is not None
        while not self.give_up():
            if not self.replies.nc.is_connected:
                await self._wait()  # nats-py is reconnecting
                continue
            try:
                info = await self.js.stream_info(self.stream)
                break
            except nats.js.errors.NotFoundError as exc:
                raise NatsError(f"stream {self.stream!r} was deleted under the bridge; "
                                "restart the bridge to create it again") from exc
            except Exception as exc:
                log.debug("stream info %s: %r", self.stream, exc)
                await self._wait()
        else:
            return 0
        last = info.state.last_seq
        stored = last - self.anchor
        if not 0 <= stored <= len(pending):
            self.anchor = None  # someone else wrote to the stream: find our place again
            return 0
        self.anchor = last
        return self._stored(pending, stored)

    async def _wait(self) -> None:
        self.backoff = min(_MAX_BACKOFF, max(0.01, self.backoff * 2))
        await asyncio.sleep(self.backoff)


@dataclass(frozen=True)
class _Answer:
    """JetStream's reply to one publish."""

    seq: int | None
    duplicate: bool = False
    error: int | None = None
    description: str = ""

    @classmethod
    def of(cls, msg: Msg) -> "_Answer":
        if msg.headers and msg.headers.get("Status") == "503":
            return cls(None, error=503, description="no responders: the stream is not there")
        try:
            reply = json.loads(msg.data)
        except ValueError:
            return cls(None, error=-1, description=f"unreadable reply {msg.data[:80]!r}")
        error = reply.get("error")
        if error:
            return cls(None, error=int(error.get("err_code") or error.get("code") or -1),
                       description=str(error.get("description", "")))
        return cls(int(reply["seq"]), duplicate=bool(reply.get("duplicate")))


class _Replies:
    """JetStream's replies to pipelined publishes, matched by reply subject.

    Not nats-py's `publish_async`: in 2.16 its reply handler raises on an error reply
    (`APIError.from_error` raises), so the future of a refused publish never completes,
    and a full stream, the very case backpressure rests on, looks like a timeout.
    """

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.waiting: dict[str, asyncio.Future[_Answer]] = {}
        self.counter = 0
        self.subscription: Any = None

    async def start(self) -> None:
        if self.subscription is None:
            self.subscription = await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_reply)

    async def publish(self, subject: str, body: bytes,
                      headers: dict[str, str]) -> asyncio.Future[_Answer]:
        self.counter += 1
        key = str(self.counter)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        await self.nc.publish(subject, body, reply=f"{self.prefix}.{key}", headers=headers)
        return future

    def forget(self, futures: list[asyncio.Future[_Answer]]) -> None:
        unanswered = {id(future) for future in futures if not future.done()}
        if unanswered:
            self.waiting = {key: future for key, future in self.waiting.items()
                            if id(future) not in unanswered}

    def abandon(self) -> None:
        """The connection dropped: no reply to what is in flight will ever come."""
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError("disconnected"))

    async def _on_reply(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(_Answer.of(msg))
