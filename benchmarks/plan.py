"""What one suite run measures, in which order: the plan `run_suite` follows.

Order is the point: every system's run 1 of every configuration, then every system's
run 2, and so on, so that a noisy minute on a shared machine lands on all systems rather
than on all the runs of one. The memory-growth runs, one per system, come last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks import harness
from benchmarks.systems import System, all_systems
from benchmarks.workloads import WORKLOADS, Workload

REFERENCE = "shmbus"
BOUND = 256
DEFAULT_RUNS = 3
QUICK_RUNS = 1
DEFAULT_EVENTS = {"small": 50_000, "large": 1_500, "numpy": 150, "large-slow": 1_000,
                  "numpy-slow": 100, "latency": 2_000, "growth": 200_000}
"""Enough events that the fast systems run for about half a second or more: runs of a
tenth of a second (300 events of 1 MiB) swung by a third between runs on 2 cores."""
QUICK_EVENTS = {"small": 2_000, "large": 30, "numpy": 6, "large-slow": 30, "numpy-slow": 6,
                "latency": 300, "growth": 20_000}
LATENCY_INTERVAL = 500e-6
LATENCY_WORKLOAD = "small"
GROWTH_WORKLOAD = "small"

Key = tuple[str, str, str, int]
"""A figure's identity: kind ("throughput", "latency", "growth"), system, workload,
subscribers."""


@dataclass(frozen=True)
class Measurement:
    kind: str  # "throughput", "latency" or "growth"
    system: type[System]
    workload: Workload
    subscribers: int
    job: harness.Job
    run: int
    runs: int

    @property
    def key(self) -> Key:
        return (self.kind, self.system.name, self.workload.name, self.subscribers)

    @property
    def label(self) -> str:
        where = f"{self.workload.name} x{self.subscribers}"
        return (f"{self.kind} {where} · {self.system.name} · run {self.run + 1}/{self.runs}"
                if self.kind != "growth" else f"growth {where} · {self.system.name}")


@dataclass(frozen=True)
class Plan:
    systems: list[type[System]]
    workloads: list[Workload]
    subscribers: list[int]
    runs: int
    events: dict[str, int]
    latency: bool
    growth: bool
    quick: bool
    skipped: list[dict[str, str]]

    def measurements(self) -> list[Measurement]:
        found: list[Measurement] = []
        for run in range(self.runs):
            for workload in self.workloads:
                job = self.throughput_job(workload)
                for n in self.subscribers:
                    found += [Measurement("throughput", s, workload, n, job, run, self.runs)
                              for s in self._systems_for(workload.name)]
            if self.latency:
                found += [Measurement("latency", s, WORKLOADS[LATENCY_WORKLOAD], 1,
                                       self.latency_job(), run, self.runs)
                          for s in self._systems_for(LATENCY_WORKLOAD)]
        if self.growth:
            found += [Measurement("growth", s, WORKLOADS[GROWTH_WORKLOAD], 1,
                                   self.growth_job(), 0, 1)
                      for s in self._systems_for(GROWTH_WORKLOAD)]
        return found

    def _systems_for(self, workload: str) -> list[type[System]]:
        return [s for s in self.systems if s.workloads is None or workload in s.workloads]

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


def make_plan(*, systems: Sequence[str] | None = None, workloads: Sequence[str] | None = None,
          subscribers: Sequence[int] = (1, 4), runs: int | None = None,
          events: dict[str, int] | None = None, quick: bool = False, latency: bool = True,
          growth: bool = True) -> Plan:
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
    return Plan(usable_systems, usable_workloads, sorted(set(subscribers)), runs, counts,
                latency, growth, quick, skipped)


def _check_names(what: str, names: list[str], known: dict[str, Any]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(known)}")
