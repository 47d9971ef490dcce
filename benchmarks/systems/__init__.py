"""One small adapter per system, all driven by the same harness for the same job.

The job: one emitter process delivers every event, in order, to N subscriber processes,
each behind a bound of `bound` (256) events, the emitter blocking when a subscriber's
bound is full, never dropping. An adapter only opens and closes its system's ends; the
harness owns the processes, the event loop, the clock and the verification, so no
adapter can measure differently from another.

Life of one measurement:

1. `System(subscribers, workload, bound)` and `prepare()` in the harness process, before
   any fork (for queues that children must inherit).
2. `open_emitter()` in the emitter process: its port and an address the subscribers
   need (a bus name, a socket directory, ...).
3. `open_receiver(index, address)` in each subscriber process.
4. `EmitterPort.start()` once every receiver is open, then the emits; `close()` returns
   once every event is on its way (it may wait for receivers to drain).
5. `cleanup(failed)` in the harness once every child is gone, also after a failure, so
   nothing stays in /dev/shm or on disk.

Why adapters and not one script per system: scripts drift apart (a different clock, a
warm-up here, no verification there) and the comparison stops meaning anything.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

from benchmarks.workloads import Workload

STALL_SECONDS = 30.0
"""How long any send or receive may wait before the harness calls the system stuck."""

INSTALL_HINT = "pip install -e '.[bench]'"

BATCH = 64
"""Events per `emit_many` call, and at most per receive, for the batched systems."""


class EmitterPort:
    """The emitter's end. `emit` blocks while any subscriber's bound is full."""

    def start(self) -> None:
        """Called once every receiver is open, before the first emit."""

    def emit(self, event: Any) -> None:
        raise NotImplementedError

    def emit_many(self, events: list[Any]) -> None:
        for event in events:
            self.emit(event)

    def close(self) -> None:
        """Return once every emitted event is on its way to every receiver."""


class ReceiverPort:
    """One subscriber's end."""

    def receive(self, timeout: float) -> list[Any]:
        """The next event(s) in order; an empty list if none came within `timeout`."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class System:
    """A system under test: how to open its ends for one measurement."""

    name: ClassVar[str]
    """What `--systems` takes and the tables show."""
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, pip distribution) pairs that must be importable."""
    batched: ClassVar[bool] = False
    """Whether the harness emits in batches (`emit_many`) instead of one by one."""
    workloads: ClassVar[tuple[str, ...] | None] = None
    """The only workloads it is measured on (a variant that changes nothing elsewhere),
    or None for every one."""

    def __init__(self, subscribers: int, workload: Workload, bound: int) -> None:
        self.subscribers = subscribers
        self.workload = workload
        self.bound = bound

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this system cannot run here (a missing library), or None."""
        for module, distribution in cls.requires:
            if importlib.util.find_spec(module) is None:
                return f"{distribution} is not installed: {INSTALL_HINT}"
        return None

    def bound_note(self) -> str:
        """How this system bounds a subscriber's backlog for this workload."""
        return f"{self.bound} events"

    def shm_prefixes(self, address: Any) -> tuple[str, ...]:
        """Name prefixes, in /dev/shm, of the objects this measurement creates there."""
        return ()

    def prepare(self) -> None:
        pass

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        raise NotImplementedError

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        raise NotImplementedError

    def cleanup(self, failed: bool) -> None:
        pass


def all_systems() -> dict[str, type[System]]:
    """Every system, in the order tables show them (the reference first)."""
    from benchmarks.systems import faster_fifo_queue, iceoryx2_pubsub, mp_queue
    from benchmarks.systems import shmbus_bus, zenoh_pubsub, zmq_pushpull

    order = (shmbus_bus.Shmbus, shmbus_bus.ShmbusBatch, shmbus_bus.ShmbusView,
             shmbus_bus.ShmbusPy, shmbus_bus.ShmbusBatchPy, mp_queue.MultiprocessingQueue,
             faster_fifo_queue.FasterFifo, zmq_pushpull.ZmqPushPull,
             iceoryx2_pubsub.Iceoryx2PubSub, zenoh_pubsub.ZenohPubSub)
    return {cls.name: cls for cls in order}
