"""faster-fifo: one queue per subscriber, receivers draining with `get_many`.

How it is bounded: a faster-fifo queue is a circular byte buffer (`max_size_bytes`),
which bounds bytes, not messages; since 1.4 it also takes `maxsize`, a bound on
messages. Both are set: `maxsize=256`, and a byte buffer of 256 x (an upper bound of one
event's pickle + 16 bytes for faster-fifo's length prefix), so the message bound is the
one that binds and `put` blocks on the 257th unread event, as for the others.

One exception: faster-fifo allocates and zero-fills the whole buffer up front (a
`multiprocessing.RawArray`), so 256 numpy events would take 2 GiB per subscriber before
the first event. The byte buffer is capped at `MAX_BUFFER_BYTES` (512 MiB) per queue;
with 8 MiB events that holds 63 events, and `bound_note` says so in the results.

The emitter `put`s each event into every queue (each `put` pickles again, in the
calling thread); receivers take up to 64 events per `get_many`.
"""

from __future__ import annotations

import queue
from typing import Any

from benchmarks.systems import BATCH, STALL_SECONDS, EmitterPort, ReceiverPort, System

MiB = 1 << 20
MAX_BUFFER_BYTES = 512 * MiB
LENGTH_PREFIX_BYTES = 16


class _Emitter(EmitterPort):
    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues

    def emit(self, event: Any) -> None:
        for q in self.queues:
            q.put(event, timeout=STALL_SECONDS)


class _Receiver(ReceiverPort):
    def __init__(self, q: Any) -> None:
        self.queue = q

    def receive(self, timeout: float) -> list[Any]:
        try:
            return list(self.queue.get_many(timeout=timeout, max_messages_to_get=BATCH))
        except queue.Empty:
            return []


class FasterFifo(System):
    name = "faster-fifo"
    requires = (("faster_fifo", "faster-fifo"),)

    def buffer_bytes(self) -> int:
        wanted = self.bound * (self.workload.message_bytes + LENGTH_PREFIX_BYTES)
        return min(wanted, MAX_BUFFER_BYTES)

    def bound_note(self) -> str:
        buffer = self.buffer_bytes()
        holds = buffer // (self.workload.message_bytes + LENGTH_PREFIX_BYTES)
        if holds >= self.bound:
            return f"{self.bound} events (maxsize; byte buffer {buffer / MiB:.1f} MiB)"
        wanted = self.bound * (self.workload.message_bytes + LENGTH_PREFIX_BYTES)
        return (f"{holds} events (byte buffer capped at {buffer / MiB:,.0f} MiB; "
                f"{self.bound} would need {wanted / MiB:,.0f} MiB)")

    def prepare(self) -> None:
        import faster_fifo

        self.queues = [faster_fifo.Queue(max_size_bytes=self.buffer_bytes(), maxsize=self.bound)
                       for _ in range(self.subscribers)]

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        return _Emitter(self.queues), None

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        return _Receiver(self.queues[index])

    def cleanup(self, failed: bool) -> None:
        self.queues = []  # the buffers are unlinked already; dropping them unmaps them
