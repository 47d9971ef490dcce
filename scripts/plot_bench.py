"""Draw the benchmark suite's results as grouped bar charts, for the README.

    python scripts/plot_bench.py RESULTS.json OUT.png

One panel per workload (events/s, one group of bars per subscriber count, one bar per
system, whiskers from the slowest to the fastest run, the median written on each bar)
and one for latency (p50 and p99, microseconds). Throughput axes are linear, so bar
lengths compare as ratios; the latency axis is logarithmic, because p99 can be a hundred
times p50 and a linear axis would flatten every p50 bar. Matplotlib's Agg backend, so
no display is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

GROUP_WIDTH = 0.8
TITLE_WIDTH = 60
"""Characters per line of a panel's title, wrapped so that it stays over its panel."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a JSON file from benchmarks/run.py --json")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    figure = draw(results)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


def draw(results: dict[str, Any]) -> Any:
    workloads = [w for w in results["config"]["workloads"]
                 if any(r["workload"] == w for r in results["throughput"])]
    panels = len(workloads) + (1 if results["latency"] else 0)
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows),
                                squeeze=False)
    flat = list(axes.flat)
    systems = _systems(results)
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(systems)}
    for ax, workload in zip(flat, workloads):
        _throughput_panel(ax, results, workload, systems, colors)
    if results["latency"]:
        _latency_panel(flat[len(workloads)], results, systems, colors)
    for ax in flat[panels:]:
        ax.set_visible(False)
    handles = [Rectangle((0, 0), 1, 1, color=colors[s]) for s in systems]
    columns = min(len(systems), 5)  # more in a row run past the figure's edges
    figure.legend(handles, systems, loc="lower center", ncol=columns, frameon=False)
    machine = results["machine"]
    figure.suptitle(
        f"shmbus and peers: one emitter, every event to every subscriber, bound 256\n"
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"median of {results['config']['runs']} run(s), {machine['date'][:10]}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


def _systems(results: dict[str, Any]) -> list[str]:
    seen = [r["system"] for r in results["throughput"]] + [r["system"] for r in results["latency"]]
    return list(dict.fromkeys(seen))


def _bars(ax: Axes, groups: list[str], systems: list[str], colors: dict[str, Any],
          value: Any, log: bool) -> None:
    """One group per label in `groups`, one bar per system, its figure written above it.

    `value(system, group)` gives (median, low, high), "failed", or None (not measured).
    """
    width = GROUP_WIDTH / len(systems)
    for i, system in enumerate(systems):
        for g, group in enumerate(groups):
            figure = value(system, group)
            x = g - GROUP_WIDTH / 2 + (i + 0.5) * width
            if figure == "failed":
                ax.text(x, 0.02, "FAILED", transform=ax.get_xaxis_transform(), rotation=90,
                        ha="center", va="bottom", fontsize=7, color="red")
                continue
            if figure is None:
                continue
            median, least, most = figure
            ax.bar(x, median, width, color=colors[system],
                   yerr=[[median - least], [most - median]], capsize=2,
                   error_kw={"elinewidth": 0.8})
            ax.annotate(_short(median), (x, most), xytext=(0, 2), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: _short(v) if v else "0")
    ax.yaxis.set_major_formatter(plain)
    if log:
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.margins(y=0.18)  # room for the figures written above the bars
    ax.grid(axis="y", which="both", alpha=0.3)


def _short(value: float) -> str:
    for limit, unit in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{unit}"
    return f"{value:.3g}"


def _throughput_panel(ax: Axes, results: dict[str, Any], workload: str, systems: list[str],
                      colors: dict[str, Any]) -> None:
    rows = {(r["system"], r["subscribers"]): r for r in results["throughput"]
            if r["workload"] == workload}
    counts = sorted({n for _, n in rows})
    groups = [f"{n} subscriber{'s' if n > 1 else ''}" for n in counts]

    def value(system: str, group: str) -> Any:
        row = rows.get((system, counts[groups.index(group)]))
        if row and row["failed"]:
            return "failed"
        rate = row["events_per_s"] if row else None
        return (rate["median"], rate["min"], rate["max"]) if rate else None

    _bars(ax, groups, systems, colors, value, log=False)
    description = results["config"].get("workload_descriptions", {}).get(workload, "")
    ax.set_title(textwrap.fill(f"{workload}: {description}", TITLE_WIDTH), fontsize=10)
    ax.set_ylabel("events/s (higher is better)")


def _latency_panel(ax: Axes, results: dict[str, Any], systems: list[str],
                   colors: dict[str, Any]) -> None:
    rows = {r["system"]: r for r in results["latency"]}
    groups = ["p50", "p99"]

    def value(system: str, group: str) -> Any:
        if system in rows and rows[system]["failed"]:
            return "failed"
        figure = rows[system][f"{group}_us"] if system in rows else None
        return (figure["median"], figure["min"], figure["max"]) if figure else None

    _bars(ax, groups, systems, colors, value, log=True)
    first = results["latency"][0]
    ax.set_title(f"one-way latency, 1 subscriber, small events "
                 f"{first['interval_us']:.0f} us apart", fontsize=10)
    ax.set_ylabel("microseconds, log scale (lower is better)")


if __name__ == "__main__":
    sys.exit(main())
