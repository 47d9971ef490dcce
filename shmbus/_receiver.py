"""Receivers: what every subscription is made of, whatever it reads.

## Shape

Three handles receive events: `LocalSubscription` (`_subscription`: its own ring),
`QueueSubscription` (`_member`: a member of a queue's ring) and
`shmbus.nats.RemoteSubscription` (a bus's stream read back from NATS). Each keeps its
own way of taking events; what they share lives here, once:

- `Receiver`, the base of all three (a `Handle`): why the stream ended (`EndReason`,
  `end_reason`) and iteration, `for` and `async for`, over `recv` and `arecv`, which end
  quietly when the bus was closed and raise `EmitterDied` when the emitter died, so that
  a crash cannot pass for the end of the stream.
- `RingReceiver`, the base of the two that read a ring on this host: the bus and the
  ring they read (`name`, `id`, `capacity`, `bus_id`, `last_seq`), the join
  (`join_when_there`, `_open_bus`, `ring_capacity`), the asyncio entry points (each
  subclass says how it waits, `_arecv`), how the emitter's end is told (`_emitter_gone`),
  and the wake-up of an emitter that waits from asyncio for room (`_wake_emitter_loop`).

`check_max_n` is the one check of a `max_n` argument.

## Why base classes

The `Subscription` protocol says what a caller may use; these say what the handles are
made of, so that a rule (when iteration stops, when the emitter counts as gone, how long
a join waits between two looks for its bus) is written once and cannot drift apart
between a lone subscriber and a queue's member, or a local and a remote subscription.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from enum import Enum
from typing import Any, TypeVar

from . import _core
from ._control import ControlBlock
from ._errors import BusNotFound, Closed, EmitterDied, InvalidArgument, Timeout, shown
from ._handle import Handle
from ._liveness import is_alive
from ._registry import Registry
from ._ring import Ring
from ._wait import deadline_after
from ._wakepipe import Waker

_T = TypeVar("_T")

WAIT_STEP = 0.05
"""The longest `subscribe(wait=)` sleeps between two looks for its bus."""


class EndReason(Enum):
    """Why a subscription's stream ended."""

    CLOSED = "closed"
    """The emitter closed the bus."""
    EMITTER_DIED = "emitter died"
    """The emitter process died without closing."""
    UNSUBSCRIBED = "unsubscribed"
    """This subscription was closed by its own process."""


def check_max_n(max_n: object) -> None:
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise InvalidArgument(f"max_n must be an int >= 1, got {shown(max_n)}")


