"""One measurement: one system, one emitter process, N subscriber processes, one job.

## Shape

The harness process forks (the `fork` start method) an emitter, waits until it has
opened its end, forks the subscribers, waits until each has opened its end, then lets
the emitter go. The emitter sends `warmup` events, and waits until every subscriber has
them all: a system's first pass over its buffers and pools pays page faults that its
steady state does not (iceoryx2's 258 preallocated samples per subscriber, faster-fifo's
ring), and a short run would time mostly that. Then it sends the `n` measured events
(as fast as it can, or spaced for latency) and reports the `perf_counter()` of the
first; each subscriber checks every event (`verify.OrderVerifier`) and reports the
`perf_counter()` of its last receipt, plus one-way latencies. Only then is the emitter
told to close its end, so no system can be credited with events still in flight when it
tears down. Throughput is `n / (last receipt of the slowest subscriber - first measured
emit)`; `perf_counter` is one clock for every process on Linux and macOS.

Each child reports over a pipe of its own. The harness waits on every child's pipe at
once, so a child that fails or dies (its pipe closes) is noticed at once, whatever phase
the others are in; every child is killed and reaped in a `finally`, then the system's
`cleanup` runs, whatever happened. A measurement whose children reported an error, lost
an event, stalled or died raises `MeasurementFailed`: there is no figure for it.

CPU, per process: `time.process_time()` (user + system, every thread of the process,
so a library's own I/O threads count) read where the measured part starts and ends:
the emitter from the end of the warm-up until every subscriber is done (its queues and
threads may still be sending after its last emit returns), each subscriber from the
end of its warm-up to its last receipt. Their sum over the measured events is the CPU
an event costs the whole job, whichever process pays it: a system that is fast on
spare cores but burns them shows here.

Memory, per process: RSS (psutil) right after the fork, after the warm-up and at the
end (their difference is the growth over the measured events), and the kernel's
high-water mark (`ru_maxrss`; psutil has no peak, and sampling would miss short spikes). Forked children start with the harness's
pages mapped, so the figures include the harness process's baseline (reported too). A
thread samples /dev/shm (Linux) every 20 ms for the bytes the run's objects occupy there
(only shmbus and iceoryx2 name objects there; faster-fifo's buffer is an unlinked file,
counted in RSS).

## Why processes are forked from here and not spawned

Spawn would re-import everything in each child and make the measurement wait on that; a
fork starts a child in milliseconds and the adapters can hand over queues that only a
fork can share (`multiprocessing.Queue`, faster-fifo).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import multiprocess
from multiprocess import connection

from benchmarks.systems import BATCH, STALL_SECONDS, EmitterPort, ReceiverPort, System
from benchmarks.verify import DeliveryError, OrderVerifier
from benchmarks.workloads import Workload

try:
    import psutil
except ImportError:  # RSS samples become None; the peak comes from getrusage
    psutil = None

BACKSTOP_SECONDS = 600.0
"""A phase taking longer than this is a hang, even if no child noticed."""
SETUP_SECONDS = 60.0
SHM_DIR = "/dev/shm"
SHM_SAMPLE_SECONDS = 0.02


class MeasurementFailed(Exception):
    """A measurement produced no valid figure: events lost or reordered, a stall, a crash."""


@dataclass(frozen=True)
class Job:
    """What the emitter does: `warmup` events, then `events` measured ones, back to back
    or at least `interval` seconds apart."""

    events: int
    warmup: int = 0
    """Leading events delivered and verified but not measured: they fault in each
    system's buffers and pools, so that no system is timed on its cold start."""
    interval: float | None = None


def measure(system_class: type[System], workload: Workload, subscribers: int, job: Job,
            bound: int = 256) -> dict[str, Any]:
    """Run `job` once on a fresh instance of the system; raw figures of that run."""
    system = system_class(subscribers, workload, bound)
    context = multiprocess.get_context("fork")
    phases = _Phases(context)
    children: list[_Child] = []
    shm_before = _shm_names()
    sampler: _ShmSampler | None = None
    failed = True
    system.prepare()
    try:
        address = _start(context, system, job, phases, children)
        sampler = _ShmSampler(shm_before, system.shm_prefixes(address))
        reports = _drive(phases, job, children)
        failed = False
    finally:
        if sampler is not None:
            sampler.stop()
        for child in children:
            child.kill()
        system.cleanup(failed)
    emitter, *receivers = children
    seconds = max(reports[r]["end"] for r in receivers) - reports[emitter]["start"]
    cpu = {"emitter": reports[emitter]["cpu_seconds"],
           "subscribers": [reports[r]["cpu_seconds"] for r in receivers]}
    return {
        "seconds": seconds,
        "events_per_s": job.events / seconds,
        "cpu_seconds": cpu,
        "cpu_us_per_event": (cpu["emitter"] + sum(cpu["subscribers"])) / job.events * 1e6,
        "latencies_ns": reports[receivers[0]]["latencies_ns"],
        "rss": {
            "harness": _rss(),
            "emitter": reports[emitter]["rss"],
            "subscribers": [reports[r]["rss"] for r in receivers],
        },
        "shm_peak_bytes": sampler.peak,
        "bound": system.bound_note(),
    }


