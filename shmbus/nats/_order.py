"""Once and in order: what each message means to a remote subscription, given where it is.

## Shape

A `Cursor` remembers the last position handed on (the bus instance's id and the event's
number on that bus, from the message id; see `_wire`) and judges each message against
it:

- a number at or below the last one is a redelivery of something already handed over:
  skip it (and acknowledge it again);
- the next number is the next event, a lost marker, or an undecodable event: an
  `Outcome` for the caller;
- a number past the next one is first only *suspect*: messages may have been delivered
  out of order (a reconnect, a redelivery), so the subscription asks for everything
  unacknowledged again, in stream order (`Resync`). A jump that survives that is real:
  those events never reached the stream, and the outcome is `EventsLost` for them, once;
- the end marker ends the stream, `Closed` or `EmitterDied`, and so does every look after.

## Why numbers, and not the order of delivery

JetStream redelivers what was not acknowledged whenever it sees fit, and a reconnect
loses what was in flight: delivery order is not bus order. The bus's own numbers are.
So the subscription never trusts delivery order; it resets the consumer and judges by
number, which makes every event come out once, in bus order, whatever the network did.

This is pure bookkeeping: no I/O, no threads; its caller holds the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from .._errors import Closed, DeserializationError, EmitterDied, EventsLost, ShmBusError
from .._receiver import EndReason
from ._wire import Envelope, decode_body

Position = tuple[str, int]
"""(bus id, event number): where a subscription is in a bus's numbering."""


@dataclass
class Outcome:
    """An event, or the error that stands in its place, ready to hand to the caller."""

    value: Any
    error: ShmBusError | None
    position: Position
    """Where the cursor is once this is taken."""
    msg: Msg | None
    """The message to acknowledge once this is handed over (None: nothing to)."""
    consumes: bool
    """Whether taking this uses up the message it was judged from (a gap does not: the
    message after the gap is the next outcome)."""
    ends: EndReason | None = None


class Skip:
    """A redelivery of something already handed over: acknowledge it and read on."""


class Resync:
    """A jump in the numbers, maybe only delivery out of order: ask for it all again."""


SKIP = Skip()
RESYNC = Resync()


class Cursor:
    """Where a remote subscription is in its bus's numbering (see the module docstring)."""

    def __init__(self, bus: str) -> None:
        self.bus = bus
        self.last: Position | None = None
        self.ended: EndReason | None = None
        self._suspect: Position | None = None

    def judge(self, msg: Msg, envelope: Envelope) -> Outcome | Skip | Resync:
        """What `msg`, a bridge's message, means from here."""
        bus_id, seq = envelope.bus_id, envelope.seq
        if seq is None:
            assert envelope.end is not None
            return Outcome(None, self.end_error(envelope.end), (bus_id, self._last_seq(bus_id)),
                           msg, consumes=True, ends=envelope.end)
        last = self._last_seq(bus_id)
        if seq <= last:
            return SKIP
        if last >= 0 and seq > last + 1:
            return self._gap(bus_id, last, seq)
        self._suspect = None
        if envelope.lost is not None:
            lost = EventsLost(f"event {seq} of bus {self.bus!r} could not be carried: "
                              f"{envelope.lost}", seq, seq)
            return Outcome(None, lost, (bus_id, seq), msg, consumes=True)
        try:
            value = decode_body(envelope, msg.data)
        except DeserializationError as exc:
            return Outcome(None, exc, (bus_id, seq), msg, consumes=True)
        return Outcome(value, None, (bus_id, seq), msg, consumes=True)

    def advance(self, outcome: Outcome) -> None:
        """Move past `outcome`, once it is parked for the caller. Idempotent."""
        self.last = outcome.position
        if outcome.ends is not None:
            self.ended = outcome.ends

    def end_again(self) -> Outcome:
        """The end, for every look after the stream ended."""
        assert self.ended is not None
        return Outcome(None, self.end_error(self.ended), self.last or ("", -1), None,
                       consumes=False, ends=self.ended)

    def end_error(self, reason: EndReason) -> Closed:
        if reason is EndReason.EMITTER_DIED:
            return EmitterDied(f"the emitter of bus {self.bus!r} died; every event the "
                               "bridge carried has been received")
        if reason is EndReason.UNSUBSCRIBED:
            return Closed(f"this remote subscription to {self.bus!r} is closed")
        return Closed(f"bus {self.bus!r} is closed and every event has been received")

    def _gap(self, bus_id: str, last: int, seq: int) -> Outcome | Resync:
        if self._suspect != (bus_id, seq):
            self._suspect = (bus_id, seq)
            return RESYNC
        lost = EventsLost(
            f"events {last + 1} to {seq - 1} of bus {self.bus!r} never reached the "
            "stream (emitted while no bridge was subscribed, or held by a bridge that "
            "died alone); the next recv() goes on after them",
            last + 1, seq - 1,
        )
        return Outcome(None, lost, (bus_id, seq - 1), None, consumes=False)

    def _last_seq(self, bus_id: str) -> int:
        if self.last is not None and self.last[0] == bus_id:
            return self.last[1]
        return -1
