"""`shmbus demo`: emit numbered events to a `WorkerPool` and check every worker got them all.

## Shape

This process creates a bus and emits M numbered events; a `shmbus.WorkerPool` of N
workers subscribes to it, and each worker's handler (`CheckOrder`) takes the numbers in
order and raises `OutOfOrder` at the first that is not the next one. Worker 0 also
sleeps S ms per event, so its ring fills and `emit` blocks on it: the progress bar
advances at the slow worker's pace, which is backpressure made visible. Closing the
emitter ends every worker's stream; the pool's results then say, per worker, how many
events its handler took, how its stream ended and what failed. The exit status is 0
only if every worker took all M events, in order, and saw the bus close.

## Why a WorkerPool, and not processes of its own

The pool is the library's answer to every hard part of this, so the demo shows it
rather than a second, weaker copy: it starts the workers with Ctrl-C ignored and
returns once each has subscribed (so each gets every event emitted afterwards); it
reports through one pipe per worker, where a shared queue would let a worker killed
while holding the queue's lock wedge every other report; it re-creates a handler's
exception here, and says how a worker that died without reporting died; it stops
workers with a message, then SIGTERM, then SIGKILL, and sweeps what a killed one left;
and its workers die with this process even if it is SIGKILLed.

The pool runs in "fanout" mode, every worker receiving every event (its default,
"share", deals each event to one worker). The demo needs no value back from the handler
(`results=True`): the count is the pool's own `handled`, and the order check is an
exception, which the pool reports like any other failure.

## Ctrl-C

The workers ignore it (the pool's doing: the terminal sends it to the whole process
group). Here it interrupts the emit; the emitter is closed and the pool stopped with a
second Ctrl-C ignored, so that nothing is left behind, and `main` exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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

from ._common import EXIT_FAILED, EXIT_OK

SLOW_WORKER = 0
"""The index of the worker that sleeps `--slow-ms` per event."""

START_METHODS = ("fork", "spawn")
"""The ones `WorkerPool` accepts: a "forkserver" worker could not notice this process die."""

DRAIN_GRACE = 10.0
"""After the bus closes, how long the workers get to drain their rings and exit, on top
of what the slow worker needs to sleep through a full ring."""

MAX_SUBSCRIBERS = 64
"""Each subscriber is a process; past this the demo shows process start-up, not the bus."""


def add_command(commands: Any) -> None:
    """Add `demo` to the `shmbus` command's subparsers."""
    demo = commands.add_parser(
        "demo",
        help="emit numbered events to subscriber processes and check they all arrive in order",
        description="One emitter in this process fans numbered events out to N subscriber "
        "processes (a shmbus.WorkerPool); subscriber 0 is slow, so emit is throttled to "
        "its pace (backpressure). Exits 0 only if every subscriber received every event "
        "in order.",
    )
    demo.add_argument("--subscribers", type=int, default=3, metavar="N",
                      help="subscriber processes to start (default: 3)")
    demo.add_argument("--events", type=int, default=2000, metavar="M",
                      help="events to emit (default: 2000)")
    demo.add_argument("--capacity", type=int, default=64, metavar="C",
                      help="ring slots per subscriber (default: 64)")
    demo.add_argument("--slow-ms", type=float, default=1.0, metavar="S",
                      help="milliseconds subscriber 0 sleeps per event (default: 1.0)")
    demo.add_argument("--start-method", choices=START_METHODS, default=None,
                      help="how worker processes are started (default: WorkerPool's, "
                      "fork on Linux, spawn elsewhere)")
    demo.set_defaults(command=run_demo)


@dataclass(frozen=True)
class DemoSettings:
    subscribers: int
    events: int
    capacity: int
    slow_ms: float
    start_method: str | None

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


# -- the workers' side ------------------------------------------------------------------


class OutOfOrder(Exception):
    """A worker received an event that was not the next in order: the demo has failed."""


