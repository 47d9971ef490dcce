"""How creating a bus and subscribing to one scale with the number of live buses.

    python benchmarks/buses_at_scale.py                     # 10, 100, 1,000, 10,000 buses
    python benchmarks/buses_at_scale.py --counts 10 100 --tries 20 --budget 300

## Shape

One process and a registry directory of its own (a temporary `SHMBUS_DIR`, removed at
the end). For each count N, smallest first, it brings the number of live buses up to N
(`shmbus.EventEmitter(name)`, each kept open), then times `tries` times each, and takes
the median of:

- creating one more bus: the `EventEmitter` constructor (the bus is closed again,
  untimed, so N stays N);
- subscribing to one of the N: `shmbus.subscribe(name)` (closed again, untimed), a
  different bus each try.

Then it closes every bus and checks that /dev/shm holds nothing named after any of
their tokens; it never looks at, let alone touches, another program's objects.

## Why

Every create and every subscribe sweeps the whole registry today, so both grow about
linearly with N, and growing to N buses costs about N squared. This shows it, and will
show whether a registry that does bounded work per call has made them constant. Only
the public API is used (`EventEmitter`, `subscribe`, `close`, and `stats` for a bus's
token), so the script keeps working while the library changes.

## Limits, reported instead of crashed into

Each live bus holds open files (two today): the soft limit on open files is raised to
the hard one, and a count that would need more than that is not tried. Growing is
also bounded in time (`budget`, for the whole script): a count whose buses cannot be
made in what is left, projected from the last measured create as if the cost kept
growing linearly, is not tried either, and one that runs out of time or hits an
error while growing stops there. Such a count is reported with how far it got and
why; the counts above it are skipped.

`measure(counts)` does it all and returns the figures as a dict; `main` prints them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

if __package__ in (None, ""):  # `python benchmarks/buses_at_scale.py`: shmbus from here
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import shmbus  # noqa: E402

COUNTS = (10, 100, 1_000, 10_000)
TRIES = 20
BUDGET_SECONDS = 300.0
SHM_DIR = "/dev/shm"
SPARE_FILES = 64
"""Open files kept free for the tries, rich and Python itself."""


def measure(counts: Sequence[int] = COUNTS, *, tries: int = TRIES,
            budget_seconds: float = BUDGET_SECONDS,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time creating and subscribing at each count of live buses; the figures.

    Returns `{"rows": [...], "open_files": {...}, "leaked": [...], ...}`:
    one row per count, `reached` True with `create_ms` and `subscribe_ms` (median, min,
    max over `tries`), or False with `built` (the buses that were live) and `why`.
    `leaked` names what the buses left in /dev/shm after closing (removed once named;
    it should be empty).
    """
    if not counts or min(counts) < 1 or tries < 1:
        raise ValueError(f"counts and tries must be at least 1: {list(counts)}, {tries}")
    began = time.monotonic()
    root = tempfile.mkdtemp(prefix="sbscale-")
    previous_dir = os.environ.get("SHMBUS_DIR")
    os.environ["SHMBUS_DIR"] = root
    files = _raise_open_files_limit()
    buses = _Buses()
    rows: list[dict[str, Any]] = []
    try:
        rows = _measure_counts(buses, sorted(set(counts)), tries,
                               began + budget_seconds, files, progress or (lambda _: None))
    finally:
        try:
            buses.close_all()
        finally:
            leaked = _remove_leftovers(buses.tokens)
            _restore_open_files_limit(files)
        if previous_dir is None:
            del os.environ["SHMBUS_DIR"]
        else:
            os.environ["SHMBUS_DIR"] = previous_dir
        shutil.rmtree(root, ignore_errors=True)
    files["per_bus"] = buses.files_per_bus
    return {"rows": rows, "tries": tries, "open_files": files, "leaked": leaked,
            "registry": root, "seconds": time.monotonic() - began}


