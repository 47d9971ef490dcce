"""`shmbus demo`: emit numbered events to subscriber processes and check they all arrive.

## Shape

This process creates a bus and emits M numbered events; N worker processes each
subscribe and check that they see every number, in order. Worker 0 sleeps S ms per
event, so its ring fills and `emit` blocks on it: the progress bar advances at the slow
worker's pace, which is backpressure made visible. Each worker reports what it saw
through a queue, and the exit status is 0 only if every worker received every event in
order.

## Why the demo is shaped this way

- Workers are module-level functions that are given only the bus name and subscribe
  themselves, so they work under "spawn" and "forkserver" as well as "fork": a
  subscription is owned by the process that made it and cannot be handed to a child.
- The emitter waits until every worker has subscribed before it emits, because a
  subscription receives only events emitted after `subscribe()` returned.
- Ctrl-C is the parent's business. Workers ignore SIGINT (the terminal sends it to the
  whole process group) and are stopped by the parent, so that each one closes its own
  subscription and no traceback from a child lands on the user's terminal. Teardown
  always runs: the emitter is closed, workers are joined, terminated or killed, and a
  sweep removes whatever a killed worker left in /dev/shm.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import multiprocess
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

import shmbus
from shmbus._pool import exit_phrase, sigint_ignored

from ._common import EXIT_FAILED, EXIT_OK, CommandFailed

SUBSCRIBE_TIMEOUT = 30.0
"""How long the demo waits for its workers to subscribe. Starting a worker under "spawn"
takes a fresh interpreter and imports; on a loaded 2-core machine that is seconds."""

REPORT_GRACE = 10.0
"""After the bus closes, how long the workers get to drain their rings and report, on top
of what the slow worker needs to sleep through a full ring."""

STOP_GRACE = 3.0
"""How long a worker asked to stop (SIGTERM) gets to close its subscription before it is
killed."""

MAX_SUBSCRIBERS = 64
"""Each subscriber is a process; past this the demo shows process start-up, not the bus."""


class DemoFailed(CommandFailed):
    """The demo could not run (a worker never subscribed); not a bug in shmbus."""


def add_command(commands: Any) -> None:
    """Add `demo` to the `shmbus` command's subparsers."""
    demo = commands.add_parser(
        "demo",
        help="emit numbered events to subscriber processes and check they all arrive in order",
        description="One emitter in this process fans numbered events out to N subscriber "
        "processes; subscriber 0 is slow, so emit is throttled to its pace (backpressure). "
        "Exits 0 only if every subscriber received every event in order.",
    )
    demo.add_argument("--subscribers", type=int, default=3, metavar="N",
                      help="subscriber processes to start (default: 3)")
    demo.add_argument("--events", type=int, default=2000, metavar="M",
                      help="events to emit (default: 2000)")
    demo.add_argument("--capacity", type=int, default=64, metavar="C",
                      help="ring slots per subscriber (default: 64)")
    demo.add_argument("--slow-ms", type=float, default=1.0, metavar="S",
                      help="milliseconds subscriber 0 sleeps per event (default: 1.0)")
    demo.add_argument("--start-method", choices=multiprocess.get_all_start_methods(),
                      default=_default_start_method(),
                      help="how worker processes are started (default: %(default)s)")
    demo.set_defaults(command=run_demo)


def _default_start_method() -> str:
    # fork is the cheapest on Linux; elsewhere forking a process with threads is unsafe.
    return "fork" if sys.platform.startswith("linux") else "spawn"


@dataclass(frozen=True)
class DemoSettings:
    subscribers: int
    events: int
    capacity: int
    slow_ms: float
    start_method: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoSettings":
        """The demo's settings, or ValueError naming the option that is out of range."""
        if not 1 <= args.subscribers <= MAX_SUBSCRIBERS:
            raise ValueError(
                f"--subscribers must be between 1 and {MAX_SUBSCRIBERS}, got {args.subscribers}"
            )
        if args.events < 0:
            raise ValueError(f"--events must be 0 or more, got {args.events}")
        if not (math.isfinite(args.slow_ms) and args.slow_ms >= 0):
            raise ValueError(f"--slow-ms must be a finite number >= 0, got {args.slow_ms}")
        # --capacity is checked by EventEmitter itself, which knows the platform's limit.
        return cls(args.subscribers, args.events, args.capacity, args.slow_ms,
                   args.start_method)