def _start(context: Any, system: System, job: Job, phases: "_Phases",
           children: list["_Child"]) -> Any:
    """Fork the emitter, then the subscribers, each once the one before has opened its
    end; `children` gets them in that order. The emitter's address."""
    emitter = _Child(context, "emitter", _emitter_main, system, job, phases)
    children.append(emitter)
    address = _await({emitter: "ready"}, children, SETUP_SECONDS)[emitter]
    for index in range(system.subscribers):
        children.append(_Child(context, f"subscriber {index}", _subscriber_main,
                               system, index, address, job))
    _await({r: "ready" for r in children[1:]}, children, SETUP_SECONDS)
    return address


def _drive(phases: "_Phases", job: Job, children: list["_Child"]) -> dict["_Child", Any]:
    """Take the children through warm-up, measured events and close; every child's
    figures: the emitter's start, RSS and CPU, each subscriber's end, latencies, RSS and
    CPU."""
    emitter, *receivers = children
    phases.go.set()
    if job.warmup:
        _await({r: "warm" for r in receivers}, children, BACKSTOP_SECONDS)
    phases.timed.set()
    reports = _await({emitter: "emitted", **{r: "done" for r in receivers}}, children,
                     BACKSTOP_SECONDS)
    phases.finish.set()
    reports[emitter] = {**reports[emitter],
                        **_await({emitter: "done"}, children, SETUP_SECONDS)[emitter]}
    for child in children:
        child.process.join(SETUP_SECONDS)
    return reports


class _Phases:
    """The harness's signals to the emitter: start the warm-up, start the measured
    events (every subscriber has the warm-up), close (every subscriber is done)."""

    def __init__(self, context: Any) -> None:
        self.go, self.timed, self.finish = context.Event(), context.Event(), context.Event()

    @staticmethod
    def wait(event: Any, what: str) -> None:
        if not event.wait(BACKSTOP_SECONDS):
            raise TimeoutError(f"the harness never said {what}")


class _Child:
    """A forked process with a pipe it reports on."""

    def __init__(self, context: Any, role: str, main: Callable[..., None], *args: Any) -> None:
        self.role = role
        self.finished = False
        self.reader, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_child_main, args=(writer, main, *args),
                                       name=f"bench {role}", daemon=True)
        self.process.start()
        writer.close()  # before the next fork, so only this child holds the write end

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(SETUP_SECONDS)
        self.reader.close()


