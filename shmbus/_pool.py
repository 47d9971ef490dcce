"""A pool of worker processes, each subscribed to one bus and calling a handler per event.

## Shape

    def handle(event):                      # any callable: lambdas and closures too
        ...

    with shmbus.EventEmitter("jobs") as em:
        with shmbus.WorkerPool("jobs", handle, workers=4) as pool:  # all 4 subscribed
            for job in jobs:
                em.emit(job)
        # here every worker has handled every event emitted above, and left the bus
    pool.check()                            # raises the first handler failure, if any

or, to run until the bus closes: `pool = WorkerPool(...).start()`, emit, close the
emitter, then `results = pool.join()`.

- `start()` returns once every worker has subscribed, so every event emitted after it
  returns reaches every worker. A worker that cannot subscribe (say `BusNotFound`) makes
  `start()` stop the others and raise that worker's exception.
- **Every worker receives every event**: a bus fans out, it does not deal events out.
  Sharding is the handler's business: `if event["id"] % n != shmbus.worker_index():
  return`.
- A worker ends when the stream does (the emitter closed or died), when its handler
  raises (it leaves the bus at once, so it never blocks the emitter), or when the pool
  stops it. `join()` waits for the stream to end; `stop()` asks the workers to leave now,
  or with `drain=True` after handling every event already in their rings (which includes
  every event whose `emit` returned before `stop()` was called). Leaving a `with` block
  normally is `stop(drain=True, timeout=None)`; leaving it by an exception is `stop()`.
- Each worker reports a `WorkerResult`: exit code, events handled, how its stream ended,
  and its handler's exception, re-created here with the worker's traceback attached as
  `__cause__` (a `WorkerError`). A worker that died without reporting (SIGKILL, the OOM
  killer) is reported too, with a `WorkerError` saying so. `check()` raises the first
  failure.
- Workers die with the pool's process, even when it is SIGKILLed: they leave the bus and
  exit at once on Linux (a signal interrupts even a busy handler); on macOS within
  `CHECK_INTERVAL` of their handler returning.
- Under "spawn" the usual `multiprocessing` rule applies: the main module must guard its
  own start-up with `if __name__ == "__main__":`, since each worker imports it.

## Why this shape

- Not `multiprocessing.Pool` or `ProcessPoolExecutor`: those deal tasks from one shared
  queue, each to one worker. Here each worker is a subscriber with a ring of its own,
  which is what gives the bus its ordering, backpressure and no-loss guarantees.
- Reports come back through one pipe per worker, not a shared `multiprocess.Queue`: a
  queue's writers share a lock, and a worker SIGKILLed while holding it would wedge every
  other worker's report (the hang the bus itself is built to avoid). A pipe has one
  writer; a killed worker's pipe reads as end-of-file, and its exit is seen on the
  process sentinel in the same `connection.wait`.
- Stopping is a message before it is a signal. A worker reads stop requests between
  events, so a handler is never interrupted mid-event unless it outstays the grace; then
  SIGTERM raises an exception in the worker (not the default death) so that it still
  leaves the bus, and SIGKILL comes last. A sweep removes whatever a killed worker left.
- Parent death: where the kernel offers it (Linux's `PR_SET_PDEATHSIG`; see `_platform`)
  each worker asks for SIGHUP when its parent dies. Not SIGTERM: the kernel sends that
  signal when the *thread* that started the worker exits, not the process, so the
  handler first checks that the parent really changed (`os.getppid()`); SIGTERM stays
  the pool's own "stop now". Workers also compare `os.getppid()` between events and
  `recv` slices, which covers a parent that died before the worker asked, and macOS,
  which has no such signal: there (and in the macOS rules mode) those checks carry the
  job alone.
- The default start method is the platform's (`_platform.DEFAULT_START_METHOD`): fork on
  Linux, spawn on macOS.
- "fork" and "spawn" only: a "forkserver" worker is a child of the fork server, so
  neither the death signal nor `getppid` would follow the pool's process.
- Processes are not daemonic, so a handler may start processes of its own (as in
  `ProcessPoolExecutor`); an exit hook stops pools still running when the interpreter
  exits, so a forgotten pool never keeps it waiting.
- `multiprocess` rather than `multiprocessing`: under "spawn" the handler is pickled with
  dill, so lambdas and closures work there too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import multiprocess
import multiprocess.reduction
from multiprocess.connection import wait as wait_for_any

from . import _codec, _platform, _ring
from ._errors import (
    Closed,
    DeserializationError,
    InvalidArgument,
    SerializationError,
    ShmBusError,
    Timeout,
    WorkerError,
    shown,
)
from ._registry import cleanup
from ._subscription import EndReason, subscribe_local

Handler = Callable[[Any], object]

START_METHODS = ("fork", "spawn")

START_TIMEOUT = 30.0
"""How long `start()` waits for every worker to subscribe. A "spawn" worker needs a fresh
interpreter and its imports; on a loaded 2-core machine that takes seconds."""

STOP_GRACE = 5.0
"""How long `stop()` lets workers leave on their own before it sends SIGTERM."""

TERM_GRACE = 2.0
"""How long a worker sent SIGTERM gets to leave the bus before it is SIGKILLed."""

CHECK_INTERVAL = 0.1
"""How often a worker looks for a stop request and checks that its parent lives: the
longest a stop request or an undetected parent death waits on an idle worker."""

_SUBSCRIBED = "subscribed"
_STOP_NOW = "stop"
_DRAIN = "drain"

_worker_index: int | None = None


def worker_index() -> int:
    """The index (0 to workers-1) of the pool worker running this handler."""
    if _worker_index is None:
        raise ShmBusError(
            "worker_index() was called outside a WorkerPool worker; call it from the "
            "handler a WorkerPool runs"
        )
    return _worker_index


@dataclass(frozen=True)
class WorkerResult:
    """How one worker ended.

    `handled` counts the handler calls that returned; it is None when the worker died
    without reporting. `end_reason` is how its subscription ended: `CLOSED` or
    `EMITTER_DIED` when the stream did, `UNSUBSCRIBED` when the worker left (stopped, or
    its handler failed), None if it never subscribed or did not report. `error` is None
    for a worker that finished cleanly; else the handler's exception, or a `WorkerError`.
    """

    index: int
    pid: int
    exitcode: int
    handled: int | None
    end_reason: EndReason | None
    error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.error is None


class WorkerPool:
    """Worker processes subscribed to one bus, each calling `handler` on every event.

    `workers` processes are started by `start_method` ("fork", the default on Linux, or
    "spawn", the default on macOS); each subscribes with ring `capacity` (default: the
    bus's). The handler runs in the workers; `shmbus.worker_index()` tells it which one
    it is in.
    """

    def __init__(self, bus_name: str, handler: Handler, *, workers: int = 4,
                 capacity: int | None = None, start_method: str | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {shown(handler)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidArgument(f"workers must be an int >= 1, got {shown(workers)}")
        if capacity is not None:
            _ring.validate_capacity(capacity)
        method = _platform.DEFAULT_START_METHOD if start_method is None else start_method
        if method not in START_METHODS:
            raise InvalidArgument(
                f"start_method must be one of {START_METHODS}, got {shown(method)}: a "
                "forkserver worker's parent is the fork server, so it could not notice "
                "this process dying"
            )
        self._bus_name = bus_name
        self._handler = handler
        self._size = workers
        self._capacity = capacity
        self._context = multiprocess.get_context(method)
        self._start_timeout = start_timeout
        self._workers: list[_WorkerHandle] = []
        self._owner_pid = os.getpid()
        self._swept = False

    # -- public -------------------------------------------------------------------------

    @property
    def bus_name(self) -> str:
        return self._bus_name

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, by index (empty before `start()`)."""
        return [worker.pid for worker in self._workers]

    @property
    def results(self) -> list[WorkerResult]:
        """The results of the workers that have finished so far, by index; never waits."""
        return [w.result for w in self._workers if w.finished() and w.result is not None]

    def start(self) -> "WorkerPool":
        """Start the workers; return once every one has subscribed.

        Raises the exception a worker got from `subscribe` (e.g. `BusNotFound`), a
        `WorkerError` if one died before subscribing, or `Timeout` after `start_timeout`
        seconds; the other workers are stopped first.
        """
        if self._workers:
            raise ShmBusError("this WorkerPool was already started; make a new one")
        self._check_handler_travels()
        _live_pools.add(self)
        try:
            with sigint_ignored():  # inherited, through exec too: see shmbus.cli._main on Ctrl-C
                for index in range(self._size):
                    self._workers.append(self._launch(index))
            self._await_subscriptions(time.monotonic() + self._start_timeout)
        except BaseException:
            self._force_stop()
            raise
        return self

    def join(self, timeout: float | None = None) -> list[WorkerResult]:
        """Wait until every worker has finished (the bus closed, or they failed).

        Raises `Timeout` if some are still running after `timeout` seconds; they keep
        running. Handler failures are not raised: see each result's `error`, or `check()`.
        """
        self._check_started()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._await_finish(deadline):
            running = sum(not w.finished() for w in self._workers)
            raise Timeout(
                f"{running} of {self._size} workers on bus {self._bus_name!r} were still "
                f"running after {timeout} s; join() waits for the bus to close, call "
                "stop() to end them sooner"
            )
        return self._final_results()

    def stop(self, *, drain: bool = False, timeout: float | None = STOP_GRACE
             ) -> list[WorkerResult]:
        """Ask every worker to leave the bus and exit; their results.

        A worker leaves after its current event, or with `drain` once its ring is empty
        (so after every event whose `emit` returned before this call). Workers still
        running after `timeout` seconds (None: no limit) are sent SIGTERM, which
        interrupts their handler and exits them by that signal; SIGKILL follows after
        `TERM_GRACE`.
        """
        self._check_started()
        try:
            for worker in self._workers:
                if not worker.finished():
                    worker.ask(_DRAIN if drain else _STOP_NOW)
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._await_finish(deadline):
                self._force_stop()
        except BaseException:
            self._force_stop()  # e.g. Ctrl-C while waiting: no worker may outlive it
            raise
        return self._final_results()

    def check(self) -> None:
        """Raise the error of the first worker (by index) that failed so far, if any."""
        for result in self.results:
            if result.error is not None:
                raise result.error

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop(drain=True, timeout=None)
        else:
            self.stop()

    def __repr__(self) -> str:
        running = sum(not w.finished() for w in self._workers)
        return (f"<shmbus.WorkerPool bus={self._bus_name!r} workers={self._size} "
                f"running={running}>")

    # -- starting -----------------------------------------------------------------------

    def _check_handler_travels(self) -> None:
        if self._context.get_start_method() != "spawn":
            return  # a fork child has the handler already
        try:
            multiprocess.reduction.ForkingPickler.dumps(self._handler)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle the handler {self._handler!r} for 'spawn' workers: {exc}. "
                "Use start_method='fork', or a handler whose closure holds only "
                "picklable data; no worker was started"
            ) from exc

    def _launch(self, index: int) -> "_WorkerHandle":
        ours, theirs = self._context.Pipe(duplex=True)
        spec = _WorkerSpec(self._bus_name, self._handler, index, self._capacity,
                           parent_pid=os.getpid())
        process = self._context.Process(
            target=_worker_main, args=(spec, theirs),
            name=f"shmbus-worker-{index}", daemon=False,
        )
        try:
            process.start()
        finally:
            # Only the worker may hold its end: once it exits, ours reads end-of-file.
            # Closed before the next fork, so no sibling inherits it either.
            theirs.close()
        return _WorkerHandle(index, process, ours, self._bus_name)

    def _await_subscriptions(self, deadline: float) -> None:
        while True:
            waiting = [w for w in self._workers if not w.subscribed()]
            if not waiting:
                return
            for worker in waiting:
                failure = worker.start_failure()
                if failure is not None:
                    raise failure
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                subscribed = self._size - len(waiting)
                raise Timeout(
                    f"only {subscribed} of {self._size} workers had subscribed to bus "
                    f"{self._bus_name!r} after {self._start_timeout} s; is the machine "
                    "overloaded? Pass a longer start_timeout"
                )
            wait_for_any([x for w in waiting for x in w.waitables()], remaining)

    # -- finishing ----------------------------------------------------------------------

    def _check_started(self) -> None:
        if not self._workers:
            raise ShmBusError("this WorkerPool has not been started; call start() first")

    def _await_finish(self, deadline: float | None) -> bool:
        """Whether every worker finished before `deadline` (None: wait as long as it takes)."""
        while True:
            running = [w for w in self._workers if not w.finished()]
            if not running:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait_for_any([x for w in running for x in w.waitables()], remaining)

    def _force_stop(self) -> None:
        """SIGTERM every running worker, then SIGKILL those that outstay `TERM_GRACE`."""
        running = [w for w in self._workers if not w.finished()]
        for worker in running:
            worker.signal(signal.SIGTERM)
        if not self._await_finish(time.monotonic() + TERM_GRACE):
            for worker in self._workers:
                if not worker.finished():
                    worker.signal(signal.SIGKILL)
            self._await_finish(None)  # SIGKILL cannot be refused
        self._final_results()

    def _final_results(self) -> list[WorkerResult]:
        results = [w.result for w in self._workers if w.result is not None]
        assert len(results) == len(self._workers), "called before every worker finished"
        if not self._swept and any(w.left_traces() for w in self._workers):
            # A worker that did not leave the bus itself left its ring; its lock died
            # with it, so the sweep can tell, and removes it.
            self._swept = True
            cleanup()
        _live_pools.discard(self)
        return results


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while starting or stopping workers: it is the parent's to handle."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSpec:
    bus_name: str
    handler: Handler
    index: int
    capacity: int | None
    parent_pid: int


