"""The standard library's `multiprocessing.Queue(maxsize=256)`, one per subscriber.

The emitter `put`s every event into each subscriber's queue in turn; `put` blocks while
that queue holds 256 unread items (its semaphore counts items, so the bound is exact).
Each `put` pickles the event again, in the queue's feeder thread, and writes it to a
pipe; the receiver `get`s one event per call. Queues are made before the fork, which is
how `multiprocessing` hands them to children (the fork start method).

`close()` waits for every feeder thread to flush (`join_thread`), i.e. until each
receiver has read all but a pipe's worth.
"""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

from benchmarks.systems import STALL_SECONDS, EmitterPort, ReceiverPort, System


class _Emitter(EmitterPort):
    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues

    def emit(self, event: Any) -> None:
        for q in self.queues:
            q.put(event, timeout=STALL_SECONDS)

    def close(self) -> None:
        for q in self.queues:
            q.close()
        for q in self.queues:
            q.join_thread()


class _Receiver(ReceiverPort):
    def __init__(self, q: Any) -> None:
        self.queue = q

    def receive(self, timeout: float) -> list[Any]:
        try:
            return [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []


class MultiprocessingQueue(System):
    name = "mp-queue"

    def prepare(self) -> None:
        context = multiprocessing.get_context("fork")
        self.queues = [context.Queue(maxsize=self.bound) for _ in range(self.subscribers)]

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        return _Emitter(self.queues), None

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        return _Receiver(self.queues[index])

    def cleanup(self, failed: bool) -> None:
        for q in self.queues:
            q.close()
            q.cancel_join_thread()  # this process never put anything
