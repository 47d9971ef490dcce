"""Handles: the one lifecycle every emitter and subscription shares.

## Shape

A handle (an `EventEmitter`, a `LocalSubscription`, a `RemoteSubscription`) is owned by
the process that opened it and ends with `close()`, which this base class makes:

- **idempotent**: the second call returns at once; and a first call interrupted halfway
  (a `KeyboardInterrupt`) is finished by the next one, since each subclass's `_close`
  is written so that every step may be repeated;
- **fork-aware**: a handle inherited through `fork` belongs to the parent. In the child
  it refuses to work (`ShmBusError`, from `_check_usable`) and its `close()` only lets
  go, removing nothing the parent still uses (`_liveness.fork_epoch` tells, by one
  integer comparison);
- **certain**: handles still open when the interpreter exits are closed then (subscribers
  read what an emitter sent before it exited; an emitter's subscribers see it close,
  not die), and a handle dropped without `close()` is closed when it is collected;
- a context manager, both `with` and `async with`.

## Why one base class

Three handles each kept their own set of open handles, exit hook, fork check and
idempotent close, and they had begun to differ (two ways of telling a fork child). The
rules are the same for all three; only what closing *does* differs (`_close`).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any, TypeVar

from . import _liveness
from ._errors import Closed, ShmBusError

_Self = TypeVar("_Self", bound="Handle")

_open: "weakref.WeakSet[Handle]" = weakref.WeakSet()
_open_guard = threading.Lock()


class Handle:
    """The lifecycle of an emitter or a subscription (see the module docstring).

    Subclasses call `_opened()` once they are fully open, implement `_close()`, and call
    `_check_usable()` before each operation.
    """

    _closed = True  # until `_opened()`: a handle that failed to open has nothing to close
    _epoch = -1
    _kind = "handle"
    """What the handle is, for messages: "EventEmitter", "subscription"."""

    def _opened(self) -> None:
        self._epoch = _liveness.fork_epoch
        self._closed = False
        with _open_guard:
            _open.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def inherited(self) -> bool:
        """Whether this handle came from the parent through `fork` (it is the parent's)."""
        return self._epoch != _liveness.fork_epoch

    def close(self) -> None:
        """Let go of this handle; idempotent. See the subclass for what that means."""
        if self._closed:
            return
        if self.inherited:
            self._closed = True  # the parent's: only let go here
            return
        self._close()
        self._closed = True
        with _open_guard:
            _open.discard(self)

    def _close(self) -> None:
        raise NotImplementedError

    def _check_usable(self) -> None:
        if self.inherited:
            raise ShmBusError(
                f"this {self._kind} of {self._what()} was inherited through fork; only the "
                f"process that opened it may use it. Open a new one in the child."
            )
        if self._closed:
            raise Closed(f"this {self._kind} of {self._what()} is closed")

    def _what(self) -> str:
        """What the handle is of, for messages: "bus 'jobs'"."""
        return "a bus"

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def close_all_open(kinds: tuple[type[Any], ...] = (Handle,)) -> None:
    """Close every open handle of `kinds` (all, by default), subscriptions first."""
    with _open_guard:
        handles = [h for h in _open if isinstance(h, kinds)]
    # Subscriptions before emitters: an emitter that closes while its own process's
    # subscriptions are open would leave them to drain after it.
    handles.sort(key=lambda h: h._kind == "EventEmitter")
    for handle in handles:
        try:
            handle.close()
        except Exception:
            pass


atexit.register(close_all_open)
