"""The one error hierarchy of shmbus.

Every error the library raises on purpose is a `ShmBusError`. Where a standard exception
already names the situation (`TimeoutError`, `FileNotFoundError`, `FileExistsError`), ours
is also one of those, so code that knows nothing of shmbus still catches it sensibly.

The end of a stream is split the way trio splits it: `Closed` is the ordinary end (the
emitter closed, or you closed this handle); `EmitterDied` is a `Closed` whose cause was the
emitter process vanishing without closing. Code that only cares that the stream is over
catches `Closed`; code that must tell a crash from a shutdown catches `EmitterDied` first.
"""

from __future__ import annotations


class ShmBusError(Exception):
    """Base class of every error shmbus raises on purpose."""


class InvalidArgument(ShmBusError, ValueError, TypeError):
    """An argument is of the wrong type or out of range; nothing was done.

    Also a `ValueError` and a `TypeError`, so code that catches either still does. The
    message says what is allowed, and quotes the bad value only in part (`shown`).
    """


class Timeout(ShmBusError, TimeoutError):
    """A call did not complete within its `timeout`. Nothing was delivered or consumed.

    Except by `emit_many`, which may have emitted the first events of its batch before
    timing out: `emitted` says how many (it is None for every other call).
    """

    emitted: int | None = None


class Closed(ShmBusError):
    """The stream is over: the bus or this handle was closed, and nothing is left to read."""


class EmitterDied(Closed):
    """The emitter process died without closing; every event it finished emitting was read."""


class BusNotFound(ShmBusError, FileNotFoundError):
    """No live bus has that name."""


class BusExists(ShmBusError, FileExistsError):
    """A live emitter already holds that name."""


class SerializationError(ShmBusError):
    """An event could not be pickled, even by cloudpickle. Nothing was sent, except by
    `emit_many`: `emitted` says how many of its events went out before this one."""

    emitted: int | None = None


class DurableInUse(ShmBusError):
    """A durable subscription is owned by a live process: it has one owner at a time."""


class DeserializationError(ShmBusError):
    """An event arrived but could not be unpickled here. It is consumed; the next one is not."""


class IncompatibleBus(ShmBusError):
    """A registry entry or shared-memory header is corrupt or from another shmbus version."""


class ForeignObject(ShmBusError, PermissionError):
    """A shared object shmbus needs carries a name that someone else created first.

    shmbus never reads, writes or removes such an object; where it can, it picks another
    name, and raises this only where it cannot.
    """


class OutOfSharedMemory(ShmBusError, MemoryError):
    """The shared-memory filesystem has no room for a ring or a large event."""


class PlatformRuleBroken(ShmBusError):
    """shmbus asked the operating system for something this platform refuses: a bug in
    shmbus, never in the caller's code.

    Raised where shmbus checks a platform's rule itself: on macOS for what its kernel
    refuses less clearly, and everywhere in the macOS rules mode (`SHMBUS_PLATFORM=
    macos-rules`), which enforces macOS's rules on Linux so that the test suite proves
    shmbus keeps them (see `shmbus._platform`).
    """


class WorkerError(ShmBusError):
    """A `WorkerPool` worker failed in a way its own exception cannot tell.

    It died without reporting (SIGKILL, the OOM killer), was stopped by a signal, or its
    handler raised an exception that could not be re-created here. Also the `__cause__` of
    a re-created handler exception. `remote_traceback` is the worker's traceback text, if
    there was one.
    """

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class NatsError(ShmBusError):
    """NATS JetStream, as the bridge or a remote subscription found it, cannot carry the bus."""


class NatsUnavailable(NatsError, ConnectionError):
    """No NATS server answered at the given URL."""


class EventsLost(ShmBusError):
    """Events `first` to `last` of a bridged bus will never arrive; the next recv() goes on.

    Raised by a remote subscription in their place: they were emitted while no bridge was
    subscribed, or held by a bridge that died alone, or could not be carried at all (too
    large for the NATS server, or not unpicklable in the bridge process).
    """

    def __init__(self, message: str, first: int = 0, last: int = -1) -> None:
        super().__init__(message)
        self.first = first
        self.last = last

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def shown(value: object, limit: int = 40) -> str:
    """`repr(value)`, cut to about `limit` characters: an error quotes bad input, never a
    page of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"