# -- demo: the worker side ----------------------------------------------------------


@dataclass
class WorkerReport:
    """What one subscriber process saw, sent back to the demo through a queue."""

    index: int
    pid: int
    received: int = 0
    first_disorder: str | None = None
    error: str | None = None
    end: str | None = None

    @property
    def in_order(self) -> bool:
        return self.first_disorder is None


class _Stopped(Exception):
    """Raised in a worker by SIGTERM: the demo is tearing down early."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once is enough; a second one kills
    raise _Stopped()


def _subscriber_worker(bus_name: str, index: int, delay: float, reports: Any) -> None:
    """A demo subscriber: receive until the bus closes, checking order; report back."""
    # The terminal's Ctrl-C reaches every process in the group; the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # An exception, unlike the default SIGTERM death, lets `with` close the subscription.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    report = WorkerReport(index=index, pid=os.getpid())
    try:
        with shmbus.subscribe(bus_name) as sub:
            for event in sub:
                _check_order(report, event)
                if delay:
                    time.sleep(delay)
            end = sub.end_reason
            report.end = end.value if end is not None else None
    except _Stopped:
        report.error = "stopped before the bus closed"
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        # Only the subscription needed the exception. A SIGTERM from here on (the
        # parent gave up waiting) must not land a traceback inside the queue's thread.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        reports.put(report)


def _check_order(report: WorkerReport, event: Any) -> None:
    expected = report.received
    report.received += 1
    seq = event.get("seq") if isinstance(event, dict) else None
    if seq != expected and report.first_disorder is None:
        report.first_disorder = f"event {expected} had seq {seq!r}"


# -- demo: the emitter side ---------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings.from_args(args)
    out = Console(highlight=False)
    context = multiprocess.get_context(settings.start_method)
    reports = context.Queue()
    workers: list[Any] = []
    emitter = shmbus.EventEmitter(capacity=settings.capacity)
    finished = False
    try:
        workers = _start_workers(context, emitter.name, settings, reports)
        _await_subscribers(emitter, workers, reports, SUBSCRIBE_TIMEOUT)
        started = time.perf_counter()
        _emit_all(emitter, settings.events, out)
        emitted = time.perf_counter() - started
        emitter.close()  # the end of the stream: every worker drains its ring and reports
        drain = REPORT_GRACE + settings.capacity * settings.slow_ms / 1000
        received = _collect_reports(reports, workers, drain)
        delivered = time.perf_counter() - started
        finished = True
    finally:
        with sigint_ignored():  # a second Ctrl-C must not strand the teardown
            emitter.close()
            _stop_workers(workers, grace=REPORT_GRACE if finished else 0.0)
    ok = _print_summary(out, settings, workers, received, emitted, delivered)
    return EXIT_OK if ok else EXIT_FAILED


def _start_workers(context: Any, bus_name: str, settings: DemoSettings,
                   reports: Any) -> list[Any]:
    workers = []
    # Started with SIGINT ignored, the children inherit that (through exec too, for
    # spawn), so a Ctrl-C during their start-up cannot print a child's traceback.
    with sigint_ignored():
        for index in range(settings.subscribers):
            delay = settings.slow_ms / 1000 if index == 0 else 0.0
            worker = context.Process(
                target=_subscriber_worker, args=(bus_name, index, delay, reports),
                name=f"shmbus-demo-subscriber-{index}", daemon=True,
            )
            worker.start()
            workers.append(worker)
    return workers


def _await_subscribers(emitter: shmbus.EventEmitter, workers: list[Any], reports: Any,
                       timeout: float) -> None:
    """Return once every worker has subscribed; DemoFailed if one dies or time runs out."""
    deadline = time.monotonic() + timeout
    while emitter.subscriber_count < len(workers):
        for index, worker in enumerate(workers):
            if not worker.is_alive():
                reason = _reason_from(reports) or "worker " + exit_phrase(worker.exitcode)
                raise DemoFailed(
                    f"subscriber {index} could not subscribe to bus {emitter.name!r}: {reason}"
                )
        if time.monotonic() >= deadline:
            raise DemoFailed(
                f"only {emitter.subscriber_count} of {len(workers)} subscribers had "
                f"subscribed to bus {emitter.name!r} after {timeout:.0f} s; is the machine "
                "overloaded?"
            )
        time.sleep(0.02)


def _reason_from(reports: Any) -> str | None:
    # A worker that failed to subscribe reported why before it exited; one that died
    # outright reported nothing.
    try:
        report = reports.get(timeout=1.0)
    except queue.Empty:
        return None
    error: str | None = report.error
    return error


def _emit_all(emitter: shmbus.EventEmitter, count: int, out: Console) -> None:
    # Advancing the bar per event would cost more than the emit itself when nobody is
    # slow; a few hundred steps are as smooth as the eye can see.
    step = max(1, count // 500)
    with Progress(
        TextColumn("emitting"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        _RateColumn(), TimeElapsedColumn(), console=out,
    ) as progress:
        task = progress.add_task("emit", total=count)
        for seq in range(count):
            emitter.emit({"seq": seq, "payload": f"event {seq}"})
            if (seq + 1) % step == 0:
                progress.update(task, completed=seq + 1)
        progress.update(task, completed=count)


class _RateColumn(ProgressColumn):
    """Events per second: rich's own speed column assumes bytes."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "", style="progress.data.speed")


