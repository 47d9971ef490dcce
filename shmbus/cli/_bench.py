"""`shmbus bench`: the benchmark suite of a source checkout, with a progress bar.

## Shape

The suite lives in `benchmarks/run.py` next to the `shmbus` package of a source checkout;
it is not installed with the package (it needs the peers it compares against, and its
results belong to the repository). `bench` finds it from where `shmbus` was imported,
puts the checkout on `sys.path` and imports `benchmarks.run`. `count_measurements`
sizes a rich progress bar, `run_suite` calls back before each measurement, which moves
the bar, and `print_table` prints the suite's own tables. Measurements that failed
(lost or reordered events, a stall, a crash) have no figure: the rest is still printed
(and saved with `--json`), then one error line and exit status 1.

## Why not run `python benchmarks/run.py` in a subprocess

The bar needs to know each measurement as it finishes, and the harness already offers
a callback for that; a subprocess would need a second protocol on its stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

import shmbus

from ._common import EXIT_OK, CommandFailed, at_least


def add_command(commands: Any) -> None:
    """Add `bench` to the `shmbus` command's subparsers."""
    bench = commands.add_parser(
        "bench", help="run the benchmark suite of a source checkout (benchmarks/)",
        description="Run benchmarks/run.py of the source checkout shmbus was imported "
        "from, with a progress bar, and print its table. Needs the 'bench' extra for the "
        "other systems: pip install -e '.[bench]'.",
    )
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


def checkout_root() -> Path:
    """The directory above the `shmbus` package: a source checkout's root, if it is one."""
    return Path(shmbus.__file__).resolve().parent.parent


def load_suite(root: Path) -> ModuleType:
    """`benchmarks.run` of the checkout at `root`, or CommandFailed saying why not."""
    folder = root / "benchmarks"
    if not (folder / "run.py").is_file():
        raise CommandFailed(
            f"shmbus bench needs a source checkout: no {folder / 'run.py'} (shmbus was "
            f"imported from {root / 'shmbus'}). Clone the repository and run "
            "`pip install -e '.[bench]'` in it."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks.run")
    except ImportError as exc:
        raise CommandFailed(
            f"cannot import {folder / 'run.py'}: {exc}; install what the benchmarks need "
            "with `pip install -e '.[bench]'`"
        ) from None


def run_bench(args: argparse.Namespace) -> int:
    options = _suite_options(args)
    suite = load_suite(checkout_root())
    out = Console(highlight=False)
    total = suite.count_measurements(**options)  # checks the options, before any bar
    failed: Exception | None = None
    with Progress(
        TextColumn("{task.description}", markup=False), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=out,
    ) as progress:
        task = progress.add_task("starting", total=total)
        started = 0

        def starting(label: str) -> None:
            # The suite announces a measurement before it runs it: the one before is done.
            nonlocal started
            progress.update(task, completed=started, description=label)
            started += 1

        try:
            results = suite.run_suite(**options, progress=starting)
        except suite.BenchmarkFailed as exc:  # the rest was measured: show it all
            results, failed = exc.results, exc
        progress.update(task, completed=total, description="done")
    suite.print_table(results, out)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
        out.print(f"results written to {args.json_path}", markup=False)
    if failed is not None:
        raise CommandFailed(_failure_line(results["failures"], total))
    return EXIT_OK


def _failure_line(failures: list[dict[str, str]], total: int) -> str:
    first = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return (f"{len(failures)} of {total} measurements failed, so they have no figure; "
            f"first: {first['measurement']}: {first['error']}{more}").replace("\n", " ")


def _suite_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `run_suite` that the user set, checked."""
    options: dict[str, Any] = {"quick": args.quick, "latency": not args.no_latency,
                               "growth": not args.no_growth}
    if args.systems:
        options["systems"] = args.systems
    if args.workloads:
        options["workloads"] = args.workloads
    if args.subscribers:
        options["subscribers"] = [at_least("--subscribers", n, 1) for n in args.subscribers]
    if args.runs is not None:
        options["runs"] = at_least("--runs", args.runs, 1)
    return options
