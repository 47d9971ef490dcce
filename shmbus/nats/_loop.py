"""The event-loop thread: nats-py's asyncio world, run for synchronous callers.

## Shape

A `LoopThread` is one asyncio event loop on one daemon thread, owned by one remote
subscription. Other threads hand it coroutines: `call` waits for the result (with a
bound: a hung server must not hang `close()`), `submit` does not wait. `stop` cancels
whatever still runs there, stops the loop, joins the thread and closes the loop.

## Why a thread of its own, not the caller's event loop

nats-py is asyncio, and the subscription must work the same from plain threads, from any
number of them, and from any event loop, even one that is closed while the connection
lives on. The connection's own tasks (reading the socket, pings, reconnects) need a loop
that runs all the time: only a loop of its own gives them that. The caller's side talks
to it through thread-safe calls and futures (see `_notice`), never by sharing a loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("shmbus.nats")

T = TypeVar("T")

CALL_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class LoopThread:
    """An asyncio event loop on a daemon thread, for calls from other threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run `coro` on the loop and return its result; cancel it after `timeout`."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a LoopThread cannot wait for itself")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, Any]) -> "concurrent.futures.Future[Any]":
        """Run `coro` on the loop without waiting for it (from any thread, this one too).

        Raises `RuntimeError` if the loop is closed, `coro` closed unrun.
        """
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()  # else a warning that it was never awaited
            raise

    def call_soon(self, callback: Any, *args: Any) -> None:
        """`callback(*args)` on the loop; nothing if the loop is already gone."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed: whatever this was for is over
            pass

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Cancel what runs on the loop, stop it and join its thread. Idempotent."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is self._thread:
            self.loop.stop()  # the thread ends when this callback returns
            return
        try:
            self.call(_cancel_the_rest(), timeout=_STOP_TIMEOUT)
        except Exception as exc:
            log.debug("stopping the event loop: %r", exc)
        self.call_soon(self.loop.stop)
        self._thread.join(_STOP_TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_the_rest() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2)