@dataclass(frozen=True)
class _RemoteError:
    """A worker's exception as it crosses the pipe: pickled if possible, and as text."""

    pickled: bytes | None
    summary: str
    traceback: str

    @classmethod
    def capture(cls, exc: BaseException) -> "_RemoteError":
        text = "".join(traceback.format_exception(exc))
        try:
            pickled: bytes | None = _codec.encode(exc)
        except SerializationError:
            pickled = None
        return cls(pickled, f"{type(exc).__qualname__}: {exc}", text)

    def recreate(self, who: str) -> BaseException:
        """The exception again, its `__cause__` a `WorkerError` with the remote traceback."""
        if self.pickled is not None:
            try:
                exc = _codec.decode(self.pickled)
            except DeserializationError:
                exc = None
            if isinstance(exc, BaseException):
                exc.__cause__ = WorkerError(
                    f"{who} raised this; its traceback:\n\n{self.traceback}", self.traceback
                )
                return exc
        return WorkerError(
            f"{who} raised {self.summary}, which could not be re-created here; its "
            f"traceback:\n\n{self.traceback}",
            self.traceback,
        )


@dataclass
class _Report:
    """What a worker sends back once, as it exits."""

    handled: int = 0
    end_reason: EndReason | None = None
    error: _RemoteError | None = None
    stopped_by: int | None = None


