"""The benchmark suite: shmbus against the queues one would otherwise use, as tables.

    python benchmarks/run.py                    # everything, a few minutes on 2 cores
    python benchmarks/run.py --quick            # a smoke run, well under a minute
    python benchmarks/run.py --systems shmbus zmq --workloads small --json out.json
    python benchmarks/run.py --show out.json    # the tables of a saved run
    python scripts/plot_bench.py out.json out.png

The job is the same for every system (see `benchmarks/systems`): one emitter process
delivers every event, in order, to N subscriber processes, each behind a bound of 256
events with the emitter blocking, never dropping; every receiver checks every event
and any loss or reordering fails the run. Measured:

- throughput: events/s from the first emit to the last receipt by the slowest
  subscriber, per workload (`small`, `large`, `numpy`) and subscriber count;
- one-way latency, p50/p99/max: one subscriber, small events at least 500 us apart,
  stamped with `perf_counter_ns()` just before the emit;
- memory: each process's peak RSS in every run, the bytes in /dev/shm, and RSS growth
  between 10% and 100% of one long run per system.

Each figure is the median, with min and max, of `runs` runs interleaved across systems
(every system's run 1, then every system's run 2, ...), so a noisy minute on a shared
machine hits all systems rather than one. `shmbus` (one event per call) is the
reference every ratio is taken against. A system whose library is missing is skipped
with the reason (`pip install -e '.[bench]'`).

`shmbus bench` runs this suite with a progress bar: `count_measurements` and
`run_suite` take the same keyword arguments, `print_table` prints the results.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: import as the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import harness  # noqa: E402
from benchmarks.systems import BATCH, System, all_systems  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload  # noqa: E402

REFERENCE = "shmbus"
BOUND = 256
DEFAULT_RUNS = 3
QUICK_RUNS = 1
DEFAULT_EVENTS = {"small": 20_000, "large": 300, "numpy": 50, "latency": 2_000,
                  "growth": 200_000}
QUICK_EVENTS = {"small": 2_000, "large": 30, "numpy": 6, "latency": 300, "growth": 20_000}
LATENCY_INTERVAL = 500e-6
LATENCY_WORKLOAD = "small"
GROWTH_WORKLOAD = "small"
LIBRARIES = ("shmbus", "multiprocess", "faster-fifo", "pyzmq", "iceoryx2", "numpy",
             "psutil", "rich", "matplotlib")


_Key = tuple[str, str, str, int]  # kind, system, workload, subscribers
_Raw = dict[_Key, list[dict[str, Any]]]
_Errors = dict[_Key, list[str]]


class BenchmarkFailed(Exception):
    """Some measurements failed (lost or reordered events, a stall, a crash).

    `results` holds everything else that was measured, and the failures.
    """

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        failures = results["failures"]
        lines = "\n".join(f"- {f['measurement']}: {f['error']}" for f in failures)
        super().__init__(f"{len(failures)} measurement(s) failed:\n{lines}")


@dataclass(frozen=True)
class _Measurement:
    kind: str  # "throughput", "latency" or "growth"
    system: type[System]
    workload: Workload
    subscribers: int
    job: harness.Job
    run: int
    runs: int

    @property
    def key(self) -> _Key:
        return (self.kind, self.system.name, self.workload.name, self.subscribers)

    @property
    def label(self) -> str:
        where = f"{self.workload.name} x{self.subscribers}"
        return (f"{self.kind} {where} · {self.system.name} · run {self.run + 1}/{self.runs}"
                if self.kind != "growth" else f"growth {where} · {self.system.name}")


@dataclass(frozen=True)
class _Plan:
    systems: list[type[System]]
    workloads: list[Workload]
    subscribers: list[int]
    runs: int
    events: dict[str, int]
    latency: bool
    growth: bool
    skipped: list[dict[str, str]]

    def measurements(self) -> list[_Measurement]:
        found: list[_Measurement] = []
        for run in range(self.runs):
            for workload in self.workloads:
                job = self.throughput_job(workload)
                for n in self.subscribers:
                    found += [_Measurement("throughput", s, workload, n, job, run, self.runs)
                              for s in self.systems]
            if self.latency:
                found += [_Measurement("latency", s, WORKLOADS[LATENCY_WORKLOAD], 1,
                                       self.latency_job(), run, self.runs)
                          for s in self.systems]
        if self.growth:
            found += [_Measurement("growth", s, WORKLOADS[GROWTH_WORKLOAD], 1,
                                   self.growth_job(), 0, 1)
                      for s in self.systems]
        return found

    def throughput_job(self, workload: Workload) -> harness.Job:
        events = self.events[workload.name]
        return harness.Job(events, warmup=min(workload.warmup, events))

    def growth_job(self) -> harness.Job:
        events = self.events["growth"]
        return harness.Job(events, warmup=max(1, events // 10))

    def latency_job(self) -> harness.Job:
        events = self.events["latency"]
        return harness.Job(events, warmup=min(100, max(1, events // 10)),
                           interval=LATENCY_INTERVAL)


def _plan(*, systems: Sequence[str] | None = None, workloads: Sequence[str] | None = None,
          subscribers: Sequence[int] = (1, 4), runs: int | None = None,
          events: dict[str, int] | None = None, quick: bool = False, latency: bool = True,
          growth: bool = True) -> _Plan:
    known = all_systems()
    wanted = list(systems) if systems else list(known)
    _check_names("system", wanted, known)
    wanted_workloads = list(workloads) if workloads else list(WORKLOADS)
    _check_names("workload", wanted_workloads, WORKLOADS)
    if not subscribers or min(subscribers) < 1:
        raise ValueError(f"subscriber counts must be at least 1, not {list(subscribers)}")
    runs = runs if runs is not None else QUICK_RUNS if quick else DEFAULT_RUNS
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    counts = dict(QUICK_EVENTS if quick else DEFAULT_EVENTS)
    unknown = set(events or {}) - set(counts)
    if unknown:
        raise ValueError(f"unknown event counts {sorted(unknown)}; known: {sorted(counts)}")
    counts.update(events or {})
    if min(counts.values()) < 1:
        raise ValueError(f"event counts must be at least 1: {counts}")
    skipped = []
    usable_systems = []
    for name in wanted:
        reason = known[name].unavailable()
        if reason:
            skipped.append({"system": name, "reason": reason})
        else:
            usable_systems.append(known[name])
    usable_workloads = []
    for name in wanted_workloads:
        reason = WORKLOADS[name].unavailable()
        if reason:
            skipped.append({"workload": name, "reason": reason})
        else:
            usable_workloads.append(WORKLOADS[name])
    return _Plan(usable_systems, usable_workloads, sorted(set(subscribers)), runs, counts,
                 latency, growth, skipped)


def _check_names(what: str, names: list[str], known: dict[str, Any]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(known)}")


def count_measurements(*, systems: Sequence[str] | None = None,
                       workloads: Sequence[str] | None = None,
                       subscribers: Sequence[int] = (1, 4), runs: int | None = None,
                       events: dict[str, int] | None = None, quick: bool = False,
                       latency: bool = True, growth: bool = True,
                       progress: Callable[[str], None] | None = None) -> int:
    """How many times `run_suite` with the same arguments will call `progress`."""
    return len(_plan(systems=systems, workloads=workloads, subscribers=subscribers,
                     runs=runs, events=events, quick=quick, latency=latency,
                     growth=growth).measurements())


def run_suite(*, systems: Sequence[str] | None = None, workloads: Sequence[str] | None = None,
              subscribers: Sequence[int] = (1, 4), runs: int | None = None,
              events: dict[str, int] | None = None,
              progress: Callable[[str], None] | None = None, quick: bool = False,
              latency: bool = True, growth: bool = True) -> dict[str, Any]:
    """Measure, and return the JSON-able results.

    `systems` and `workloads` default to all (those not installed are skipped, with
    the reason, in `results["skipped"]`); `runs` to 3 (1 with `quick`); `events` maps
    "small", "large", "numpy", "latency" and "growth" to event counts and overrides the
    defaults (`DEFAULT_EVENTS`, or `QUICK_EVENTS` with `quick`). `progress` is called
    with a short label before each measurement. Raises `BenchmarkFailed` (carrying the
    results) after the last measurement if any failed; ValueError for bad arguments.
    """
    plan = _plan(systems=systems, workloads=workloads, subscribers=subscribers, runs=runs,
                 events=events, quick=quick, latency=latency, growth=growth)
    began = time.monotonic()
    raw: _Raw = {}
    errors: _Errors = {}
    failures = []
    for measurement in plan.measurements():
        if progress is not None:
            progress(measurement.label)
        try:
            figures = harness.measure(measurement.system, measurement.workload,
                                      measurement.subscribers, measurement.job, BOUND)
        except harness.MeasurementFailed as failure:
            errors.setdefault(measurement.key, []).append(str(failure))
            failures.append({"measurement": measurement.label, "error": str(failure)})
            continue
        raw.setdefault(measurement.key, []).append(figures)
    results = {
        "machine": machine_info(),
        "config": {
            "systems": [s.name for s in plan.systems],
            "workloads": [w.name for w in plan.workloads],
            "workload_descriptions": {w.name: w.description for w in plan.workloads},
            "subscribers": plan.subscribers,
            "runs": plan.runs,
            "events": plan.events,
            "quick": quick,
            "bound": BOUND,
            "batch": BATCH,
            "latency_interval_us": LATENCY_INTERVAL * 1e6,
            "latency_warmup": plan.latency_job().warmup,
            "reference": REFERENCE,
        },
        "skipped": plan.skipped,
        "throughput": _throughput(plan, raw, errors),
        "latency": _latency(plan, raw, errors) if plan.latency else [],
        "growth": _growth(plan, raw, errors) if plan.growth else [],
        "shmbus_shared_memory": _shmbus_memory(plan),
        "failures": failures,
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    if failures:
        raise BenchmarkFailed(results)
    return results


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def _median_or_none(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _throughput(plan: _Plan, raw: _Raw, errors: _Errors) -> list[dict[str, Any]]:
    rows = []
    for workload in plan.workloads:
        for n in plan.subscribers:
            reference = None
            for system in plan.systems:
                key = ("throughput", system.name, workload.name, n)
                runs = raw.get(key, [])
                row: dict[str, Any] = {
                    "system": system.name, "workload": workload.name, "subscribers": n,
                    "events": plan.events[workload.name],
                    "warmup": plan.throughput_job(workload).warmup,
                    "failed": errors.get(key, []),
                    "events_per_s": None, "vs_reference": None, "rss_peak_bytes": None,
                    "rss_after_fork_bytes": None, "shm_peak_bytes": None, "bound": None,
                }
                if runs and not row["failed"]:
                    row.update(_throughput_figures(runs))
                    if system.name == REFERENCE:
                        reference = row["events_per_s"]["median"]
                rows.append(row)
            for row in rows[-len(plan.systems):]:
                if reference and row["events_per_s"]:
                    row["vs_reference"] = row["events_per_s"]["median"] / reference
    return rows


def _throughput_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    emitter_peaks = [r["rss"]["emitter"]["peak"] for r in runs]
    subscriber_peaks = [max(s["peak"] for s in r["rss"]["subscribers"]) for r in runs]
    shm = [r["shm_peak_bytes"] for r in runs if r["shm_peak_bytes"] is not None]
    return {
        "events_per_s": _summary([r["events_per_s"] for r in runs]),
        "rss_peak_bytes": {"emitter": statistics.median(emitter_peaks),
                           "subscriber": statistics.median(subscriber_peaks)},
        "rss_after_fork_bytes": _median_or_none(
            [r["rss"]["emitter"]["after_fork"] for r in runs]),
        "shm_peak_bytes": max(shm) if shm else None,
        "bound": runs[0]["bound"],
    }


def _latency(plan: _Plan, raw: _Raw, errors: _Errors) -> list[dict[str, Any]]:
    job = plan.latency_job()
    rows = []
    for system in plan.systems:
        key = ("latency", system.name, LATENCY_WORKLOAD, 1)
        row: dict[str, Any] = {
            "system": system.name, "workload": LATENCY_WORKLOAD, "subscribers": 1,
            "events": job.events, "warmup": job.warmup,
            "interval_us": LATENCY_INTERVAL * 1e6, "failed": errors.get(key, []),
            "p50_us": None, "p99_us": None, "max_us": None, "vs_reference": None,
        }
        if key in raw and not row["failed"]:
            per_run = [latency_percentiles(r["latencies_ns"]) for r in raw[key]]
            for name in ("p50_us", "p99_us", "max_us"):
                row[name] = _summary([p[name] for p in per_run])
        rows.append(row)
    reference = next((r for r in rows if r["system"] == REFERENCE and r["p50_us"]), None)
    for row in rows:
        if reference and row["p50_us"]:
            row["vs_reference"] = {
                q: row[f"{q}_us"]["median"] / reference[f"{q}_us"]["median"]
                for q in ("p50", "p99", "max")
            }
    return rows


def latency_percentiles(latencies_ns: list[int]) -> dict[str, float]:
    """p50, p99 and max in microseconds, nearest-rank."""
    ordered = sorted(latencies_ns)

    def rank(percent: int) -> float:
        return ordered[max(0, math.ceil(len(ordered) * percent / 100) - 1)] / 1000

    return {"p50_us": rank(50), "p99_us": rank(99), "max_us": ordered[-1] / 1000}


def _growth(plan: _Plan, raw: _Raw, errors: _Errors) -> list[dict[str, Any]]:
    rows = []
    for system in plan.systems:
        key = ("growth", system.name, GROWTH_WORKLOAD, 1)
        row: dict[str, Any] = {"system": system.name, "workload": GROWTH_WORKLOAD,
                               "subscribers": 1, "events": plan.events["growth"],
                               "warmup": plan.growth_job().warmup,
                               "failed": errors.get(key, []), "emitter": None,
                               "subscriber": None, "events_per_s": None}
        if key in raw and not row["failed"]:
            run = raw[key][0]
            row["emitter"] = _rss_growth(run["rss"]["emitter"])
            row["subscriber"] = _rss_growth(run["rss"]["subscribers"][0])
            row["events_per_s"] = run["events_per_s"]
        rows.append(row)
    return rows


def _rss_growth(rss: dict[str, Any]) -> dict[str, Any]:
    warm, end = rss["warm"], rss["end"]
    delta = end - warm if warm is not None and end is not None else None
    return {**rss, "delta": delta}


def _shmbus_memory(plan: _Plan) -> dict[str, Any] | None:
    if not any(s.name.startswith("shmbus") for s in plan.systems):
        return None
    from benchmarks.systems.shmbus_bus import inline_limit, ring_bytes

    return {
        "capacity": BOUND,
        "ring_bytes_per_subscriber": ring_bytes(BOUND),
        "inline_limit_bytes": inline_limit(),
        "large_event_segments": {
            w.name: {"bytes_each_at_most": w.message_bytes, "at_most_in_flight": BOUND,
                     "shared_by_all_subscribers": True}
            for w in plan.workloads if w.message_bytes > inline_limit()
        },
    }


def machine_info() -> dict[str, Any]:
    """Where and with what the figures were taken."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "shmbus_wait": os.environ.get("SHMBUS_WAIT", "default"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": " ".join(sys.argv),
        "git": _git_state(),
    }
    try:
        import psutil
    except ImportError:
        return info
    info["memory_bytes"] = psutil.virtual_memory().total
    return info


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def print_table(results: dict[str, Any], console: Any) -> None:
    """Print the results (from `run_suite` or a saved JSON) as rich tables."""
    from benchmarks.report import print_report

    print_report(results, console)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Systems: " + ", ".join(all_systems()) + ". Workloads: "
        + ", ".join(f"{w.name} ({w.description})" for w in WORKLOADS.values()) + ".",
    )
    parser.add_argument("--systems", nargs="+", choices=list(all_systems()), metavar="SYSTEM",
                        help="systems to measure (default: all installed)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), metavar="WORKLOAD",
                        help="workloads to run (default: all)")
    parser.add_argument("--subscribers", nargs="+", type=int, default=[1, 4], metavar="N",
                        help="subscriber counts (default: 1 4)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs per figure (default: {DEFAULT_RUNS}, {QUICK_RUNS} with --quick)")
    for name in DEFAULT_EVENTS:
        parser.add_argument(f"--events-{name}", type=int, default=None, metavar="N",
                            help=f"events per {name} run (default: {DEFAULT_EVENTS[name]:,}; "
                                 f"{QUICK_EVENTS[name]:,} with --quick)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    parser.add_argument("--no-growth", action="store_true", help="skip the long RSS runs")
    parser.add_argument("--quick", action="store_true",
                        help="few events and one run: a smoke test, not a measurement")
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH")
    parser.add_argument("--show", metavar="PATH", help="print the tables of a saved run, and stop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rich.console import Console

    console = Console(highlight=False)
    if args.show:
        print_table(json.loads(Path(args.show).read_text()), console)
        return 0
    events = {name: value for name in DEFAULT_EVENTS
              if (value := getattr(args, f"events_{name}")) is not None}
    options: dict[str, Any] = dict(systems=args.systems, workloads=args.workloads,
                   subscribers=args.subscribers, runs=args.runs, events=events,
                   quick=args.quick, latency=not args.no_latency, growth=not args.no_growth)
    try:
        total = count_measurements(**options)
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    done = 0

    def progress(label: str) -> None:
        nonlocal done
        done += 1
        console.print(f"[dim][{done}/{total}] {label}[/dim]")

    status = 0
    try:
        results = run_suite(**options, progress=progress)
    except BenchmarkFailed as failed:
        results, status = failed.results, 1
    except KeyboardInterrupt:
        console.print("[red]interrupted: nothing measured is kept[/red]")
        return 130
    print_table(results, console)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"results written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
