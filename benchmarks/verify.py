"""The receivers' check that a system delivered every event, once, in order, whole.

Every event carries its sequence number; a receiver expects 0, 1, 2, ... and nothing
else. A figure from a system that lost, repeated or reordered events is not a
throughput, so the first deviation raises `DeliveryError` and fails the measurement;
the harness never reports a number for it.
"""

from __future__ import annotations

from typing import Any, Callable


class DeliveryError(Exception):
    """A system lost, repeated, reordered or corrupted an event."""


class OrderVerifier:
    """Expects events `0 .. total-1` in order, each with an intact body."""

    def __init__(self, total: int, body_field: str, body_ok: Callable[[Any], bool]) -> None:
        self.total = total
        self.received = 0
        self._body_field = body_field
        self._body_ok = body_ok

    def check(self, event: Any) -> None:
        seq = event["seq"]
        if seq != self.received:
            raise DeliveryError(self._deviation(seq))
        if not self._body_ok(event[self._body_field]):
            raise DeliveryError(f"event {seq} arrived with a damaged {self._body_field!r}")
        self.received += 1

    def finish(self) -> None:
        """Raise unless exactly `total` events were received."""
        if self.received != self.total:
            raise DeliveryError(
                f"received {self.received} of {self.total} events: "
                f"{self.total - self.received} were lost"
            )

    def _deviation(self, seq: int) -> str:
        if seq >= self.total:
            return f"event {seq} arrived, but only {self.total} were emitted"
        if seq > self.received:
            lost = seq - self.received
            return (f"events {self.received}..{seq - 1} were lost ({lost} events): "
                    f"event {seq} arrived while {self.received} was expected")
        return (f"event {seq} arrived again or out of order, "
                f"after {self.received - 1}: repeated or reordered")