def _collect_reports(reports: Any, workers: list[Any], timeout: float
                     ) -> dict[int, WorkerReport]:
    """Every worker's report, or as many as arrive before the deadline."""
    received: dict[int, WorkerReport] = {}
    deadline = time.monotonic() + timeout
    while len(received) < len(workers) and time.monotonic() < deadline:
        try:
            report = reports.get(timeout=0.2)
        except queue.Empty:
            # A worker that exited has flushed its report already: none is coming.
            if all(not w.is_alive() for i, w in enumerate(workers) if i not in received):
                break
            continue
        received[report.index] = report
    return received


def _stop_workers(workers: list[Any], grace: float) -> None:
    """Join every worker; terminate, then kill, those that outstay `grace`."""
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    lingering = [w for w in workers if w.is_alive()]
    for worker in lingering:
        worker.terminate()
    for worker in lingering:
        worker.join(STOP_GRACE)
    killed = [w for w in lingering if w.is_alive()]
    for worker in killed:
        worker.kill()
        worker.join()
    if lingering:
        # A worker stopped mid-way may not have removed its ring; its flock died with it,
        # so the sweep can tell it is dead and remove what it left.
        shmbus.cleanup()


def _print_summary(out: Console, settings: DemoSettings, workers: list[Any],
                   received: dict[int, WorkerReport], emitted: float,
                   delivered: float) -> bool:
    """Print the per-subscriber table and totals; whether every subscriber was perfect."""
    table = Table(title="Subscribers", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("pace", no_wrap=True)
    table.add_column("result")
    all_ok = True
    for index, worker in enumerate(workers):
        report = received.get(index)
        ok, result = _describe(report, worker, settings.events)
        all_ok = all_ok and ok
        pace = f"slow, {settings.slow_ms:g} ms/event" if index == 0 and settings.slow_ms else "fast"
        pid = str(report.pid if report else worker.pid)
        table.add_row(str(index), pid, pace, Text(result, style="green" if ok else "red"))
    out.print(table)
    rate = settings.events / delivered if delivered > 0 else 0.0
    out.print(
        f"{settings.events} events to {len(workers)} subscribers: emitted in {emitted:.2f} s, "
        f"all delivered in {delivered:.2f} s ({rate:,.0f} events/s)",
        soft_wrap=True,
    )
    if all_ok:
        out.print("[green]OK[/]: every subscriber received every event, in order")
    else:
        out.print("[red]FAILED[/]: not every subscriber received every event in order")
    return all_ok


def _describe(report: WorkerReport | None, worker: Any, expected: int) -> tuple[bool, str]:
    """Whether one subscriber got everything in order, and a phrase saying what it got."""
    if report is None:
        return False, f"no report: worker {exit_phrase(worker.exitcode)}"
    got = f"received {report.received} of {expected}"
    if report.error is not None:
        return False, f"{got}, then {report.error}"
    if not report.in_order:
        return False, f"{got}, out of order: {report.first_disorder}"
    if report.end != shmbus.EndReason.CLOSED.value:
        return False, f"{got}, stream ended: {report.end}"
    if report.received != expected:
        return False, f"{got}, some missing"
    return True, f"{got}, in order"
