"""A pool of worker processes on one bus, each calling a handler per event.

## Shape

    def handle(job):                        # any callable: lambdas and closures too
        return job["n"] ** 2

    with shmbus.EventEmitter("jobs") as em:
        pool = shmbus.WorkerPool("jobs", handle, workers=4, results=True).start()
        em.emit_many({"n": n} for n in range(1000))
    # the emitter closed: the workers finish what is left and leave
    for seq, value in pool.results():       # in completion order, as they come
        ...
    pool.check()                            # raises the first handler failure, if any

or, as a `with` block that drains the workers at its end:
`with shmbus.WorkerPool("jobs", handle) as pool: ...`.

- **`mode="share"`** (the default) makes the workers one group (`subscribe(name,
  group=...)`): **each event goes to one worker**, the fastest taking more, and an event
  whose worker dies before its handler returned goes to another (so a handler may, in
  that case only, run twice for one event). **`mode="fanout"`** subscribes each worker
  on its own: every worker receives every event, in order, as any subscriber does;
  sharding is then the handler's business (`shmbus.worker_index()`).
- With `results=True`, each handler's return value comes back to this process with the
  event's number, in the order the handlers finished: `pool.results()` yields
  `HandlerResult(seq, value)` until every worker has ended. They are collected by a
  thread as they come, so the workers never wait for the caller to read them; an event
  is finished (acknowledged, in "share" mode) only once its result was sent, so a worker
  killed in between makes its event run again rather than lose its result.
- `start()` returns once every worker has subscribed, so every event emitted after it
  returns reaches the pool. A worker that cannot subscribe (say `BusNotFound`) makes
  `start()` stop the others and raise that worker's exception.
- A worker ends when the stream does (the emitter closed or died, and in "share" mode
  every event is finished), when its handler raises (it reports the failure and leaves
  the bus at once, so it never blocks the emitter; the failed event is finished, not
  handed to the next worker to fail again), or when the pool stops it. `join()` waits
  for the stream to end; `stop()` asks the workers to leave now, or with `drain=True`
  after handling every event already there (which includes every event whose `emit`
  returned before `stop()` was called). Leaving a `with` block normally is
  `stop(drain=True, timeout=None)`; leaving it by an exception is `stop()`.
- Each worker reports a `WorkerResult`: exit code, events handled, how its stream ended,
  and its handler's exception, re-created here with the worker's traceback attached as
  `__cause__` (a `WorkerError`). A worker that died without reporting (SIGKILL, the OOM
  killer) is reported too, with a `WorkerError` saying so. `check()` raises the first
  failure; `worker_results` lists those so far.
- Workers die with the pool's process, even when it is SIGKILLed: they leave the bus and
  exit at once on Linux (a signal interrupts even a busy handler); on macOS within
  `CHECK_INTERVAL` of their handler returning.
- Under "spawn" the usual `multiprocessing` rule applies: the main module must guard its
  own start-up with `if __name__ == "__main__":`, since each worker imports it.

## Why this shape

- Not `multiprocessing.Pool` or `ProcessPoolExecutor`: their task queue is a pipe
  guarded by a lock that a worker killed at the wrong moment keeps forever, and a task
  a dead worker held is lost (Pool) or breaks the whole executor. Here the work queue is
  the bus's own (`_group`): bounded, so a fast producer is paced by the workers, and a
  dead worker's events go to the others.
- Reports and results come back through pipes, one writer each, not a shared
  `multiprocess.Queue`: a queue's writers share a lock, and a worker SIGKILLed while
  holding it would wedge every other worker's report (the hang the bus itself is built
  to avoid). A killed worker's pipe reads as end-of-file, and its exit is seen on the
  process sentinel in the same `connection.wait`.
- Results travel in small batches (`RESULT_BATCH` results, or `RESULT_DELAY` seconds,
  or whenever the worker would wait for an event): one pickle and one write per batch,
  not per event.
- Stopping is a message before it is a signal. A worker reads stop requests between
  events, so a handler is never interrupted mid-event unless it outstays the grace; then
  SIGTERM raises an exception in the worker (not the default death) so that it still
  leaves the bus (giving back, in "share" mode, the event it was handling), and SIGKILL
  comes last. A sweep removes whatever a killed worker left.
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
import collections
import contextlib
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

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
from ._member import subscribe_queue
from ._receiver import EndReason
from ._registry import cleanup, validate_queue_name
from ._subscription import subscribe_local

Handler = Callable[[Any], object]

START_METHODS = ("fork", "spawn")
MODES = ("share", "fanout")

RESULT_BATCH = 16
"""A worker sends its handlers' results at the latest once it has this many..."""
RESULT_DELAY = 0.002
"""...or once the oldest has waited this many seconds, or when it would wait for an
event. In "share" mode their events are finished only then, so this also bounds how many
events a killed worker makes run again."""

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


