"""The change notice: how a remote subscription's loop thread wakes whoever waits for events.

## Shape

A waiter, a thread in `recv` or a task in `arecv`, takes a ticket (`listen`), looks for
what it wants, and only if it is not there waits for the ticket. Whoever changes what
waiters look at (the loop thread when messages arrive or the connection fails, `close()`
from any thread) announces the change after making it: every ticket taken before is
completed. A change between `listen` and the wait completes the ticket early, so no
wake-up is lost; a ticket completed for a change that was not the waiter's costs one
look.

A ticket is a `concurrent.futures.Future`, one per wait: a thread waits on it with a
timeout, a task awaits `asyncio.wrap_future` of it, which completes in the task's own
loop through `call_soon_threadsafe`. Cancelling the task cancels only its own ticket.

## Why not a condition variable, or a thread per `arecv`

A `threading.Condition` cannot be awaited: an event loop would block in it. Running
`recv` on an executor thread per `arecv` costs a thread per waiting task, and a
cancelled task would leave the thread waiting on, taking events no one will get. A
future per wait serves both kinds of waiter, and an announcement from a thread whose event loop
has closed meanwhile is dropped by asyncio itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

_LONGEST_WAIT = 3600.0  # a longer timeout waits in parts: the OS refuses huge ones


class ChangeNotice:
    """Wakes every thread and task waiting for a change, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: set[concurrent.futures.Future[None]] = set()

    def listen(self) -> "concurrent.futures.Future[None]":
        """A ticket completed by the next `announce()`; pass it to `wait`/`await_`."""
        ticket: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._tickets.add(ticket)
        return ticket

    def announce(self) -> None:
        with self._lock:
            tickets, self._tickets = self._tickets, set()
        for ticket in tickets:
            if ticket.set_running_or_notify_cancel():  # False: its waiter gave up
                ticket.set_result(None)

    def forget(self, ticket: "concurrent.futures.Future[None]") -> None:
        with self._lock:
            self._tickets.discard(ticket)

    def wait(self, ticket: "concurrent.futures.Future[None]", deadline: float | None) -> None:
        """Block until `ticket` is completed by `announce` or `deadline` (`time.monotonic()`) passes."""
        try:
            while True:
                try:
                    ticket.result(_remaining(deadline))
                    return
                except concurrent.futures.TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return
        finally:
            self.forget(ticket)

    async def await_(self, ticket: "concurrent.futures.Future[None]",
                     deadline: float | None) -> None:
        """`wait` for asyncio: the event loop runs meanwhile; cancellable."""
        waiter = asyncio.wrap_future(ticket)
        try:
            await asyncio.wait({waiter}, timeout=_remaining(deadline))
        finally:
            waiter.cancel()  # a no-op once completed; else the ticket is cancelled too
            self.forget(ticket)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, min(deadline - time.monotonic(), _LONGEST_WAIT))

