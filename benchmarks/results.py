"""From raw runs to the JSON-able results: medians, ratios, percentiles, the machine.

Every figure is the median of its runs with min and max beside it (`summary`); a figure
any of whose runs failed has none, only its errors: a median over the runs that happened
to survive would flatter the system that lost events. Ratios are against the reference
system (shmbus one event per call), median to median.

Beside every throughput figure is the CPU it cost: microseconds of CPU (user + system)
of every process of the run together, per measured event (`cpu_us_per_event`), and
that CPU split between the emitter and all subscribers together.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.plan import (
    BOUND, GROWTH_WORKLOAD, LATENCY_INTERVAL, LATENCY_WORKLOAD, REFERENCE, Key, Plan,
)
from benchmarks.systems import BATCH

LIBRARIES = ("shmbus", "multiprocess", "faster-fifo", "pyzmq", "iceoryx2", "eclipse-zenoh",
             "numpy", "psutil", "rich", "matplotlib")

Raw = dict[Key, list[dict[str, Any]]]
Errors = dict[Key, list[str]]


def assemble(plan: Plan, raw: Raw, errors: Errors, failures: list[dict[str, str]], *,
             wall_seconds: float) -> dict[str, Any]:
    """The results of a suite run: `raw` figures and `errors` per measured key."""
    return {
        "machine": machine_info(),
        "config": {
            "systems": [s.name for s in plan.systems],
            "workloads": [w.name for w in plan.workloads],
            "workload_descriptions": {w.name: w.description for w in plan.workloads},
            "subscribers": plan.subscribers,
            "runs": plan.runs,
            "events": plan.events,
            "quick": plan.quick,
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
        "wall_seconds": round(wall_seconds, 1),
    }


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def _median_or_none(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _throughput(plan: Plan, raw: Raw, errors: Errors) -> list[dict[str, Any]]:
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
                    "events_per_s": None, "vs_reference": None, "cpu_us_per_event": None,
                    "cpu_us_per_event_by_role": None, "rss_peak_bytes": None,
                    "rss_after_fork_bytes": None, "shm_peak_bytes": None, "bound": None,
                }
                if runs and not row["failed"]:
                    row.update(_throughput_figures(runs, row["events"]))
                    if system.name == REFERENCE:
                        reference = row["events_per_s"]["median"]
                rows.append(row)
            for row in rows[-len(plan.systems):]:
                if reference and row["events_per_s"]:
                    row["vs_reference"] = row["events_per_s"]["median"] / reference
    return rows


def _throughput_figures(runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    emitter_peaks = [r["rss"]["emitter"]["peak"] for r in runs]
    subscriber_peaks = [max(s["peak"] for s in r["rss"]["subscribers"]) for r in runs]
    shm = [r["shm_peak_bytes"] for r in runs if r["shm_peak_bytes"] is not None]
    return {
        "events_per_s": summary([r["events_per_s"] for r in runs]),
        **_cpu_figures(runs, events),
        "rss_peak_bytes": {"emitter": statistics.median(emitter_peaks),
                           "subscriber": statistics.median(subscriber_peaks)},
        "rss_after_fork_bytes": _median_or_none(
            [r["rss"]["emitter"]["after_fork"] for r in runs]),
        "shm_peak_bytes": max(shm) if shm else None,
        "bound": runs[0]["bound"],
    }


def _cpu_figures(runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    """CPU microseconds per event: all processes (median, min, max), and the medians of
    the emitter's share and of all subscribers' together."""
    emitter = [r["cpu_seconds"]["emitter"] / events * 1e6 for r in runs]
    subscribers = [sum(r["cpu_seconds"]["subscribers"]) / events * 1e6 for r in runs]
    return {
        "cpu_us_per_event": summary([r["cpu_us_per_event"] for r in runs]),
        "cpu_us_per_event_by_role": {"emitter": statistics.median(emitter),
                                     "subscribers": statistics.median(subscribers)},
    }


def _latency(plan: Plan, raw: Raw, errors: Errors) -> list[dict[str, Any]]:
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
                row[name] = summary([p[name] for p in per_run])
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


def _growth(plan: Plan, raw: Raw, errors: Errors) -> list[dict[str, Any]]:
    rows = []
    for system in plan.systems:
        key = ("growth", system.name, GROWTH_WORKLOAD, 1)
        row: dict[str, Any] = {"system": system.name, "workload": GROWTH_WORKLOAD,
                               "subscribers": 1, "events": plan.events["growth"],
                               "warmup": plan.growth_job().warmup,
                               "failed": errors.get(key, []), "emitter": None,
                               "subscriber": None, "events_per_s": None,
                               "cpu_us_per_event": None}
        if key in raw and not row["failed"]:
            run = raw[key][0]
            row["emitter"] = _rss_growth(run["rss"]["emitter"])
            row["subscriber"] = _rss_growth(run["rss"]["subscribers"][0])
            row["events_per_s"] = run["events_per_s"]
            row["cpu_us_per_event"] = run["cpu_us_per_event"]
        rows.append(row)
    return rows


def _rss_growth(rss: dict[str, Any]) -> dict[str, Any]:
    warm, end = rss["warm"], rss["end"]
    delta = end - warm if warm is not None and end is not None else None
    return {**rss, "delta": delta}


def _shmbus_memory(plan: Plan) -> dict[str, Any] | None:
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