class HandlerResult(NamedTuple):
    """What `WorkerPool.results()` yields: a handler's return value and the number of
    the event it handled (its number on the bus)."""

    seq: int
    value: Any


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
    """Worker processes on one bus, calling `handler` on its events (see the module
    docstring).

    `mode="share"` (default) deals each event to one worker, `"fanout"` gives every
    worker every event. `workers` processes are started by `start_method` ("fork", the
    default on Linux, or "spawn", the default on macOS). In "share" mode they form the
    group `group` (default: one of the pool's own), whose ring holds `capacity` events
    (default: the bus's); in "fanout" mode each has a ring of `capacity`. With
    `results=True`, `results()` streams the handlers' return values back. The handler
    runs in the workers; `shmbus.worker_index()` tells it which one it is in.
    """

    def __init__(self, bus_name: str, handler: Handler, *, workers: int = 4,
                 mode: str = "share", results: bool = False, group: str | None = None,
                 capacity: int | None = None, start_method: str | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {shown(handler)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidArgument(f"workers must be an int >= 1, got {shown(workers)}")
        if mode not in MODES:
            raise InvalidArgument(
                f"mode must be 'share' (each event to one worker) or 'fanout' (every event "
                f"to every worker), got {shown(mode)}")
        if not isinstance(results, bool):
            raise InvalidArgument(f"results must be True or False, got {shown(results)}")
        if group is not None:
            if mode != "share":
                raise InvalidArgument("group= names the workers' group: mode='share' only")
            validate_queue_name("group", group)
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
        self._mode = mode
        self._group = group if group is not None or mode != "share" else \
            f"pool.{os.getpid()}.{secrets.token_hex(4)}"
        self._capacity = capacity
        self._collector: _Collector | None = _Collector() if results else None
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
    def mode(self) -> str:
        return self._mode

    @property
    def group(self) -> str | None:
        """The workers' group in "share" mode (None in "fanout" mode)."""
        return self._group

    @property
    def worker_results(self) -> list[WorkerResult]:
        """How the workers that have finished so far ended, by index; never waits."""
        return [w.result for w in self._workers if w.finished() and w.result is not None]

    def results(self, timeout: float | None = None) -> Iterator[HandlerResult]:
        """The handlers' results as they come, in the order the handlers finished, each
        with its event's number; the iteration ends once every worker has ended and
        every result was yielded (close the emitter, or `stop()` the pool, to end it).

        Needs `WorkerPool(..., results=True)`. Raises `Timeout` if no result came for
        `timeout` seconds while workers still ran. A failed handler yields nothing: its
        failure is the worker's (`check()`, `join()`).
        """
        collector = self._collector
        if collector is None:
            raise ShmBusError("this WorkerPool does not collect results: make it with "
                              "WorkerPool(..., results=True)")
        self._check_started()
        return collector.stream(timeout, self._bus_name)

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
        for result in self.worker_results:
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
        return (f"<shmbus.WorkerPool bus={self._bus_name!r} mode={self._mode} "
                f"workers={self._size} running={running}>")

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
        results_in = results_out = None
        if self._collector is not None:
            results_in, results_out = self._context.Pipe(duplex=False)
        spec = _WorkerSpec(self._bus_name, self._handler, index, self._capacity,
                           parent_pid=os.getpid(), group=self._group)
        process = self._context.Process(
            target=_worker_main, args=(spec, theirs, results_out),
            name=f"shmbus-worker-{index}", daemon=False,
        )
        try:
            process.start()
        finally:
            # Only the worker may hold its end: once it exits, ours reads end-of-file.
            # Closed before the next fork, so no sibling inherits it either.
            theirs.close()
            if results_out is not None:
                results_out.close()
        if results_in is not None and self._collector is not None:
            self._collector.add(results_in)
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
    group: str | None
    """The workers' group ("share" mode), or None ("fanout")."""


class _Collector:
    """The parent's side of the results: a thread reads every worker's results pipe
    as soon as something is there (so a worker never waits on a caller who is busy
    emitting), into a deque that `stream` yields from."""

    def __init__(self) -> None:
        self._conns: list[Any] = []
        self._ready: collections.deque[HandlerResult] = collections.deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._open = 0

    def add(self, conn: Any) -> None:
        with self._changed:
            self._conns.append(conn)
            self._open += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shmbus-pool-results",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                conns = list(self._conns)
            if not conns:
                return
            for conn in wait_for_any(conns, 0.1):
                try:
                    batch = _codec.decode(conn.recv_bytes())
                except (EOFError, OSError, DeserializationError):
                    with self._changed:  # the worker is gone: it sends no more
                        self._conns.remove(conn)
                        self._open -= 1
                        self._changed.notify_all()
                    conn.close()
                    continue
                with self._changed:
                    self._ready.extend(HandlerResult(seq, value) for seq, value in batch)
                    self._changed.notify_all()

    def stream(self, timeout: float | None, bus_name: str) -> Iterator[HandlerResult]:
        while True:
            with self._changed:
                if not self._ready and self._open:
                    if not self._changed.wait_for(lambda: self._ready or not self._open,
                                                  timeout):
                        raise Timeout(f"no handler result from the pool on bus "
                                      f"{bus_name!r} within {timeout} s")
                if not self._ready:
                    return
                batch = list(self._ready)
                self._ready.clear()
            yield from batch


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


def _worker_main(spec: _WorkerSpec, conn: Any, results: Any = None) -> None:
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
                _subscribe_and_serve(spec, conn, report, _Sender(results))
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


def _subscribe_and_serve(spec: _WorkerSpec, conn: Any, report: _Report,
                         sender: "_Sender") -> None:
    try:
        if spec.group is not None:
            sub: Any = subscribe_queue(spec.bus_name, group=spec.group,
                                       capacity=spec.capacity, auto_ack=False)
        else:
            sub = subscribe_local(spec.bus_name, capacity=spec.capacity)
    except Exception as exc:
        report.error = _RemoteError.capture(exc)
        return
    try:
        with sub:
            with _signals_deferred():  # a stop must not cut the message in half
                conn.send(_SUBSCRIBED)
            try:
                _serve(sub, spec, conn, report, sender)
            finally:
                sender.flush(sub)  # what was handled is finished and reported
    except Exception as exc:  # from the bus, e.g. an event that cannot be unpickled here
        if report.error is None:
            report.error = _RemoteError.capture(exc)
    finally:
        report.end_reason = sub.end_reason
        sender.close()


class _Sender:
    """A worker's side of the results: batches (see `RESULT_BATCH`), sent before the
    events they are for are finished. Without a pipe it only finishes them."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._batch: list[tuple[int, Any]] = []
        self._since = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._batch)

    def add(self, sub: Any, value: Any) -> None:
        if self._conn is None:
            if hasattr(sub, "ack"):
                sub.ack()
            return
        if not self._batch:
            self._since = time.monotonic()
        self._batch.append((sub.last_seq, value))
        if len(self._batch) >= RESULT_BATCH or time.monotonic() - self._since >= RESULT_DELAY:
            self.flush(sub)

    def flush(self, sub: Any) -> None:
        """Send what is batched, then finish its events. A result that cannot be pickled
        fails the worker (SerializationError); its events are finished all the same."""
        batch, self._batch = self._batch, []
        try:
            if batch and self._conn is not None:
                data = _codec.encode(batch)
                with _signals_deferred():  # a stop must not cut the message in half
                    self._conn.send_bytes(data)
        finally:
            if batch and hasattr(sub, "ack") and not sub.closed:
                sub.ack()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()


def _serve(sub: Any, spec: _WorkerSpec, conn: Any, report: _Report, sender: _Sender) -> None:
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
            # Results waiting to be sent bound the wait: they go out within RESULT_DELAY.
            event = sub.recv(timeout=0 if draining else
                             RESULT_DELAY if sender.pending else CHECK_INTERVAL)
        except Timeout:
            if draining:
                return
            sender.flush(sub)  # nothing came: send what waits
            continue
        except Closed:
            return
        try:
            value = spec.handler(event)
        except _Stopped:
            raise
        except BaseException as exc:
            report.error = _RemoteError.capture(exc)
            sender.flush(sub)
            if hasattr(sub, "ack"):
                sub.ack()  # finished, failed: not handed to the next worker to fail again
            return
        report.handled += 1
        sender.add(sub, value)


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
