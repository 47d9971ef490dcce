"""The suite's results as rich tables: throughput per workload, latency, memory, notes.

It reads only the JSON-able results dict, so a saved run prints the same as a fresh one
(`python benchmarks/run.py --show results.json`). Tables are laid out to fit 80
columns: a pipe or a CI log gets no wider console.
"""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

MiB = 1 << 20
WIDTH = 80
FAILED = "[bold red]FAILED[/bold red]"


def print_report(results: dict[str, Any], console: Any) -> None:
    reference = results["config"]["reference"]
    for workload in results["config"]["workloads"]:
        rows = [r for r in results["throughput"] if r["workload"] == workload]
        if rows:
            console.print(_throughput_table(results, workload, rows, reference))
    if results["latency"]:
        console.print(_latency_table(results, reference))
    if results["throughput"]:
        for table in _memory_tables(results):
            console.print(table)
    if results["growth"]:
        console.print(_growth_table(results))
    for line in _notes(results, reference):
        console.print(line)


def _rate(value: float) -> str:
    """Three significant digits: 145,683 -> 146k, 55,939 -> 55.9k, 164 -> 164."""
    for limit, unit in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{unit}" if scaled < 1000 else f"{scaled:,.0f}{unit}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _mib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / MiB:.1f}" if value < 10 * MiB else f"{value / MiB:,.0f}"


def _table(title: str, first_column: str = "system") -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column(first_column)
    return table


def _throughput_table(results: dict[str, Any], workload: str, rows: list[dict[str, Any]],
                      reference: str) -> Table:
    config = results["config"]
    description = config.get("workload_descriptions", {}).get(workload, "")
    first = rows[0]
    table = _table(f"Throughput, {workload} ({description}), {first['events']:,} events "
                   f"after {first.get('warmup', 0):,} unmeasured: events/s, median of "
                   f"{config['runs']} run(s) (min-max); under it, the CPU of all "
                   "processes per event, us (median)")
    counts = sorted({r["subscribers"] for r in rows})
    for n in counts:
        table.add_column(f"{n} sub{'s' if n > 1 else ''}", justify="right")
        table.add_column(f"vs\n{reference}", justify="right")
    by_system: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_system.setdefault(row["system"], {})[row["subscribers"]] = row
    for system, cells in by_system.items():
        line = [system]
        for n in counts:
            cell = cells.get(n)
            rate = cell["events_per_s"] if cell else None
            if cell is None or rate is None:
                line += [FAILED if cell and cell["failed"] else "-", "-"]
            else:
                line += [_rate_and_cpu(rate, cell.get("cpu_us_per_event")),
                         _ratio(cell["vs_reference"])]
        table.add_row(*line)
    return table


def _rate_and_cpu(rate: dict[str, Any], cpu: dict[str, Any] | None) -> str:
    """The rate, and under it (dim) the median CPU per event: its min and max, which are
    in the JSON, would not fit beside it in 80 columns. Saved runs from before CPU was
    measured have none."""
    if cpu is None:
        return _spread(rate, _rate)
    return f"{_spread(rate, _rate)}\n[dim]cpu {_cpu(cpu['median'])}[/dim]"


def _cpu(value: float) -> str:
    """Microseconds, three significant digits below 1,000: 8.12, 81.2, 812, 8,120."""
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def _latency_table(results: dict[str, Any], reference: str) -> Table:
    config = results["config"]
    first = results["latency"][0]
    table = _table(
        f"One-way latency, us: 1 subscriber, {first['events']:,} small events at least "
        f"{config['latency_interval_us']:.0f} us apart after {first['warmup']} unmeasured; "
        f"median of {config['runs']} run(s) (min-max)"
    )
    for name in ("p50", "p99", "max\nof all", f"p50 vs\n{reference}", f"p99 vs\n{reference}"):
        table.add_column(name, justify="right")
    for row in results["latency"]:
        if row["failed"] or row["p50_us"] is None:
            table.add_row(row["system"], FAILED if row["failed"] else "-", "-", "-", "-", "-")
            continue
        ratios = row["vs_reference"] or {}
        table.add_row(row["system"], _spread(row["p50_us"], _us), _spread(row["p99_us"], _us),
                      _us(row["max_us"]["max"]), _ratio(ratios.get("p50")),
                      _ratio(ratios.get("p99")))
    return table


def _us(value: float) -> str:
    return f"{value:.0f}"


def _spread(summary: dict[str, Any], show: Callable[[float], str]) -> str:
    """`median (min-max)`, or the median alone when there was one run."""
    if summary["min"] == summary["max"]:
        return show(summary["median"])
    return f"{show(summary['median'])} ({show(summary['min'])}-{show(summary['max'])})"


