"""shmbus's pytest plugin: test your own multi-process code against real buses.

## Shape

Installed with shmbus and loaded by pytest on its own (a `pytest11` entry point), it adds
fixtures and changes nothing a test does not ask for:

    def test_workers_see_every_job(shmbus_bus, shmbus_subscriber):
        em = shmbus_bus("jobs")                        # closed after the test, pass or fail
        worker = shmbus_subscriber("jobs", count=3)    # a real process, subscribed
        em.emit_many(["a", "b", "c"])
        assert worker.result().events == ["a", "b", "c"]

- `shmbus_registry`: a registry directory of the test's own (`SHMBUS_DIR`, inherited by
  every process the test starts), so tests never see each other's buses, nor yours.
  After the test it checks that every shared-memory object the test's processes created
  is gone (a ledger, `SHMBUS_LEDGER`, lists them: nothing else on the machine is looked
  at, let alone removed). A leak fails the test, and is removed. The two fixtures below
  use it.
- `shmbus_bus(name=None, **kwargs)`: an `EventEmitter`, closed when the test ends even if
  it failed (pytest keeps the failure's traceback, and with it the emitter, alive: the
  next test that reused the name would find it still held).
- `shmbus_subscriber(name, count=None, ...)`: a `SubscriberProcess`, another process
  subscribed to the bus before the call returns, recording what it receives (through a
  handler of yours if you pass one); `.result()` waits for it and returns `Received`.
  Killed and reaped after the test, pass or fail.

## Why fixtures and not an autouse isolation

pytest loads this plugin in every project of an environment where shmbus is installed;
only what a test asks for may change what it sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import multiprocess
import pytest

from . import _platform
from ._emitter import EventEmitter
from ._errors import Closed, Timeout
from ._facade import subscribe
from ._registry import DIR_ENV

__all__ = ["Received", "SubscriberProcess", "leftovers", "remove_leftovers"]

JOIN_TIMEOUT = 5.0

FINISH_GRACE = 1.0
"""After a test, how long in all its subscriber processes may take to end on their own
(one draining a bus the test closed removes its ring) before they are killed."""


def leftovers(ledger: str) -> list[tuple[str, str]]:
    """(kind, name) of every shared object the ledger at `ledger` lists that still
    exists: what the processes that wrote it left behind."""
    return _platform.ledger_leftovers(ledger)


def remove_leftovers(ledger: str) -> list[tuple[str, str]]:
    """Remove what `leftovers` finds (objects of ours only); what it was."""
    found = leftovers(ledger)
    for kind, name in found:
        _platform.remove(kind, name)
    return found


@pytest.fixture
def shmbus_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A registry directory of this test's own; afterwards, a leak check of the shared
    objects the test's processes created (only those)."""
    path = tempfile.mkdtemp(prefix="shmbus-test-")
    ledger = path + ".ledger"
    monkeypatch.setenv(DIR_ENV, path)
    monkeypatch.setenv(_platform.LEDGER_ENV, ledger)
    try:
        yield path
        leaked = remove_leftovers(ledger)
        assert not leaked, f"the test left shared objects behind: {leaked}"
    finally:
        remove_leftovers(ledger)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ledger)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shmbus_bus(shmbus_registry: str) -> Iterator[Callable[..., EventEmitter]]:
    """`shmbus_bus(name=None, **kwargs)`: an `EventEmitter` closed after the test."""
    made: list[EventEmitter] = []

    def make(name: str | None = None, **kwargs: Any) -> EventEmitter:
        emitter = EventEmitter(name, **kwargs)
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        emitter.close()


@dataclass(frozen=True)
class Received:
    """What a `SubscriberProcess` got: the events (or what its handler returned for
    each), how its stream ended (`EndReason.value`, or None if it stopped at `count`),
    and the error that stopped it, as text, if any."""

    events: list[Any]
    end: str | None
    error: str | None


class SubscriberProcess:
    """Another process subscribed to bus `name`, recording what it receives.

    It subscribes (waiting up to `wait` seconds for the bus) before `start()` returns,
    then receives until `count` events came, or the stream ended, or `handler` raised.
    With a `handler`, each event is passed to it and its return value is recorded.
    `start_method` is the platform's unless given: fork on Linux, spawn on macOS.
    """

    def __init__(self, name: str, *, count: int | None = None,
                 handler: Callable[[Any], Any] | None = None, capacity: int | None = None,
                 wait: float = 10.0, start_method: str | None = None) -> None:
        self.name = name
        self._args = (name, count, handler, capacity, wait)
        self._context = multiprocess.get_context(
            _platform.DEFAULT_START_METHOD if start_method is None else start_method)
        self._process: Any = None
        self._conn: Any = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> "SubscriberProcess":
        ours, theirs = self._context.Pipe(duplex=False)
        self._process = self._context.Process(target=_receive, args=(*self._args, theirs),
                                              daemon=True)
        self._process.start()
        theirs.close()
        self._conn = ours
        if not ours.poll(timeout):
            raise Timeout(f"the subscriber of bus {self.name!r} did not subscribe within "
                          f"{timeout:g} s")
        said = ours.recv()
        if said != "subscribed":
            self._process.join(JOIN_TIMEOUT)
            raise said  # what subscribe() raised there (BusNotFound, say), as it was
        return self

    def result(self, timeout: float = 30.0) -> Received:
        """Wait for the process to finish receiving; what it got."""
        if not self._conn.poll(timeout):
            raise Timeout(f"the subscriber of bus {self.name!r} was still receiving after "
                          f"{timeout:g} s")
        received: Received = self._conn.recv()
        self._process.join(JOIN_TIMEOUT)
        return received

    def kill(self, grace: float = 0.0) -> None:
        """Stop it if it still runs after `grace` seconds (SIGKILL: the bus reaps what it
        leaves; a process still draining a closed bus gets the grace to remove it)."""
        if self._process is not None and grace > 0:
            self._process.join(grace)
        if self._process is not None and self._process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
        if self._process is not None:
            self._process.join(JOIN_TIMEOUT)
        if self._conn is not None:
            self._conn.close()


@pytest.fixture
def shmbus_subscriber(shmbus_registry: str) -> Iterator[Callable[..., SubscriberProcess]]:
    """`shmbus_subscriber(name, **kwargs)`: a started `SubscriberProcess`, killed and
    reaped after the test."""
    started: list[SubscriberProcess] = []

    def start(name: str, **kwargs: Any) -> SubscriberProcess:
        process = SubscriberProcess(name, **kwargs)
        started.append(process)
        return process.start()

    yield start
    deadline = time.monotonic() + FINISH_GRACE
    for process in started:
        process.kill(grace=max(0.0, deadline - time.monotonic()))


def _receive(name: str, count: int | None, handler: Callable[[Any], Any] | None,
             capacity: int | None, wait: float, conn: Any) -> None:
    try:
        sub = subscribe(name, capacity=capacity, wait=wait)
    except Exception as exc:
        conn.send(exc)
        return
    events: list[Any] = []
    error = None
    with sub:
        conn.send("subscribed")
        try:
            while count is None or len(events) < count:
                event = sub.recv()
                events.append(handler(event) if handler is not None else event)
        except Closed:  # EmitterDied too: `end` says which
            pass
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        end = sub.end_reason.value if sub.end_reason is not None else None
    conn.send(Received(events, end, error))