# -- the parent's view of one worker ------------------------------------------------------


class _WorkerHandle:
    def __init__(self, index: int, process: Any, conn: Any, bus_name: str) -> None:
        self.index = index
        self.process = process
        self.pid: int = process.pid
        self._conn = conn
        self._bus_name = bus_name
        self._subscribed = False
        self._report: _Report | None = None
        self._eof = False
        self.result: WorkerResult | None = None

    def subscribed(self) -> bool:
        self._absorb()
        return self._subscribed

    def start_failure(self) -> BaseException | None:
        """Why this worker will never subscribe, once it has exited without doing so."""
        if not self.finished() or self._subscribed:
            return None
        if self._report is not None and self._report.error is not None:
            return self._report.error.recreate(self._who())
        return WorkerError(
            f"{self._who()} {exit_phrase(self.result.exitcode if self.result else None)} "
            "before it subscribed "
            f"to bus {self._bus_name!r}"
        )

    def finished(self) -> bool:
        """Whether the worker exited; its `result` is then set. Never waits."""
        if self.result is not None:
            return True
        self._absorb()
        if self.process.exitcode is None:
            return False
        self._absorb()  # whatever it wrote before it exited
        self.result = self._conclude(self.process.exitcode)
        self._conn.close()
        self._eof = True
        self.process.close()  # its sentinel too: a finished pool holds no descriptor
        return True

    def waitables(self) -> list[Any]:
        """What `connection.wait` should watch for news of this worker."""
        return [self.process.sentinel] if self._eof else [self.process.sentinel, self._conn]

    def ask(self, request: str) -> None:
        with contextlib.suppress(OSError):  # it is exiting already
            self._conn.send(request)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def left_traces(self) -> bool:
        """Whether the worker may have exited still subscribed."""
        return self._report is None or self._report.stopped_by is not None

    def _absorb(self) -> None:
        """Read every message the worker has sent, without waiting."""
        while not self._eof and self._conn.poll():
            try:
                message = self._conn.recv()
            except Exception:  # end of file, or a message cut short by a kill
                self._eof = True
                return
            if message == _SUBSCRIBED:
                self._subscribed = True
            elif isinstance(message, _Report):
                self._report = message

    def _conclude(self, exitcode: int) -> WorkerResult:
        report = self._report
        if report is None:
            return WorkerResult(self.index, self.pid, exitcode, None, None, WorkerError(
                f"{self._who()} {exit_phrase(exitcode)} without reporting; how many "
                "events it handled is unknown"
            ))
        error: BaseException | None = None
        if report.error is not None:
            error = report.error.recreate(self._who())
        elif exitcode != 0:
            error = WorkerError(
                f"{self._who()} {exit_phrase(exitcode)} after handling {report.handled} "
                "events" + (", inside its handler or while leaving the bus"
                            if report.stopped_by is not None else "")
            )
        return WorkerResult(self.index, self.pid, exitcode, report.handled,
                            report.end_reason, error)

    def _who(self) -> str:
        return f"worker {self.index} (pid {self.pid}) on bus {self._bus_name!r}"


