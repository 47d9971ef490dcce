"""The bridge: a local subscriber that carries a bus into a NATS JetStream stream.

`run_bridge("jobs", "nats://host:4222")` (or `shmbus bridge jobs --nats URL`) subscribes
to bus `jobs` like any other subscriber and publishes every event, in order, to the
bus's stream (`_wire` for the format, `_jetstream` for the stream's retention), where
`shmbus.subscribe("nats://host:4222/jobs")` reads it from any host. It ends when the bus
does, after publishing an end marker that ends every remote subscription the same way
(`Closed`, or `EmitterDied`).

## Shape

`Bridge` is the handle a caller holds: `run()` blocks, `start()` runs it on a thread of
its own, `stop()` ends it. Underneath, one asyncio loop connects, makes sure of the
stream, subscribes to the bus and hands the rest to a `Pump` (`_pump`: reading the bus,
leadership and standby), which stores through a `Publisher` (`_publisher`: ordered,
acknowledged publishing). The bridge and its pump share only a `Status`.

## Why a process of its own, and not a thread in the emitter

A bridge is a subscriber: a slow NATS server slows it like a slow subscriber, and the
emitter waits for it (backpressure end to end) instead of buffering without bound. Run
as its own process (the CLI command) or thread, it can die, be restarted, or be doubled
by a standby (`_pump`) without touching the emitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from .._errors import BusNotFound, DurableInUse, InvalidArgument, NatsError, shown
from .._member import QueueSubscription, subscribe_queue
from .._registry import validate_name
from .._subscription import subscribe_local
from ._jetstream import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MSGS,
    connect,
    ensure_stream,
    require_jetstream,
)
from ._pump import Pump, Status
from ._wire import parse_servers, redact, stream_for, validate_stream

log = logging.getLogger("shmbus.bridge")

_API_TIMEOUT = 2.0


class Bridge:
    """Carries bus `name` into NATS JetStream at `nats_url` until the bus ends.

    `run()` blocks; `start()` runs it on a thread (also as a context manager) and
    `stop()` ends it, storing what it already took from the bus. `stream` defaults to
    `SHMBUS_<name>`; `max_msgs` and `max_bytes` bound it (a full stream blocks the
    bridge, then the emitter); `capacity` is the bridge's ring on the local bus.

    With `durable` (the default) the bridge reads the bus through the durable
    subscription `bridge.<stream>`: a bridge killed or stopped and started again loses
    nothing, since the bus keeps what is emitted meanwhile, for up to `expire_after`
    seconds (default `shmbus.DEFAULT_EXPIRE_AFTER`; `shmbus unsubscribe NAME
    bridge.<stream>` lets go sooner). A second bridge, started beside it for fast
    failover, stands by on a subscription of its own and takes the durable one over
    when it takes the lead.
    """

    def __init__(self, name: str, nats_url: str, *, stream: str | None = None,
                 max_msgs: int = DEFAULT_MAX_MSGS, max_bytes: int = DEFAULT_MAX_BYTES,
                 capacity: int | None = None, durable: bool = True,
                 expire_after: float | None = None) -> None:
        self.name = validate_name(name)
        self._servers = parse_servers(nats_url)
        self.url = redact(nats_url)
        """The server's URL without its password: the only form shown anywhere."""
        self.stream = validate_stream(stream or stream_for(name))
        for label, value in (("max_msgs", max_msgs), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{label} must be an int >= 1, got {shown(value)}")
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.capacity = capacity
        if not isinstance(durable, bool):
            raise InvalidArgument(f"durable must be True or False, got {shown(durable)}")
        self.durable = f"bridge.{self.stream}" if durable else None
        """The durable subscription the bridge reads the bus through, if it is durable."""
        self.expire_after = expire_after
        self._status = Status()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pump: Pump | None = None

    # -- public -------------------------------------------------------------------------

    @property
    def published(self) -> int:
        """Events (and lost-event markers) this bridge got stored, or found stored."""
        return self._status.published

    @property
    def leading(self) -> bool:
        """Whether this bridge publishes (else it stands by)."""
        return self._status.leading

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Bridge until the bus ends or `stop()`; the number of events published.

        `on_ready` is called once events emitted from then on will reach the stream. In
        the main thread, the first Ctrl-C stops the bridge as `stop()` does (what it
        took from the bus is stored first); a second one interrupts it.
        """
        self._status.on_ready = on_ready
        return asyncio.run(self._main())

    def start(self, timeout: float = 10.0) -> "Bridge":
        """Run on a daemon thread; return once subscribed, or raise why it could not."""
        self._thread = threading.Thread(target=self._run_in_thread, daemon=True,
                                        name=f"shmbus-bridge-{self.name}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._status.started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                if self._error is not None:
                    raise self._error
                raise NatsError(f"the bridge of {self.name!r} to {self.url} did not start "
                                f"within {timeout} s")
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once events emitted from now on will reach the stream (see `run`)."""
        return self._status.ready.wait(timeout)

    def stop(self, timeout: float | None = None) -> int:
        """End the bridge (idempotent); events published."""
        self._status.stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self.published

    def __enter__(self) -> "Bridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        role = "leader" if self.leading else "standby"
        return f"<shmbus.nats.Bridge {self.name!r} -> {self.url} {self.stream} {role}>"

    # -- running ------------------------------------------------------------------------

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self._error = exc
            if self._status.started.is_set():
                log.error("the bridge of %r stopped: %r", self.name, exc)

    async def _main(self) -> int:
        interrupt = _stop_on_first_interrupt(self._status.stop)
        try:
            nc = await connect(self._servers, self.url, name=f"shmbus bridge {self.name}",
                               disconnected_cb=self._on_disconnect)
            try:
                js = nc.jetstream(timeout=_API_TIMEOUT)
                await require_jetstream(js, self.url)
                await ensure_stream(js, self.url, self.name, self.stream,
                                    max_msgs=self.max_msgs, max_bytes=self.max_bytes)
                sub = self._take_durable() or subscribe_local(self.name,
                                                              capacity=self.capacity)
                try:
                    self._pump = Pump(self.name, self.url, self.stream, nc, js, sub,
                                      self._status,
                                      self._take_durable if self.durable else None)
                    await self._pump.run()
                finally:
                    if self._pump is not None:
                        self._pump.sub.close()
                    self._pump = None
                    sub.close()
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        finally:
            interrupt.restore()
        return self.published

    def _take_durable(self) -> QueueSubscription | None:
        """The bridge's durable subscription, or None if it has none or another bridge
        owns it (then this one stands by, see `_pump`)."""
        if self.durable is None:
            return None
        try:
            return subscribe_queue(self.name, durable=self.durable, capacity=self.capacity,
                                   auto_ack=False, expire_after=self.expire_after)
        except (DurableInUse, BusNotFound):  # the bus ended: what this one read will do
            return None

    async def _on_disconnect(self) -> None:
        if self._pump is not None:
            self._pump.on_disconnect()


def run_bridge(name: str, nats_url: str, *, stream: str | None = None,
               max_msgs: int = DEFAULT_MAX_MSGS, max_bytes: int = DEFAULT_MAX_BYTES,
               on_ready: Callable[[], None] | None = None, capacity: int | None = None,
               durable: bool = True, expire_after: float | None = None) -> int:
    """Carry bus `name` into NATS JetStream until the bus ends or Ctrl-C.

    Returns the number of events published. Raises `NatsUnavailable` if no server
    answers at `nats_url`, `NatsError` if it cannot serve the stream, and
    `BusNotFound` if no live bus is called `name`. `on_ready` is called once events
    emitted from then on will reach the stream. See `Bridge`.
    """
    bridge = Bridge(name, nats_url, stream=stream, max_msgs=max_msgs, max_bytes=max_bytes,
                    capacity=capacity, durable=durable, expire_after=expire_after)
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
