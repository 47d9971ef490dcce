"""The bridge's publishing: every message stored once, in order, however often it retries.

## Shape

`Publisher.carry(pending)` stores messages from the left of the bridge's pending queue
and removes each once JetStream has acknowledged it; until then it stays and is sent
again. Publishes are pipelined in windows of `WINDOW`, and each carries
`Nats-Expected-Last-Sequence`: the stream position it must land right after. So when
one is refused (the stream is full, the connection dropped, the server restarted), every
later one in flight is refused too, and nothing can be stored out of order. Then the
publisher waits (backing off up to 0.5 s), asks the stream for its last position, and
knows exactly how many of its pending messages were stored: everything after its last
acknowledged position is its own, in order. That survives what de-duplication alone
would not: a server restart forgets the ids of messages its consumers already removed.

When the position it last knew is lost (it has just become the publisher, or someone
else wrote to the stream), it *probes*: it publishes one message with no expectation
until the server stores one rather than calling it a duplicate (the id is the event's,
see `_wire`), then pipelines again from there.

A full stream therefore stops `carry`, whose bridge stops reading its ring, which fills
and blocks the emitter: backpressure from the slowest remote subscriber to the emitter.

## Why not nats-py's `publish_async`

In nats-py 2.16 its reply handler raises on an error reply (`APIError.from_error`
raises), so the future of a refused publish never completes, and a full stream, the
very case backpressure rests on, looks like a timeout. `Replies` matches replies to
publishes itself, by reply subject, and reads errors as answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .._errors import NatsError
from ._wire import Message

log = logging.getLogger("shmbus.bridge")

WINDOW = 256
"""Publishes in flight at once; each window is one round trip."""
_ACK_TIMEOUT = 2.0
_MAX_BACKOFF = 0.5
_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
_WRONG_LAST_SEQUENCE = 10071


class Publisher:
    """Stores messages in the stream in order, exactly once (see the module docstring)."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str, subject: str,
                 give_up: Callable[[], bool]) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._subject = subject
        self._give_up = give_up
        self._replies = Replies(nc)
        self._anchor: int | None = None
        """The stream position of the last message known stored, whose successor must be
        the first pending one; None when unknown (then `_probe`)."""
        self.through: int | None = None
        """The bus number of the last event known stored."""
        self._backoff = 0.0

    def lose_place(self) -> None:
        """Forget where the stream was: another publisher may have written since."""
        self._anchor = None

    def abandon(self) -> None:
        """The connection dropped: no reply to what is in flight will ever come."""
        self._replies.abandon()

    async def carry(self, pending: deque[Message]) -> int:
        """Store `pending` from the left, removing what is stored; the events stored.

        Returns early, with messages left, once `give_up()` says so.
        """
        await self._replies.start()
        carried = 0
        while pending and not self._give_up():
            if self._anchor is None:
                carried += await self._probe(pending)
            else:
                carried += await self._window(pending)
        return carried

    async def _probe(self, pending: deque[Message]) -> int:
        # No expectation: a copy of what the last publisher stored comes back as a
        # duplicate, and the first one the server stores anew is the next in line.
        answer = (await self._send([(pending[0], None)]))[0]
        if answer is None or answer.error is not None:
            log.debug("probe publish to %s: %s", self._stream, answer)
            await self._wait()
            return 0
        if not answer.duplicate:
            self._anchor = answer.seq
        self._backoff = 0.0
        return self._stored(pending, 1)

    async def _window(self, pending: deque[Message]) -> int:
        assert self._anchor is not None
        count = min(len(pending), WINDOW)
        answers = await self._send([(pending[i], self._anchor + i) for i in range(count)])
        stored, failure = 0, None
        for answer in answers:
            if answer is None or answer.error is not None:
                failure = answer  # every later one was refused too, or is sent again
                break
            stored += 1
            if answer.duplicate:  # stored earlier, elsewhere: our place is unknown
                self._anchor = None
                break
            self._anchor = answer.seq
        events = self._stored(pending, stored)
        if self._anchor is None:
            return events  # `_probe` finds our place
        if stored == count:
            self._backoff = 0.0
            return events
        if failure is None or failure.error != _WRONG_LAST_SEQUENCE:
            await self._wait()  # full, or not connected: give it time
        return events + await self._resync(pending)

    async def _send(self, batch: list[tuple[Message, int | None]]) -> list[Answer | None]:
        """Publish in order; the answers, None where none came in time."""
        futures = []
        try:
            for message, expected in batch:
                headers = message.headers
                if expected is not None:
                    headers = {**headers, _EXPECTED_LAST_SEQ: str(expected)}
                futures.append(await self._replies.publish(self._subject, message.body,
                                                           headers))
        except Exception as exc:  # the outgoing buffer is full while disconnected
            log.debug("publish to %s: %r", self._stream, exc)
        if futures:
            await asyncio.wait(futures, timeout=_ACK_TIMEOUT)
        answers = [future.result() if future.done() and not future.exception() else None
                   for future in futures]
        self._replies.forget(futures)
        return answers + [None] * (len(batch) - len(answers))

    def _stored(self, pending: deque[Message], count: int) -> int:
        """Drop the first `count` pending messages, stored; how many of them are events."""
        events = 0
        for _ in range(count):
            message = pending.popleft()
            if message.seq is not None:
                self.through = message.seq
                events += 1
        return events

    async def _resync(self, pending: deque[Message]) -> int:
        """Learn from the stream how many pending messages it stored; drop those."""
        assert self._anchor is not None
        while not self._give_up():
            if not self._nc.is_connected:
                await self._wait()  # nats-py is reconnecting
                continue
            try:
                info = await self._js.stream_info(self._stream)
                break
            except nats.js.errors.NotFoundError as exc:
                raise NatsError(f"stream {self._stream!r} was deleted under the bridge; "
                                "restart the bridge to create it again") from exc
            except Exception as exc:
                log.debug("stream info %s: %r", self._stream, exc)
                await self._wait()
        else:
            return 0
        last = info.state.last_seq
        stored = last - self._anchor
        if not 0 <= stored <= len(pending):
            self._anchor = None  # someone else wrote to the stream: find our place again
            return 0
        self._anchor = last
        return self._stored(pending, stored)

    async def _wait(self) -> None:
        self._backoff = min(_MAX_BACKOFF, max(0.01, self._backoff * 2))
        await asyncio.sleep(self._backoff)


@dataclass(frozen=True)
class Answer:
    """JetStream's reply to one publish."""

    seq: int | None
    duplicate: bool = False
    error: int | None = None
    description: str = ""

    @classmethod
    def of(cls, msg: Msg) -> "Answer":
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


class Replies:
    """JetStream's replies to pipelined publishes, matched by reply subject."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._counter = 0
        self._subscription: Any = None

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await self._nc.subscribe(f"{self._prefix}.*",
                                                          cb=self._on_reply)

    async def publish(self, subject: str, body: bytes,
                      headers: dict[str, str]) -> asyncio.Future[Answer]:
        self._counter += 1
        key = str(self._counter)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        await self._nc.publish(subject, body, reply=f"{self._prefix}.{key}", headers=headers)
        return future

    def forget(self, futures: list[asyncio.Future[Answer]]) -> None:
        unanswered = {id(future) for future in futures if not future.done()}
        if unanswered:
            self._waiting = {key: future for key, future in self._waiting.items()
                             if id(future) not in unanswered}

    def abandon(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError("disconnected"))

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(Answer.of(msg))
