"""shmbus itself, one event per call (`emit`/`recv`, the reference) and batched, on
each core, and with numpy arrays received as views (`shmbus-view`).

`shmbus` and `shmbus-batch` run the core a user gets by default: the compiled one where
it was built (see `shmbus.CORE`). `shmbus-py` and `shmbus-batch-py` run the pure-Python
core, in every process of the measurement, so that one run compares the two.

The bound is exact: each subscriber's ring has `capacity` = 256 slots and `emit` blocks
on the 257th unread event. The batched variant (`emit_many`/`recv_many`, 64 events a
call) keeps the same ring and the same rules; only the per-call overhead is shared.

Shared memory per subscriber: a ring of capacity x 512-byte slots plus a 64-byte header
(131,136 bytes at 256); an event whose pickle exceeds a slot's inline room (496 bytes)
goes once into a segment of its own, shared by every subscriber and freed when all have
read it, so at most `capacity` such segments exist at a time. `ring_bytes` gives the
figure the results report, from the library's own constants.
"""

from __future__ import annotations

from typing import Any

import shmbus
from benchmarks.systems import BATCH, STALL_SECONDS, EmitterPort, ReceiverPort, System


def ring_bytes(capacity: int) -> int:
    """Shared memory of one subscriber's ring, header included."""
    from shmbus import _ring  # private, but the only true source of the layout

    return capacity * _ring.SLOT_SIZE + _ring.HEADER_SIZE


def inline_limit() -> int:
    """The largest pickle a ring slot holds inline; larger ones get a segment."""
    from shmbus import _ring

    return _ring.SLOT_SIZE - _ring.SLOT_HEADER_SIZE


class _Emitter(EmitterPort):
    def __init__(self, capacity: int) -> None:
        self.bus = shmbus.EventEmitter(capacity=capacity)

    def emit(self, event: Any) -> None:
        self.bus.emit(event, timeout=STALL_SECONDS)

    def emit_many(self, events: list[Any]) -> None:
        self.bus.emit_many(events, timeout=STALL_SECONDS)

    def close(self) -> None:
        self.bus.close()


class _Receiver(ReceiverPort):
    def __init__(self, name: str, batched: bool, view: bool) -> None:
        sub = shmbus.subscribe(name)
        assert isinstance(sub, shmbus.LocalSubscription)  # a local name; it takes `view`
        self.sub: shmbus.LocalSubscription = sub
        self.batched = batched
        self.view = view

    def receive(self, timeout: float) -> list[Any]:
        try:
            if self.batched:
                return list(self.sub.recv_many(BATCH, timeout=timeout))
            return [self.sub.recv(timeout=timeout, view=self.view)]
        except shmbus.Timeout:
            return []

    def close(self) -> None:
        self.sub.close()


class Shmbus(System):
    name = "shmbus"
    core: str | None = None
    """The core its processes run ("c", "python"), or None for the default one."""
    view = False
    """Whether `recv` hands out read-only views of large events' buffers (`view=True`)."""

    def bound_note(self) -> str:
        return f"{self.bound} events; {self.core or shmbus.CORE} core"

    def open_emitter(self) -> tuple[EmitterPort, Any]:
        self._use_core()
        port = _Emitter(self.bound)
        name = port.bus.name
        return port, (name, shmbus.stats(name).token)

    def open_receiver(self, index: int, address: Any) -> ReceiverPort:
        self._use_core()
        return _Receiver(address[0], self.batched, self.view)

    def _use_core(self) -> None:
        # In the process forked to emit or receive: it imported shmbus with the
        # harness, before any system was chosen, so SHMBUS_CORE cannot decide here.
        if self.core is not None:
            from shmbus import _core  # private: choosing after import has no public way

            _core.use(self.core)

    def shm_prefixes(self, address: Any) -> tuple[str, ...]:
        return (f"sb_{address[1]}", f"sem.sb_{address[1]}")

    def cleanup(self, failed: bool) -> None:
        if failed:
            shmbus.cleanup()  # what a killed emitter or subscriber left behind


class ShmbusBatch(Shmbus):
    name = "shmbus-batch"
    batched = True

    @classmethod
    def unavailable(cls) -> str | None:
        missing = [f"{owner.__name__}.{method}" for owner, method in (
            (shmbus.EventEmitter, "emit_many"), (shmbus.Subscription, "recv_many"),
        ) if not hasattr(owner, method)]
        if missing:
            return (f"this shmbus has no {' or '.join(missing)}: batching is not in this "
                    "checkout yet")
        return None


class ShmbusView(Shmbus):
    """`recv(view=True)`: a numpy array arrives as a read-only view of the bus's shared
    memory, not a copy, valid until the harness drops the event (before its next
    receive). Measured on the large workloads only: small events have no buffers to
    view, and 1 MiB of `bytes` is in the pickle itself, so only numpy arrays change."""

    name = "shmbus-view"
    view = True
    workloads = ("numpy", "numpy-slow")


class ShmbusPy(Shmbus):
    name = "shmbus-py"
    core = "python"


class ShmbusBatchPy(ShmbusBatch):
    name = "shmbus-batch-py"
    core = "python"
