"""`shmbus bench`: the benchmark suite of a source checkout, run with a progress bar.

## Shape

The suite, `benchmarks/run.py`, is not part of the installed package: it needs the
peers it compares against, and its results belong to the repository. `bench` finds a
source checkout, a directory with `benchmarks/run.py` beside a `setup.cfg` or
`pyproject.toml` that names shmbus: `--checkout PATH`, or else the current directory or
the nearest one above it. It runs `python benchmarks/run.py --progress-jsonl ...` with
this interpreter and reads the suite's JSON lines from its stdout: the number of
measurements sizes a rich progress bar, each measurement's start moves it, and the
results come last. The tables are the suite's own: the results are handed back to
`benchmarks/run.py --show -`, so they are exactly what `python benchmarks/run.py`
prints, drawn for this command's width and colours. Measurements that failed (lost or reordered events, a stall, a crash) have no
figure: the rest is still printed (and saved with `--json`), then one error line and
exit status 1.

The suite's stderr is kept aside while it runs, so that nothing breaks the bar; it is
shown once the bar is done, and if the suite dies without results, its last line is the
error line.

## Why a subprocess, found from the current directory

The suite measures the shmbus of its own checkout (it puts the checkout first on its
`sys.path`); imported into this process it would run against whichever shmbus this
command was started from. And the directory above the installed package is no
checkout: installed from a wheel, it is site-packages. A user who has a checkout runs
the command in it, so that is where to look.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ._common import EXIT_OK, CommandFailed, at_least

SUITE = Path("benchmarks", "run.py")
PROJECT_FILES = ("setup.cfg", "pyproject.toml")
NAMES_SHMBUS = re.compile(r"""^\s*name\s*=\s*["']?shmbus["']?\s*$""", re.MULTILINE)
"""`name = shmbus` (setup.cfg) or `name = "shmbus"` (pyproject.toml)."""

STOP_GRACE = 5.0
"""How long the suite gets to exit once this command stops early (Ctrl-C reaches it too)."""


def add_command(commands: Any) -> None:
    """Add `bench` to the `shmbus` command's subparsers."""
    bench = commands.add_parser(
        "bench", help="run the benchmark suite of a source checkout (benchmarks/)",
        description="Run benchmarks/run.py of a source checkout of shmbus (the current "
        "directory or one above it, or --checkout PATH) with this Python, with a progress "
        "bar, and print its tables. Needs the 'bench' extra for the other systems: "
        "pip install -e '.[bench]'.",
    )
    bench.add_argument("--checkout", default=None, metavar="PATH",
                       help="the source checkout whose suite to run (default: the "
                       "current directory, or the nearest one above it that is one)")
    bench.add_argument("--systems", nargs="+", default=None, metavar="SYSTEM",
                       help="systems to measure (default: every one installed)")
    bench.add_argument("--workloads", nargs="+", default=None, metavar="WORKLOAD",
                       help="workloads to run (default: all)")
    bench.add_argument("--subscribers", nargs="+", type=int, default=None, metavar="N",
                       help="subscriber counts (default: the suite's)")
    bench.add_argument("--runs", type=int, default=None, metavar="R",
                       help="runs per measurement (default: the suite's)")
    bench.add_argument("--quick", action="store_true",
                       help="few events and one run: a smoke test, not a measurement")
    bench.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    bench.add_argument("--no-growth", action="store_true",
                       help="skip the long runs that measure memory growth")
    bench.add_argument("--json", default=None, metavar="PATH", dest="json_path",
                       help="also write the results as JSON to PATH")
    bench.set_defaults(command=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    options = suite_options(args)  # checked before anything is looked for or run
    suite = find_suite(args.checkout, Path.cwd())
    out = Console(highlight=False)
    report = _run_with_bar(suite, options, out)
    if report.error is not None:
        raise CommandFailed(report.error)
    if report.results is None:
        raise CommandFailed(_died_line(suite, report))
    # Written here, not by the suite onto this stdout, so that `shmbus bench | head`
    # ends as every command does on a closed pipe.
    sys.stdout.write(_tables(suite, report.results, out))
    sys.stdout.flush()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.results, indent=2) + "\n")
        out.print(f"results written to {args.json_path}", markup=False)
    failures = report.results.get("failures") or []
    if failures:
        raise CommandFailed(_failure_line(failures, report.total))
    return EXIT_OK


# -- finding the suite ----------------------------------------------------------------


def find_suite(checkout: str | None, cwd: Path) -> Path:
    """`benchmarks/run.py` of the checkout named, or of the one `cwd` is in."""
    if checkout is not None:
        root = Path(checkout).expanduser().resolve()
        if not is_checkout(root):
            raise CommandFailed(
                f"--checkout {checkout}: {root} is not a source checkout of shmbus (no "
                f"{SUITE} beside a setup.cfg or pyproject.toml naming shmbus)"
            )
        return root / SUITE
    for directory in (cwd, *cwd.parents):
        if is_checkout(directory):
            return directory / SUITE
    raise CommandFailed(
        f"shmbus bench needs a source checkout of shmbus: there is no {cwd / SUITE} "
        "beside a setup.cfg or pyproject.toml naming shmbus, here or in a directory "
        "above. Clone the repository, run `pip install -e '.[bench]'` in it and run "
        "shmbus bench there, or pass --checkout PATH"
    )


