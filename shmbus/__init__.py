"""shmbus: a multi-process, shared-memory event bus that never loses an event.

One `EventEmitter` per bus fans every event out to every subscriber, each of which has its
own bounded ring in POSIX shared memory; a slow subscriber blocks `emit` instead of losing
events, and a dead one is reaped. See docs/design.md for the whole design.

    import shmbus

    with shmbus.EventEmitter("jobs") as em:      # in one process
        em.emit({"step": 1})

    for event in shmbus.subscribe("jobs"):      # in any other process of the same user
        ...

`CORE` says which implementation of the per-event steps this process runs: "c", the
compiled core built at install time where a C compiler was found, or "python"
(`SHMBUS_CORE=python` asks for it; processes with either share a bus).
"""

from ._core import NAME as CORE
from ._emitter import DEFAULT_CAPACITY, EventEmitter
from ._errors import (
    BusExists,
    BusNotFound,
    Closed,
    DeserializationError,
    DurableInUse,
    EmitterDied,
    EventsLost,
    ForeignObject,
    IncompatibleBus,
    InvalidArgument,
    NatsError,
    NatsUnavailable,
    OutOfSharedMemory,
    PlatformRuleBroken,
    SerializationError,
    ShmBusError,
    Timeout,
    WorkerError,
)
from ._pool import HandlerResult, WorkerPool, WorkerResult, worker_index
from ._registry import Cleaned, cleanup
from ._stats import BusStats, SubscriberStats, buses, stats
from ._arena import DEFAULT_LARGE_BYTES
from ._facade import subscribe
from ._member import DEFAULT_EXPIRE_AFTER, QueueSubscription, unsubscribe
from ._receiver import EndReason
from ._subscription import (
    MAX_VIEWED_EVENTS,
    LocalSubscription,
    RawEvent,
    Subscription,
)


__version__ = "0.1.0"

__all__ = [
    "CORE",
    "DEFAULT_CAPACITY",
    "DEFAULT_EXPIRE_AFTER",
    "DEFAULT_LARGE_BYTES",
    "BusExists",
    "BusNotFound",
    "BusStats",
    "Cleaned",
    "Closed",
    "DeserializationError",
    "DurableInUse",
    "EmitterDied",
    "EndReason",
    "EventEmitter",
    "EventsLost",
    "ForeignObject",
    "HandlerResult",
    "IncompatibleBus",
    "LocalSubscription",
    "InvalidArgument",
    "MAX_VIEWED_EVENTS",
    "NatsError",
    "NatsUnavailable",
    "OutOfSharedMemory",
    "PlatformRuleBroken",
    "QueueSubscription",
    "RawEvent",
    "SerializationError",
    "ShmBusError",
    "SubscriberStats",
    "Subscription",
    "Timeout",
    "WorkerError",
    "WorkerPool",
    "WorkerResult",
    "buses",
    "cleanup",
    "stats",
    "subscribe",
    "unsubscribe",
    "worker_index",
]