def _await(due: dict[_Child, str], children: list[_Child], timeout: float) -> dict[_Child, Any]:
    """The report each child in `due` owes; MeasurementFailed as soon as any child of
    `children` fails, dies or speaks out of turn, or when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    reports: dict[_Child, Any] = {}
    watched = {child.reader: child for child in children if not child.finished}
    while len(reports) < len(due):
        left = deadline - time.monotonic()
        if left <= 0:
            late = ", ".join(f"'{kind}' from {child.role}" for child, kind in due.items()
                             if child not in reports)
            raise MeasurementFailed(f"no {late} within {timeout:.0f} s: hung")
        for reader in connection.wait(list(watched), timeout=left):
            child = watched[reader]
            try:
                got, payload = reader.recv()
            except EOFError:
                del watched[reader]
                if child.finished:
                    continue  # it said all it had to, then exited
                child.process.join(1)
                raise MeasurementFailed(
                    f"{child.role} exited (code {child.process.exitcode}) before it was done"
                ) from None
            if got == "error":
                raise MeasurementFailed(f"{child.role}: {payload}")
            if due.get(child) != got or child in reports:
                raise MeasurementFailed(f"{child.role} sent '{got}' out of turn")
            reports[child] = payload
            child.finished = got == "done"
    return reports


def _child_main(conn: Any, main: Callable[..., None], *args: Any) -> None:
    # A thread of the harness (a progress bar, say) may have held a stream's lock at the
    # fork; fresh stream objects keep this child's exit from waiting on it forever.
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    # Ctrl-C is the harness's to handle (it kills and cleans up after every child); a
    # child's own KeyboardInterrupt would only print a traceback mid-table.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        main(conn.send, *args)
    except DeliveryError as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _emitter_main(send: Callable[[Any], None], system: System, job: Job,
                  phases: _Phases) -> None:
    # No try/finally around the port: after a failure the error report must go out
    # first, and closing (zmq's term, a queue's flush) could wait forever on a receiver
    # that is gone. The harness kills this process and runs the system's cleanup.
    after_fork = _rss()
    body = system.workload.make_body()
    port, address = system.open_emitter()
    send(("ready", address))
    phases.wait(phases.go, "go")
    port.start()
    _emit(port, system, job, body, range(job.warmup))
    phases.wait(phases.timed, "the warm-up is over")
    warm = _rss()
    cpu = time.process_time()
    start = time.perf_counter()
    _emit(port, system, job, body, range(job.warmup, job.warmup + job.events))
    end = _rss()
    send(("emitted", {"start": start}))
    phases.wait(phases.finish, "finish")
    cpu = time.process_time() - cpu
    port.close()
    send(("done", {"rss": _rss_figures(after_fork, warm, end), "cpu_seconds": cpu}))


def _emit(port: EmitterPort, system: System, job: Job, body: Any, seqs: range) -> None:
    make, clock = system.workload.event, time.perf_counter_ns
    if job.interval is not None:
        for seq in seqs:
            event = make(seq, clock(), body)
            if system.batched:
                port.emit_many([event])
            else:
                port.emit(event)
            time.sleep(job.interval)  # sleeping, not spinning: a feeder thread needs the GIL
    elif system.batched:
        for first in range(seqs.start, seqs.stop, BATCH):
            port.emit_many([make(seq, clock(), body)
                            for seq in range(first, min(first + BATCH, seqs.stop))])
    else:
        emit = port.emit
        for seq in seqs:
            emit(make(seq, clock(), body))


def _subscriber_main(send: Callable[[Any], None], system: System, index: int, address: Any,
                     job: Job) -> None:
    after_fork = _rss()
    workload = system.workload
    port = system.open_receiver(index, address)
    send(("ready", None))
    verifier = OrderVerifier(job.warmup + job.events, workload.body_field, workload.body_ok)
    _receive(port, verifier, job.warmup, None)
    warm = _rss()
    if job.warmup:
        send(("warm", None))
    latencies: list[int] | None = [] if job.interval is not None else None
    cpu = time.process_time()
    _receive(port, verifier, job.warmup + job.events, latencies)
    end = time.perf_counter()
    cpu = time.process_time() - cpu
    verifier.finish()
    rss = _rss_figures(after_fork, warm, _rss())
    port.close()
    send(("done", {"end": end, "latencies_ns": latencies, "rss": rss, "cpu_seconds": cpu}))


def _receive(port: ReceiverPort, verifier: OrderVerifier, until: int,
             latencies: list[int] | None) -> None:
    """Receive and check events until `until` have arrived, noting latencies if asked."""
    while verifier.received < until:
        events = port.receive(STALL_SECONDS)
        arrived = time.perf_counter_ns()
        if not events:
            raise DeliveryError(
                f"nothing arrived for {STALL_SECONDS:.0f} s after {verifier.received} of "
                f"{verifier.total} events: lost, or the system is stuck"
            )
        for event in events:
            verifier.check(event)
            if latencies is not None:
                latencies.append(arrived - event["ts"])


def _rss() -> int | None:
    return psutil.Process().memory_info().rss if psutil is not None else None


def _rss_figures(after_fork: int | None, warm: int | None, end: int | None) -> dict[str, Any]:
    """One process's memory in bytes: RSS after the fork, after the warm-up, at the end,
    and its peak."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform != "darwin":
        peak *= 1024  # kilobytes on Linux, bytes on macOS
    # The kernel's counters behind the two figures are synced lazily, so the high-water
    # mark can trail a sample taken a moment before by a few pages.
    sampled = [rss for rss in (after_fork, warm, end) if rss is not None]
    return {"after_fork": after_fork, "warm": warm, "end": end, "peak": max([peak, *sampled])}


def _shm_names() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:  # macOS: no /dev/shm to look at
        return set()


class _ShmSampler:
    """Samples, in a thread, the bytes held in /dev/shm by this run's objects.

    Those are the objects new since `before` whose names start with one of `prefixes`
    (other processes on the machine may be creating objects of their own meanwhile).
    No prefixes: the system names nothing in /dev/shm, and `peak` stays None.
    """

    def __init__(self, before: set[str], prefixes: tuple[str, ...]) -> None:
        self.before = before
        self.prefixes = prefixes
        self.peak: int | None = 0 if prefixes and os.path.isdir(SHM_DIR) else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shm sampler", daemon=True)
        if self.peak is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak or 0, self._held())
            if self._stop.wait(SHM_SAMPLE_SECONDS):
                return

    def _held(self) -> int:
        held = 0
        with os.scandir(SHM_DIR) as entries:
            for entry in entries:
                if entry.name in self.before or not entry.name.startswith(self.prefixes):
                    continue
                try:
                    held += entry.stat().st_blocks * 512  # pages in use, not sparse size
                except FileNotFoundError:  # unlinked between listing and stat
                    pass
        return held