@dataclass
class CheckOrder:
    """The workers' handler: events must come numbered 0, 1, 2, ...; the slow one sleeps.

    Each worker has its own copy (forked, or pickled for "spawn"), so `expected` counts
    that worker's events only.
    """

    slow_seconds: float
    expected: int = 0

    def __call__(self, event: Any) -> None:
        seq = event.get("seq") if isinstance(event, dict) else None
        if seq != self.expected:
            raise OutOfOrder(f"event {self.expected} had seq {seq!r}")
        self.expected += 1
        if self.slow_seconds and shmbus.worker_index() == SLOW_WORKER:
            time.sleep(self.slow_seconds)


# -- the emitter's side -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoRun:
    results: list[shmbus.WorkerResult]
    emitted_seconds: float
    """From the first emit until the last one returned."""
    delivered_seconds: float
    """From the first emit until every worker had finished."""


def run_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings.from_args(args)
    out = Console(highlight=False)
    with shmbus.EventEmitter(capacity=settings.capacity) as emitter:
        # "fanout": every worker gets every event, which is what the demo checks.
        pool = shmbus.WorkerPool(emitter.name, CheckOrder(settings.slow_ms / 1000),
                                 workers=settings.subscribers, mode="fanout",
                                 start_method=settings.start_method)
        # Returns once every worker has subscribed; if one cannot, the others are
        # stopped and its exception (the library's words) is raised here.
        pool.start()
        try:
            run = _emit_and_join(emitter, pool, settings, out)
        finally:
            with _sigint_ignored():  # a second Ctrl-C must not strand the teardown
                emitter.close()
                pool.stop()  # at once, after a failure; after a join there is nothing left
    ok = _print_summary(out, settings, run)
    return EXIT_OK if ok else EXIT_FAILED


def _emit_and_join(emitter: shmbus.EventEmitter, pool: shmbus.WorkerPool,
                   settings: DemoSettings, out: Console) -> DemoRun:
    started = time.perf_counter()
    _emit_all(emitter, settings.events, out)
    emitted = time.perf_counter() - started
    emitter.close()  # the end of the stream: every worker drains its ring and exits
    drain = DRAIN_GRACE + settings.capacity * settings.slow_ms / 1000
    try:
        results = pool.join(timeout=drain)
    except shmbus.Timeout:
        results = pool.stop()  # a worker stopped here did not see the bus close: it fails
    return DemoRun(results, emitted, time.perf_counter() - started)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


# -- the summary ------------------------------------------------------------------------


def _print_summary(out: Console, settings: DemoSettings, run: DemoRun) -> bool:
    """Print the per-subscriber table and totals; whether every subscriber was perfect."""
    table = Table(title="Subscribers", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("pace", no_wrap=True)
    table.add_column("result")
    all_ok = True
    for result in run.results:
        ok, what = describe(result, settings.events)
        all_ok = all_ok and ok
        slow = result.index == SLOW_WORKER and settings.slow_ms
        pace = f"slow, {settings.slow_ms:g} ms/event" if slow else "fast"
        table.add_row(str(result.index), str(result.pid), pace,
                      Text(what, style="green" if ok else "red"))
    out.print(table)
    rate = settings.events / run.delivered_seconds if run.delivered_seconds > 0 else 0.0
    out.print(
        f"{settings.events} events to {len(run.results)} subscribers: emitted in "
        f"{run.emitted_seconds:.2f} s, all delivered in {run.delivered_seconds:.2f} s "
        f"({rate:,.0f} events/s)",
        soft_wrap=True,
    )
    if all_ok:
        out.print("[green]OK[/]: every subscriber received every event, in order")
    else:
        out.print("[red]FAILED[/]: not every subscriber received every event in order")
    return all_ok


def describe(result: shmbus.WorkerResult, expected: int) -> tuple[bool, str]:
    """Whether one worker got every event in order, and a phrase saying what it got."""
    if result.handled is None:  # died without reporting: the pool's words say how
        return False, str(result.error)
    got = f"received {result.handled} of {expected}"
    if isinstance(result.error, OutOfOrder):
        return False, f"{got}, out of order: {result.error}"
    if result.error is not None:
        return False, f"{got}, then {type(result.error).__name__}: {result.error}"
    if result.end_reason is not shmbus.EndReason.CLOSED:
        reason = result.end_reason.value if result.end_reason is not None else "never began"
        return False, f"{got}, stream ended: {reason}"
    if result.handled != expected:
        return False, f"{got}, some missing"
    return True, f"{got}, in order"