def exit_phrase(code: int | None) -> str:
    """How a worker process ended, to follow its name: "was killed by SIGKILL"."""
    if code is None:
        return "is still running"
    if code < 0:  # multiprocess's way of saying "killed by signal -code"
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


# -- the worker process -------------------------------------------------------------------


class _Stopped(BaseException):
    """Raised in a worker by SIGTERM, or by SIGHUP once its parent is gone.

    A BaseException, like KeyboardInterrupt, so that a handler's `except Exception`
    cannot swallow it, and the subscription (interrupt-safe) is still closed by `with`.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _worker_main(spec: _WorkerSpec, conn: Any) -> None:
    global _worker_index
    _worker_index = spec.index
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_if_orphaned(spec.parent_pid))
    _platform.ask_for_signal_on_parent_death(signal.SIGHUP)  # if not, getppid() below
    report = _Report()
    try:
        try:
            if os.getppid() == spec.parent_pid:  # it may have died before the line above
                _subscribe_and_serve(spec, conn, report)
        finally:
            _default_stop_signals()
    except _Stopped as stopped:  # at most one: its handler restored the defaults
        report.stopped_by = stopped.signum
    # From here a stop signal takes its default course: it can only cut the report
    # short, which the pool reads as "no report".
    if os.getppid() == spec.parent_pid:  # nobody would read it, and it could block
        with contextlib.suppress(OSError):
            conn.send(report)
    if report.stopped_by == signal.SIGTERM:
        _exit_by(signal.SIGTERM)  # as terminate() would have, but off the bus
    sys.exit(1 if report.error is not None else 0)


def _exit_by(signum: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # what the handler printed; the default death would not
    os.kill(os.getpid(), signum)


def _stop_on_signal(signum: int, frame: Any) -> None:
    _default_stop_signals()  # once is enough; a second stop signal kills
    raise _Stopped(signum)


def _default_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _stop_if_orphaned(parent_pid: int) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        # Also sent when the thread that started this worker exits while the process
        # lives on; only a new parent means the pool's process is gone.
        if os.getppid() != parent_pid:
            _stop_on_signal(signum, frame)
    return handler


def _subscribe_and_serve(spec: _WorkerSpec, conn: Any, report: _Report) -> None:
    try:
        sub = subscribe_local(spec.bus_name, capacity=spec.capacity)
    except Exception as exc:
        report.error = _RemoteError.capture(exc)
        return
    try:
        with sub:
            with _signals_deferred():  # a stop must not cut the message in half
                conn.send(_SUBSCRIBED)
            _serve(sub, spec, conn, report)
    except Exception as exc:  # from the bus, e.g. an event that cannot be unpickled here
        report.error = _RemoteError.capture(exc)
    finally:
        report.end_reason = sub.end_reason


def _serve(sub: Any, spec: _WorkerSpec, conn: Any, report: _Report) -> None:
    """Call the handler on every event until the stream ends, it fails, or we are told."""
    draining = False
    next_look = 0.0
    while True:
        now = time.monotonic()
        if now >= next_look:
            next_look = now + CHECK_INTERVAL
            if os.getppid() != spec.parent_pid:
                return
            request = _stop_request(conn)
            if request == _STOP_NOW:
                return
            draining = draining or request == _DRAIN
        try:
            event = sub.recv(timeout=0 if draining else CHECK_INTERVAL)
        except Timeout:
            if draining:
                return
            continue
        except Closed:
            return
        try:
            spec.handler(event)
        except _Stopped:
            raise
        except BaseException as exc:
            report.error = _RemoteError.capture(exc)
            return
        report.handled += 1


def _stop_request(conn: Any) -> str | None:
    try:
        if conn.poll():
            request: str = conn.recv()
            return request
    except (EOFError, OSError):
        return _STOP_NOW  # the pool's end of the pipe is gone
    return None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    stops = {signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -- interpreter exit ---------------------------------------------------------------------

_live_pools: set[WorkerPool] = set()
"""Started pools not yet joined or stopped. Not weak: a pool dropped while its workers
run must still be stopped at exit."""


@atexit.register
def _stop_live_pools() -> None:
    # Registered after multiprocess's own exit hook, so it runs first: that hook joins
    # non-daemonic children, and would wait for the bus to close.
    for pool in list(_live_pools):
        if pool._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.stop()
