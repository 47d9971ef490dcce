"""Work queues: 4 workers taking jobs from one producer, shmbus against its peers.

    python benchmarks/workqueue.py                    # 10 µs and 1 ms jobs, 3 runs each
    python benchmarks/workqueue.py --runs 1 --jobs 5000 500 --json wq.json

## Shape

One producer hands N jobs to 4 worker processes; each job is a busy loop until its
thread has used 10 µs or 1 ms of CPU, and returns its number to the producer. A run ends when the producer holds
all N results. Systems:

- `shmbus-pool`: `shmbus.WorkerPool(mode="share", results=True)` on a bus whose ring
  holds 256 jobs (the workers are one group): `emit_many` the jobs, then read
  `pool.results()`.
- `mp-pool`: `multiprocessing.Pool(4).imap_unordered(work, jobs)` (chunksize 1, its
  default: one job per task, so that a slow job holds up no other).
- `process-pool`: `concurrent.futures.ProcessPoolExecutor(4).map(work, jobs)`.
- `faster-fifo`: a faster-fifo queue of jobs (256 at most) that 4 consumers `get` one
  at a time, and one of results that the producer drains with `get_many`.

Every run is a fresh process (`--one`), its workers forked from it; the systems take
turns run by run, so a noisy minute on the shared machine lands on all of them.
Figures per run: jobs/s (N over the wall time from the first job handed out to the last
result in), and CPU per job: user + system time of the producer's process and of every
process under it, sampled (psutil) after a warm-up and again after the last result,
divided by N, split into the producer's and the rest's (workers, helpers). That
includes the job's own work (10 µs or 1 ms): `overhead` is the rest.
The median run of each (system, job size) is reported.

## Why these peers

They are what a Python user reaches for to spread CPU work over processes; faster-fifo
is the fastest shared-memory queue in the benchmark suite (`benchmarks/run.py`). None of
them survives a worker killed mid-job as a shmbus group does (the job is redelivered);
that is not measured here, only speed and cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/workqueue.py`: shmbus from here
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

WORKERS = 4
BOUND = 256
WORK = {"10us": 10e-6, "1ms": 1e-3}
JOBS = {"10us": 20_000, "1ms": 2_000}
WARMUP = 200
RUNS = 3
SYSTEMS = ("shmbus-pool", "mp-pool", "process-pool", "faster-fifo")


def busy(seconds: float, seq: int) -> int:
    """One job: `seconds` of this thread's CPU time in a loop, then its number back.

    CPU time, not wall time: 4 workers share 2 cores here, and a loop on the clock would
    count the time its process waits for a core as work done.
    """
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seq


# -- one run, in a fresh process ------------------------------------------------------


class _Cpu:
    """User + system CPU seconds of this process (the producer) and of every live
    process under it (the workers, and any helper the system starts)."""

    def __init__(self, producer: float, others: float) -> None:
        self.producer = producer
        self.others = others

    def __sub__(self, before: "_Cpu") -> "_Cpu":
        return _Cpu(self.producer - before.producer, self.others - before.others)


def _cpu_seconds() -> _Cpu:
    import psutil

    me = psutil.Process()
    mine = me.cpu_times()
    others = 0.0
    for process in me.children(recursive=True):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        others += times.user + times.system
    return _Cpu(mine.user + mine.system, others)


Measure = Callable[[Callable[[int], int], int], tuple[float, _Cpu]]
"""Runs `jobs` jobs after a warm-up; (seconds, CPU) of the measured part."""


def _run_shmbus(job: Callable[[int], int], jobs: int) -> tuple[float, _Cpu]:
    import shmbus

    with shmbus.EventEmitter(f"wq-{os.getpid()}", capacity=BOUND) as emitter:
        pool = shmbus.WorkerPool(emitter.name, job, workers=WORKERS, results=True).start()
        try:
            results = pool.results(timeout=60)
            emitter.emit_many(range(WARMUP))
            _take(results, WARMUP)
            cpu = _cpu_seconds()
            began = time.perf_counter()
            emitter.emit_many(range(jobs))
            _take(results, jobs)
            took = time.perf_counter() - began
            cpu = _cpu_seconds() - cpu
        finally:
            emitter.close()
            pool.stop(drain=True)
    return took, cpu


def _take(results: Any, count: int) -> None:
    for _ in range(count):
        next(results)


def _run_mp_pool(job: Callable[[int], int], jobs: int) -> tuple[float, _Cpu]:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        for _ in pool.imap_unordered(job, range(WARMUP)):
            pass
        cpu = _cpu_seconds()
        began = time.perf_counter()
        for _ in pool.imap_unordered(job, range(jobs)):
            pass
        took = time.perf_counter() - began
        cpu = _cpu_seconds() - cpu
    return took, cpu


def _run_process_pool(job: Callable[[int], int], jobs: int) -> tuple[float, _Cpu]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")) as ex:
        for _ in ex.map(job, range(WARMUP)):
            pass
        cpu = _cpu_seconds()
        began = time.perf_counter()
        for _ in ex.map(job, range(jobs)):
            pass
        took = time.perf_counter() - began
        cpu = _cpu_seconds() - cpu
    return took, cpu


def _fifo_consumer(jobs: Any, results: Any, job: Callable[[int], int]) -> None:
    while True:
        seq = jobs.get(timeout=60)
        if seq is None:
            return
        results.put(job(seq), timeout=60)


def _run_faster_fifo(job: Callable[[int], int], jobs: int) -> tuple[float, _Cpu]:
    import multiprocessing

    import faster_fifo

    queue = faster_fifo.Queue(max_size_bytes=BOUND * 64, maxsize=BOUND)
    results = faster_fifo.Queue(max_size_bytes=64 << 20)
    context = multiprocessing.get_context("fork")
    consumers = [context.Process(target=_fifo_consumer, args=(queue, results, job))
                 for _ in range(WORKERS)]
    for consumer in consumers:
        consumer.start()
    try:
        _fifo_round(queue, results, WARMUP)
        cpu = _cpu_seconds()
        began = time.perf_counter()
        _fifo_round(queue, results, jobs)
        took = time.perf_counter() - began
        cpu = _cpu_seconds() - cpu
    finally:
        for _ in consumers:
            queue.put(None, timeout=60)
        for consumer in consumers:
            consumer.join(30)
    return took, cpu


def _fifo_round(queue: Any, results: Any, jobs: int) -> None:
    """Put the jobs in chunks (put_many) while draining results, so neither queue stalls
    the other."""
    got = 0
    chunk = 64
    for start in range(0, jobs, chunk):
        queue.put_many(list(range(start, min(jobs, start + chunk))), timeout=60)
        got += _drain(results)
    while got < jobs:
        got += len(results.get_many(timeout=60, max_messages_to_get=1024))


def _drain(results: Any) -> int:
    import queue as std_queue

    try:
        return len(results.get_many(block=False, max_messages_to_get=1024))
    except std_queue.Empty:
        return 0


RUNNERS: dict[str, Measure] = {
    "shmbus-pool": _run_shmbus,
    "mp-pool": _run_mp_pool,
    "process-pool": _run_process_pool,
    "faster-fifo": _run_faster_fifo,
}


def run_one(system: str, work: str, jobs: int) -> dict[str, Any]:
    """One run in this process; its figures."""
    job = functools.partial(busy, WORK[work])
    took, cpu = RUNNERS[system](job, jobs)
    total = (cpu.producer + cpu.others) / jobs * 1e6
    return {"system": system, "work": work, "jobs": jobs, "seconds": took,
            "jobs_per_second": jobs / took, "cpu_us_per_job": total,
            "producer_cpu_us_per_job": cpu.producer / jobs * 1e6,
            "workers_cpu_us_per_job": cpu.others / jobs * 1e6,
            "overhead_us_per_job": total - WORK[work] * 1e6}


# -- the suite ----------------------------------------------------------------------------


def measure(systems: Sequence[str] = SYSTEMS, works: Sequence[str] = tuple(WORK),
            jobs: dict[str, int] | None = None, runs: int = RUNS,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every run in a fresh process, systems taking turns; the medians and every run."""
    counts = {**JOBS, **(jobs or {})}
    every: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for run in range(runs):
        for work in works:
            for system in systems:
                if progress is not None:
                    progress(f"{system} · {work} jobs · run {run + 1}/{runs}")
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--one", system, work,
                     str(counts[work])], capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    failures.append({"system": system, "work": work,
                                     "error": done.stderr.strip().splitlines()[-1:]
                                     and done.stderr.strip().splitlines()[-1] or "?"})
                    continue
                every.append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = []
    for work in works:
        for system in systems:
            mine = [r for r in every if r["system"] == system and r["work"] == work]
            if mine:
                middle = sorted(mine, key=lambda r: r["jobs_per_second"])[len(mine) // 2]
                medians.append({**middle, "runs": len(mine), **{
                    key: statistics.median(r[key] for r in mine)
                    for key in ("cpu_us_per_job", "producer_cpu_us_per_job",
                                "workers_cpu_us_per_job")}})
    return {"workers": WORKERS, "bound": BOUND, "cpus": os.cpu_count(), "medians": medians,
            "runs": every, "failures": failures}


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{figures['workers']} workers, {figures['cpus']} CPUs: median of "
                  "runs", title_justify="left")
    for column in ("job", "system", "jobs/s", "CPU µs/job", "producer", "workers",
                   "overhead", "runs"):
        table.add_column(column, justify="left" if column in ("job", "system") else "right")
    for row in figures["medians"]:
        table.add_row(row["work"], row["system"], f"{row['jobs_per_second']:,.0f}",
                      f"{row['cpu_us_per_job']:,.1f}",
                      f"{row['producer_cpu_us_per_job']:,.1f}",
                      f"{row['workers_cpu_us_per_job']:,.1f}",
                      f"{row['cpu_us_per_job'] - WORK[row['work']] * 1e6:,.1f}",
                      str(row["runs"]))
    console = Console(highlight=False)
    console.print(table)
    for failure in figures["failures"]:
        console.print(f"failed: {failure}", markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("SYSTEM", "WORK", "JOBS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--work", nargs="+", choices=list(WORK), default=list(WORK))
    parser.add_argument("--jobs", nargs=2, type=int, metavar=("N_10US", "N_1MS"),
                        default=None, help="jobs per run for each job size")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures")
    args = parser.parse_args(argv)
    if args.one is not None:
        system, work, count = args.one
        print(json.dumps(run_one(system, work, int(count))))
        return 0
    jobs = dict(zip(WORK, args.jobs)) if args.jobs else None
    figures = measure(args.systems, args.work, jobs, args.runs,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