class Receiver(Handle):
    """What every subscription shares (see the module docstring); a subclass sets `_end`
    when it opens, and implements `recv` and `arecv`."""

    _end: EndReason | None

    @property
    def end_reason(self) -> EndReason | None:
        """None while the stream may still deliver; else why it ended."""
        return self._end

    def recv(self, *, timeout: float | None = None) -> Any:
        raise NotImplementedError

    async def arecv(self, *, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        """The next event; iteration ends quietly when the bus was closed and everything
        read, and raises `EmitterDied` when the emitter died (after everything it
        finished emitting was read), so that a crash cannot pass unnoticed."""
        try:
            return self.recv()
        except EmitterDied:
            raise
        except Closed:
            raise StopIteration from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.arecv()
        except EmitterDied:
            raise  # a crash must not pass for the end of the stream
        except Closed:
            raise StopAsyncIteration from None


def ring_capacity(name: str, control: ControlBlock, capacity: int | None,
                  history: bool) -> int:
    """The capacity of a new ring: `capacity`, or the bus's default; with `history`, at
    least the bus's history (`EventEmitter(history=K)`), which it must hold whole."""
    if not isinstance(history, bool):
        raise InvalidArgument(f"history must be True or False, got {shown(history)}")
    depth = control.history
    if history and not depth:
        raise InvalidArgument(f"bus {name!r} keeps no history for late joiners; its emitter "
                              "would have to be made with EventEmitter(name, history=K)")
    if capacity is not None:
        if history and capacity < depth:
            raise InvalidArgument(
                f"a ring of {capacity} slots cannot hold the {depth} events of history bus "
                f"{name!r} keeps; pass capacity={depth} or more, or leave it out")
        return capacity
    return max(control.default_capacity, depth) if history else control.default_capacity


def join_when_there(join: Callable[[], _T], wait: float) -> _T:
    """`join()`, tried again while it raises `BusNotFound`, for up to `wait` seconds
    (`math.inf`: as long as it takes), looking more and more slowly, up to every
    `WAIT_STEP`."""
    deadline = deadline_after(wait)
    pause = 0.002
    while True:
        try:
            return join()
        except BusNotFound as exc:
            if deadline is not None and time.monotonic() >= deadline:
                if wait:
                    raise BusNotFound(f"{exc} (waited {wait:g} s for it)") from None
                raise
        time.sleep(pause if deadline is None
                   else max(0.0, min(pause, deadline - time.monotonic())))
        pause = min(2 * pause, WAIT_STEP)


class RingReceiver(Receiver):
    """A receiver of a ring on this host (see the module docstring). A subclass fills in
    the attributes below when it opens (`_init_ring`, then its own), and implements
    `recv_many` and `_arecv`."""

    _registry: Registry
    _name: str
    _token: str
    _control: ControlBlock
    _sub_id: int
    _ring: Ring
    _emitter_path: str
    _last_seq: int | None
    _waker: Waker | None
    _lock: _core.Lock
    _closing: bool
    _handing = 0
    """The thread (its ident) that parked, under the lock, what its call returns, and has
    not taken it back yet, after letting the lock go; 0 if none. Meanwhile no other
    thread touches `_parked` (`_await_hand_over`): taken for leftovers of an interrupted
    call, or a half-filled list replaced under it, those events came out twice, or never.
    Taking them back is a swap with no call in it, so no other thread and no signal
    handler runs between the look and the store; a call interrupted before it clears
    this on its way out, and leaves them to the next call."""

    def _handing_thread(self) -> int:
        """`_handing`, wherever the subclass keeps it."""
        return self._handing

    def _await_hand_over(self, deadline: float | None) -> None:
        """With the lock: let another thread take back what it parked (a few bytecodes,
        and no lock, stand between it and that) before `_parked` is looked at; as long
        as `deadline` allows, should that thread be held up in a signal handler."""
        while self._handing_thread() not in (0, threading.get_ident()):
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"another thread is receiving from {self._name!r}")
            time.sleep(0)

    @staticmethod
    def _open_bus(registry: Registry, name: str, capacity: int | None, history: bool,
                  join: Callable[[str, ControlBlock, int, dict[str, Any]], _T]
                  ) -> tuple[str, ControlBlock, _T]:
        """Open bus `name` and `join(token, control, capacity, record)` it: the capacity
        of a ring this joiner creates, and the record that says who joins. The control
        block is closed again if that fails."""
        registry.sweep_some()
        token, control = registry.open_bus(name)
        try:
            wanted = ring_capacity(name, control, capacity, history)
            record: dict[str, Any] = {"pid": os.getpid(), "created": time.time()}
            if history:
                record["history"] = True  # the emitter copies its history in (`_adopt`)
            return token, control, join(token, control, wanted, record)
        except BaseException:
            control.close()
            raise

    def _init_ring(self, registry: Registry, name: str, token: str, control: ControlBlock,
                   sub_id: int, ring: Ring) -> None:
        self._registry = registry
        self._name = name
        self._token = token
        self._control = control
        self._sub_id = sub_id
        self._ring = ring
        self._emitter_path = registry.emitter_path(token)
        self._last_seq = None
        self._waker = None  # opened by the first wake-up of the emitter's loop
        self._end = None
        self._lock = _core.Lock()  # every touch of the ring, and `close()`
        self._closing = False

    # -- public -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> int:
        """The number of the ring this reads on its bus (a queue's members share it)."""
        return self._sub_id

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    @property
    def bus_id(self) -> str:
        """The identity of the bus this reads: a new one whenever an emitter takes the
        name. With `RawEvent.seq`, it names an event for good (a bridge's message id)."""
        return self._token

    @property
    def last_seq(self) -> int | None:
        """The number of the last event this subscription took from its ring (returned,
        or about to be after an interruption); None before the first."""
        return self._last_seq

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        raise NotImplementedError

    async def arecv(self, *, timeout: float | None = None) -> Any:
        """`recv` for asyncio: the event loop runs while this waits, on no thread of its
        own (a lone subscriber sleeps on its wake pipe, `_wakepipe`; a queue's member
        polls, see `_member`). Cancelling the awaiting task is like a timeout: nothing is
        consumed, the next call returns the next event."""
        return await self._arecv(self.recv, timeout)

    async def arecv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """`recv_many` for asyncio, waiting as `arecv` does."""
        check_max_n(max_n)
        values: list[Any] = await self._arecv(functools.partial(self.recv_many, max_n),
                                              timeout)
        return values

    # -- for the subclasses -------------------------------------------------------------

    def _close(self) -> None:
        self._closing = True
        with self._lock:  # a receive blocked in another thread leaves within one slice
            # Every step may be repeated: a close() interrupted halfway is finished by the
            # next call, or by the one at interpreter exit.
            if self._closed:
                return
            if self._end is None:
                self._end = EndReason.UNSUBSCRIBED
            self._leave()
            self._control.close()
            self._closed = True

    def _leave(self) -> None:
        """`close()`'s own steps, under the lock: let go of the ring and leave the bus
        (each step may be repeated, see `_close`)."""
        raise NotImplementedError

    async def _arecv(self, receive: Callable[..., Any], timeout: float | None) -> Any:
        """`receive(timeout=0)` until it gives, waiting in the event loop in between."""
        raise NotImplementedError

    def _emitter_gone(self, check_life: bool) -> EndReason | None:
        """Why the stream ends, if the bus was closed or (`check_life`: probed now) its
        emitter died; None while it lives."""
        if self._control.closed:
            return EndReason.CLOSED
        if check_life and not is_alive(self._emitter_path):
            # It may have closed between the two reads: the flag is set before the lock
            # is released.
            return EndReason.CLOSED if self._control.closed else EndReason.EMITTER_DIED
        return None

    def _wake_emitter_loop(self) -> None:
        """Wake the emitter's event loop, waiting from asyncio for room (`_wakepipe`)."""
        if self._waker is None:
            self._waker = Waker()
        self._waker.wake(self._registry.wake_pipe_path(self._token, "emitter"))

    def _close_waker(self) -> None:
        if self._waker is not None:
            self._waker.close()