def _memory_tables(results: dict[str, Any]) -> list[Table]:
    """Two columns per workload, as many workloads to a table as fit 80 columns."""
    most = max(r["subscribers"] for r in results["throughput"])
    rows = [r for r in results["throughput"] if r["subscribers"] == most]
    title = (f"Memory with {most} subscriber(s), MiB (median of runs). RSS: peak of the "
             "emitter/of the largest subscriber; shm: the most this run held in /dev/shm")
    groups: list[list[str]] = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        if groups and _width(_memory_table("", rows, [*groups[-1], workload])) <= WIDTH:
            groups[-1].append(workload)
        else:
            groups.append([workload])
    return [_memory_table(title if i == 0 else "Memory, continued", rows, group)
            for i, group in enumerate(groups)]


def _width(table: Table) -> int:
    """The columns `table` takes when nothing is cut or wrapped."""
    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def _memory_table(title: str, rows: list[dict[str, Any]], workloads: list[str]) -> Table:
    table = _table(title)
    for workload in workloads:
        table.add_column(f"{workload}\nRSS", justify="right")
        table.add_column(f"{workload}\nshm", justify="right")
    by_system: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_system.setdefault(row["system"], {})[row["workload"]] = row
    for system, cells in by_system.items():
        line = [system]
        for workload in workloads:
            rss = cells[workload]["rss_peak_bytes"] if workload in cells else None
            line.append(f"{_mib(rss['emitter'])}/{_mib(rss['subscriber'])}" if rss else "-")
            line.append(_mib(cells[workload]["shm_peak_bytes"]) if workload in cells else "-")
        table.add_row(*line)
    return table


def _growth_table(results: dict[str, Any]) -> Table:
    first = results["growth"][0]
    table = _table(f"RSS over one long run: 1 subscriber, {first['events']:,} small events "
                   f"after {first.get('warmup', 0):,} unmeasured; MiB after those -> at the "
                   "end, and the growth in KiB")
    for name in ("events/s", "cpu\nus/ev", "emitter", "growth", "subscriber", "growth"):
        table.add_column(name, justify="right")
    for row in results["growth"]:
        if row["failed"] or row["emitter"] is None:
            table.add_row(row["system"], FAILED if row["failed"] else "-", *["-"] * 5)
            continue
        cpu = row.get("cpu_us_per_event")
        line = [row["system"], _rate(row["events_per_s"]), _cpu(cpu) if cpu else "-"]
        for side in (row["emitter"], row["subscriber"]):
            line.append(f"{_mib(side['warm'])} -> {_mib(side['end'])}")
            line.append(f"{side['delta'] / 1024:+,.0f}" if side["delta"] is not None else "-")
        table.add_row(*line)
    return table


def _notes(results: dict[str, Any], reference: str) -> list[str]:
    notes = [f"vs {reference}: the system's median divided by {reference}'s "
             "(throughput: above 1 is faster; latency: above 1 is slower)."]
    bounds: dict[str, dict[str, str]] = {}
    for row in results["throughput"]:
        if row["bound"]:
            bounds.setdefault(row["system"], {})[row["workload"]] = row["bound"]
    for system, by_workload in bounds.items():
        if len(set(by_workload.values())) == 1:
            text = next(iter(by_workload.values()))
        else:
            text = "; ".join(f"{workload}: {bound}" for workload, bound in by_workload.items())
        notes.append(f"bound, {system}: {escape(text)}")
    shm = results.get("shmbus_shared_memory")
    if shm:
        notes.append(
            f"shmbus shared memory: a {shm['ring_bytes_per_subscriber']:,}-byte ring per "
            f"subscriber ({shm['capacity']} slots of 512 B + a 64 B header); events over "
            f"{shm['inline_limit_bytes']} B pickled go once into a segment of their own, "
            f"shared by every subscriber, at most {shm['capacity']} at a time."
        )
    baseline = [r["rss_after_fork_bytes"] for r in results["throughput"]
                if r.get("rss_after_fork_bytes")]
    if baseline:
        notes.append(f"RSS counts the ~{_mib(min(baseline))} MiB each child starts with "
                     "(forked from the harness) and the shared memory it touched.")
    for skipped in results["skipped"]:
        what = skipped.get("system") or skipped.get("workload")
        notes.append(f"[yellow]skipped {what}: {escape(skipped['reason'])}[/yellow]")
    for failure in results["failures"]:
        notes.append(f"[bold red]FAILED {escape(failure['measurement'])}:[/bold red] "
                     f"{escape(_last_lines(failure['error']))}")
    machine = results["machine"]
    notes.append(
        f"[dim]{machine['cpu_count']} CPUs ({escape(machine['cpu_model'])}), "
        f"{machine['platform']}, Python {machine['python']}, {machine['date']}, "
        f"the suite took {results['wall_seconds']:,.0f} s[/dim]"
    )
    return notes


def _last_lines(error: str, keep: int = 6) -> str:
    """A traceback's last lines, where the error is."""
    lines = error.strip().splitlines()
    return "\n".join(lines[-keep:])