def is_checkout(directory: Path) -> bool:
    """Whether `directory` holds the suite and a project file that names shmbus."""
    return (directory / SUITE).is_file() and any(
        _names_shmbus(directory / name) for name in PROJECT_FILES)


def _names_shmbus(project_file: Path) -> bool:
    try:
        return NAMES_SHMBUS.search(project_file.read_text(errors="replace")) is not None
    except OSError:  # absent, or not readable: not this one
        return False


def suite_options(args: argparse.Namespace) -> list[str]:
    """The options of `benchmarks/run.py` that the user set, checked."""
    argv = [flag for flag, given in (("--quick", args.quick),
                                     ("--no-latency", args.no_latency),
                                     ("--no-growth", args.no_growth)) if given]
    if args.systems:
        argv += ["--systems", *args.systems]
    if args.workloads:
        argv += ["--workloads", *args.workloads]
    if args.subscribers:
        argv += ["--subscribers",
                 *(str(at_least("--subscribers", n, 1)) for n in args.subscribers)]
    if args.runs is not None:
        argv += ["--runs", str(at_least("--runs", args.runs, 1))]
    return argv


# -- running it -----------------------------------------------------------------------


@dataclass
class SuiteReport:
    """What the suite said on its stdout (see `benchmarks/run.py`), and how it ended."""

    total: int = 0
    started: int = 0
    results: dict[str, Any] | None = None
    error: str | None = None
    status: int | None = None
    stderr: str = ""
    stray: list[str] = field(default_factory=list)
    """Lines that were not the protocol's (an old suite, or a bug in it)."""


def _run_with_bar(suite: Path, options: list[str], out: Console) -> SuiteReport:
    report = SuiteReport()
    progress = Progress(
        TextColumn("{task.description}", markup=False), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=out,
    )
    task = progress.add_task("starting", total=None)  # shown once the plan is known
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stderr, subprocess.Popen(
        [sys.executable, str(suite), "--progress-jsonl", *options],
        stdout=subprocess.PIPE, stderr=stderr, encoding="utf-8",
    ) as child:
        try:
            assert child.stdout is not None
            for line in child.stdout:
                _take(line, report, progress, task)
            report.status = child.wait()
            if report.results is not None:
                progress.update(task, completed=report.total, description="done")
        finally:
            progress.stop()
            _end(child)  # after Ctrl-C, say: the suite must not outlive this command
        stderr.seek(0)
        report.stderr = stderr.read()
    if report.results is not None:
        sys.stderr.write(report.stderr)  # warnings of a run that went on: shown, not lost
    return report


def _take(line: str, report: SuiteReport, progress: Progress, task: TaskID) -> None:
    """Act on one line of the suite's stdout."""
    try:
        message = json.loads(line)
        kind = message["kind"]
    except (ValueError, TypeError, KeyError):
        report.stray.append(line.rstrip("\n"))
        return
    if kind == "plan":
        report.total = message["measurements"]
        progress.update(task, total=report.total, completed=0)
        progress.start()
    elif kind == "start":
        # A measurement is announced before it runs: the one before it is done.
        progress.update(task, completed=report.started, description=message["label"])
        report.started += 1
    elif kind == "results":
        report.results = message["results"]
    elif kind == "error":
        report.error = message["message"]


def _end(child: subprocess.Popen[str]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tables(suite: Path, results: dict[str, Any], out: Console) -> str:
    """The suite's own tables of `results`, drawn for `out` (its width, its colours)."""
    env = {**os.environ, "COLUMNS": str(out.width)}
    if out.is_terminal:
        env["FORCE_COLOR"] = "1"  # a pipe there, a terminal here: colours as here
    shown = subprocess.run([sys.executable, str(suite), "--show", "-"],
                           input=json.dumps(results), capture_output=True, env=env,
                           encoding="utf-8", check=False)
    if shown.returncode != 0:
        said = [line for line in shown.stderr.splitlines() if line.strip()]
        raise CommandFailed(f"{suite} --show - could not print the results: "
                            f"{said[-1] if said else f'exit status {shown.returncode}'}")
    return shown.stdout


def _died_line(suite: Path, report: SuiteReport) -> str:
    said = [line for line in report.stderr.splitlines() + report.stray if line.strip()]
    last = f": {said[-1].strip()}" if said else ""
    return (f"the benchmark suite {suite} exited with status {report.status} before its "
            f"results{last}")


def _failure_line(failures: list[dict[str, str]], total: int) -> str:
    first = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return (f"{len(failures)} of {total} measurements failed, so they have no figure; "
            f"first: {first['measurement']}: {first['error']}{more}").replace("\n", " ")
