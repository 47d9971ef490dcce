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
  subscriber, per workload (`small`, `large`, `numpy`, and `large-slow`, `numpy-slow`
  whose subscribers compare every byte of every event, so their bounds stay full) and
  subscriber count, each with the CPU per event of all processes together;
- one-way latency, p50/p99/max: one subscriber, small events at least 500 us apart,
  stamped with `perf_counter_ns()` just before the emit;
- memory: each process's peak RSS in every run, the bytes in /dev/shm, and RSS growth
  over one long run per system.

Every run starts with unmeasured warm-up events (see `harness`). The modules: `plan`
(what runs, in which order), `harness` (one measurement in real processes), `systems`
(one adapter per system), `workloads`, `verify` (the receivers' check), `results`
(medians, ratios, machine info), `report` (the tables).

Each figure is the median, with min and max, of `runs` runs interleaved across systems
(every system's run 1, then every system's run 2, ...), so a noisy minute on a shared
machine hits all systems rather than one. `shmbus` (one event per call) is the
reference every ratio is taken against. `shmbus` and `shmbus-batch` run the core
`import shmbus` picks (the compiled one where it was built); `shmbus-py` and
`shmbus-batch-py` the pure-Python one, so one run reports both cores, CPU per event
included. `shmbus-view` receives numpy arrays as read-only views of shared memory
(`recv(view=True)`), on the numpy workloads only. A system whose library is missing is skipped
with the reason (`pip install -e '.[bench]'`).

`count_measurements` and `run_suite` take the same keyword arguments, `print_table`
prints the results.

## For a program: `--progress-jsonl`

`shmbus bench` runs this file in a subprocess (the suite measures its own checkout's
shmbus, so it is never imported into the command's process) and reads its progress from
stdout, which then carries nothing but JSON objects, one per line:

    {"kind": "plan", "measurements": 12}      first: how many measurements will run
    {"kind": "start", "label": "..."}         before each measurement
    {"kind": "results", "results": {...}}     last: what --json writes, failures included
    {"kind": "error", "message": "..."}       instead of a plan, if the options are wrong

Anything else written to stdout meanwhile (by a measured process, say) goes to stderr.
No table is printed; `--show -` prints the tables of results read from stdin. The exit
status is the same as without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

if __package__ in (None, ""):  # `python benchmarks/run.py`: import as the package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import harness  # noqa: E402
from benchmarks.plan import (  # noqa: E402
    BOUND, DEFAULT_EVENTS, DEFAULT_RUNS, QUICK_EVENTS, QUICK_RUNS, make_plan,
)
from benchmarks.report import print_report  # noqa: E402
from benchmarks.results import Errors, Raw, assemble  # noqa: E402
from benchmarks.systems import all_systems  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402


class BenchmarkFailed(Exception):
    """Some measurements failed (lost or reordered events, a stall, a crash).

    `results` holds everything else that was measured, and the failures.
    """

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        failures = results["failures"]
        lines = "\n".join(f"- {f['measurement']}: {f['error']}" for f in failures)
        super().__init__(f"{len(failures)} measurement(s) failed:\n{lines}")


def count_measurements(*, systems: Sequence[str] | None = None,
                       workloads: Sequence[str] | None = None,
                       subscribers: Sequence[int] = (1, 4), runs: int | None = None,
                       events: dict[str, int] | None = None, quick: bool = False,
                       latency: bool = True, growth: bool = True,
                       progress: Callable[[str], None] | None = None) -> int:
    """How many times `run_suite` with the same arguments will call `progress`."""
    return len(make_plan(systems=systems, workloads=workloads, subscribers=subscribers,
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
    a workload's name, "latency" or "growth" to event counts and overrides the defaults
    (`DEFAULT_EVENTS`, or `QUICK_EVENTS` with `quick`). `progress` is called
    with a short label before each measurement. Raises `BenchmarkFailed` (carrying the
    results) after the last measurement if any failed; ValueError for bad arguments.
    """
    plan = make_plan(systems=systems, workloads=workloads, subscribers=subscribers,
                     runs=runs, events=events, quick=quick, latency=latency, growth=growth)
    began = time.monotonic()
    raw: Raw = {}
    errors: Errors = {}
    failures: list[dict[str, str]] = []
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
    results = assemble(plan, raw, errors, failures, wall_seconds=time.monotonic() - began)
    if failures:
        raise BenchmarkFailed(results)
    return results


def print_table(results: dict[str, Any], console: Any) -> None:
    """Print the results (from `run_suite` or a saved JSON) as rich tables."""
    print_report(results, console)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Systems: " + ", ".join(all_systems()) + ". Workloads: "
        + ", ".join(f"{w.name} ({w.description})" for w in WORKLOADS.values()) + ".",
    )
    # No `choices`: the plan checks the names, and says it the same way to a caller of
    # run_suite, to this command and to `shmbus bench`.
    parser.add_argument("--systems", nargs="+", metavar="SYSTEM",
                        help="systems to measure (default: all installed)")
    parser.add_argument("--workloads", nargs="+", metavar="WORKLOAD",
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
    parser.add_argument("--show", metavar="PATH",
                        help="print the tables of a saved run (- reads it from stdin), and stop")
    parser.add_argument("--progress-jsonl", action="store_true",
                        help="for a program: progress and results as JSON lines on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.show:
        saved = sys.stdin.read() if args.show == "-" else Path(args.show).read_text()
        print_table(json.loads(saved), Console(highlight=False))
        return 0
    events = {name: value for name in DEFAULT_EVENTS
              if (value := getattr(args, f"events_{name.replace('-', '_')}")) is not None}
    options: dict[str, Any] = dict(
        systems=args.systems, workloads=args.workloads, subscribers=args.subscribers,
        runs=args.runs, events=events, quick=args.quick, latency=not args.no_latency,
        growth=not args.no_growth,
    )
    report = _ForAProgram() if args.progress_jsonl else _ForAPerson()
    try:
        report.plan(count_measurements(**options))
    except ValueError as error:
        report.error(str(error))
        return 2
    status = 0
    try:
        results = run_suite(**options, progress=report.start)
    except BenchmarkFailed as failed:
        results, status = failed.results, 1
    except KeyboardInterrupt:
        report.interrupted()
        return 130
    report.results(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        report.saved(args.json)
    return status


class _ForAPerson:
    """Progress as numbered lines, then the tables."""

    def __init__(self) -> None:
        self._console = Console(highlight=False)
        self._total = 0
        self._started = 0

    def plan(self, total: int) -> None:
        self._total = total

    def start(self, label: str) -> None:
        self._started += 1
        self._console.print(f"[{self._started}/{self._total}] {label}", style="dim",
                            markup=False)

    def results(self, results: dict[str, Any]) -> None:
        print_table(results, self._console)

    def saved(self, path: str) -> None:
        self._console.print(f"results written to {path}")

    def error(self, message: str) -> None:
        self._console.print(message, style="red", markup=False)

    def interrupted(self) -> None:
        self._console.print("interrupted: nothing measured is kept", style="red")


class _ForAProgram:
    """The `--progress-jsonl` protocol (see the module's docstring)."""

    def __init__(self) -> None:
        self._out = _stdout_for_protocol_only()

    def plan(self, total: int) -> None:
        self._say(kind="plan", measurements=total)

    def start(self, label: str) -> None:
        self._say(kind="start", label=label)

    def results(self, results: dict[str, Any]) -> None:
        self._say(kind="results", results=results)

    def saved(self, path: str) -> None:
        pass  # the program asked for the file; it knows where it is

    def error(self, message: str) -> None:
        self._say(kind="error", message=message)

    def interrupted(self) -> None:
        pass  # the program was interrupted too (the same Ctrl-C), and tells its user

    def _say(self, **message: Any) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()  # the reader moves its bar now, not at exit


def _stdout_for_protocol_only() -> TextIO:
    """A stream to the real stdout; file descriptor 1 itself now leads to stderr, so that
    nothing else printed here or in a measured child can break a protocol line."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return protocol


if __name__ == "__main__":
    sys.exit(main())