def _measure_counts(buses: "_Buses", counts: list[int], tries: int, deadline: float,
                    files: dict[str, Any],
                    progress: Callable[[str], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    last_create: tuple[int, float] | None = None  # (live buses, seconds for one more)
    for n in counts:
        if rows and not rows[-1]["reached"]:
            rows.append({"buses": n, "reached": False, "built": None,
                         "why": "skipped: a smaller count was not reached"})
            continue
        why = _cannot_reach(buses, n, last_create, deadline, files)
        if why is None:
            progress(f"growing to {n:,} buses")
            why = buses.grow(n, deadline)
        if why is not None:
            rows.append({"buses": n, "reached": False, "built": buses.count, "why": why})
            continue
        progress(f"timing at {n:,} buses")
        create = [buses.time_create() for _ in range(tries)]
        subscribe = [buses.time_subscribe(i * n // tries) for i in range(tries)]
        last_create = (n, statistics.median(create))
        rows.append({"buses": n, "reached": True, "create_ms": _summary_ms(create),
                     "subscribe_ms": _summary_ms(subscribe)})
    return rows


def _cannot_reach(buses: "_Buses", n: int, last_create: tuple[int, float] | None,
                  deadline: float, files: dict[str, Any]) -> str | None:
    """Why growing to `n` buses is not worth trying (every reason), or None."""
    reasons = []
    if buses.files_per_bus is not None:
        needed = (_open_files() or 0) + round((n - buses.count) * buses.files_per_bus)
        if needed + SPARE_FILES > files["soft"]:
            reasons.append(f"{n:,} buses need about {needed:,} open files "
                           f"({buses.files_per_bus:.1f} each) and the limit is "
                           f"{files['soft']:,} (the hard limit; only root can raise it)")
    if last_create is not None:
        live, seconds = last_create
        # One more bus costs `seconds` at `live` buses; if that grows in proportion to
        # the count, the buses from `live` to `n` cost the area under that line.
        projected = seconds * (n * n - live * live) / (2 * live)
        left = deadline - time.monotonic()
        if projected > left:
            reasons.append(f"making them would take about {_duration(projected)} (one took "
                           f"{seconds * 1e3:.1f} ms at {live:,} buses; if that grows with "
                           f"the count) and {_duration(max(left, 0))} of the budget is left")
    return "not tried: " + "; ".join(reasons) if reasons else None


class _Buses:
    """The live buses, every token this run made, and the open files a bus holds."""

    def __init__(self) -> None:
        self.emitters: list[Any] = []
        self.tokens: set[str] = set()
        self.files_per_bus: float | None = None
        self._serial = 0

    @property
    def count(self) -> int:
        return len(self.emitters)

    def grow(self, n: int, deadline: float) -> str | None:
        """Open buses until `n` are live; why it stopped short, or None."""
        files, live = _open_files(), self.count
        while self.count < n:
            if time.monotonic() > deadline:
                return f"out of time: the budget ran out with {self.count:,} buses live"
            try:
                self.emitters.append(self._open()[0])
            except (OSError, shmbus.ShmBusError) as error:
                return f"stopped with {self.count:,} buses live: {error}"
        now = _open_files()
        if files is not None and now is not None and self.count > live:
            self.files_per_bus = (now - files) / (self.count - live)
        return None

    def time_create(self) -> float:
        """Seconds to create one more bus; it is closed again."""
        emitter, seconds = self._open()
        emitter.close()
        return seconds

    def time_subscribe(self, index: int) -> float:
        """Seconds to subscribe to the `index`th live bus; the subscription is closed."""
        name = self.emitters[index].name
        began = time.perf_counter()
        subscription = shmbus.subscribe(name)
        seconds = time.perf_counter() - began
        subscription.close()
        return seconds

    def close_all(self) -> None:
        errors = []
        for emitter in self.emitters:
            try:
                emitter.close()
            except Exception as error:  # close the others all the same
                errors.append(error)
        self.emitters.clear()
        if errors:
            raise errors[0]

    def _open(self) -> tuple[Any, float]:
        """A new bus, its token noted, and the seconds its constructor took."""
        self._serial += 1
        began = time.perf_counter()
        emitter = shmbus.EventEmitter(f"scale-{self._serial}")
        seconds = time.perf_counter() - began
        try:
            self.tokens.add(shmbus.stats(emitter.name).token)
        except BaseException:
            emitter.close()
            raise
        return emitter, seconds


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _open_files() -> int | None:
    """The descriptors this process has open, where the system lists them."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(directory):
            return len(os.listdir(directory)) - 1  # less the one listing it
    return None


def _raise_open_files_limit() -> dict[str, Any]:
    """Raise the soft limit on open files to the hard one; both, and the one before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = soft
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        raised = hard
    infinite = resource.RLIM_INFINITY
    return {"soft_before": None if soft == infinite else soft,
            "soft": sys.maxsize if raised == infinite else raised,
            "hard": None if hard == infinite else hard}


def _restore_open_files_limit(files: dict[str, Any]) -> None:
    if files["soft_before"] is not None and files["soft_before"] != files["soft"]:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (files["soft_before"], hard))


def _remove_leftovers(tokens: set[str]) -> list[str]:
    """What is still in /dev/shm named after one of `tokens`, removed once listed."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:  # macOS: nothing to list
        return []
    leaked = sorted(name for name in names if any(token in name for token in tokens))
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass
    return leaked


def print_results(results: dict[str, Any], console: Any) -> None:
    """The figures as a table, then what was not reached, the open files, any leak."""
    table = Table(title=f"One registry with N live buses: ms, median of "
                        f"{results['tries']} tries (min-max)",
                  title_justify="left", title_style="bold")
    for name in ("buses", "create one more", "subscribe to one", "create per\nlive bus, us"):
        table.add_column(name, justify="right")
    notes = []
    for row in results["rows"]:
        if not row["reached"]:
            table.add_row(f"{row['buses']:,}", "not reached", "-", "-")
            notes.append(f"{row['buses']:,} buses: {row['why']}")
            continue
        create = row["create_ms"]
        table.add_row(f"{row['buses']:,}", _spread(create), _spread(row["subscribe_ms"]),
                      f"{create['median'] * 1e3 / row['buses']:.1f}")
    console.print(table)
    for note in notes:
        console.print(note, style="yellow", markup=False)
    files = results["open_files"]
    per_bus = files.get("per_bus")
    limit = (f"the soft limit raised from {_count(files['soft_before'])} to the hard one, "
             f"{_count(files['hard'])}" if files["soft_before"] != files["soft"]
             else f"limit {_count(files['soft'])} (hard {_count(files['hard'])})")
    console.print(f"open files: {limit}; "
                  f"{f'{per_bus:.1f}' if per_bus is not None else '?'} per live bus",
                  markup=False)
    if results["leaked"]:
        console.print(f"LEFT IN {SHM_DIR} (now removed): {', '.join(results['leaked'])}",
                      style="bold red", markup=False)
    else:
        console.print(f"nothing of these buses was left in {SHM_DIR}", markup=False)
    console.print(f"took {results['seconds']:.0f} s", style="dim", markup=False)


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "unlimited"


def _spread(summary: dict[str, float]) -> str:
    return f"{summary['median']:.2f} ({summary['min']:.2f}-{summary['max']:.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/buses_at_scale.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", nargs="+", type=int, default=list(COUNTS), metavar="N",
                        help="live buses to time at (default: 10 100 1000 10000)")
    parser.add_argument("--tries", type=int, default=TRIES,
                        help=f"timed creates and subscribes per count (default: {TRIES})")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, metavar="SECONDS",
                        help="time allowed for making the buses, all counts together "
                             f"(default: {BUDGET_SECONDS:.0f})")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        results = measure(args.counts, tries=args.tries, budget_seconds=args.budget,
                          progress=lambda text: console.print(text, style="dim"))
    except ValueError as error:
        console.print(str(error), style="red", markup=False)
        return 2
    print_results(results, console)
    return 1 if results["leaked"] else 0


if __name__ == "__main__":
    sys.exit(main())
