"""Small-event throughput of shmbus: one emitter, N subscriber processes.

    python benchmarks/throughput.py --subscribers 1 4 --events 200000 --runs 3

Each subscriber checks that it received every event in order; the figure is events/s
from the first emit to the last receipt by the slowest subscriber (time.perf_counter is
one clock for all processes on Linux and macOS). The full comparison against the peers
belongs to the benchmark harness; this is the core bus alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import multiprocess

import shmbus

EVENT = {"id": 0, "kind": "token", "text": "hello world", "ts": 1.5}  # ~80 bytes pickled


def subscriber(name: str, events: int, ready, done) -> None:
    with shmbus.subscribe(name) as sub:
        ready.put(True)
        for expected in range(events):
            if sub.recv()["id"] != expected:
                done.put(("out of order", expected))
                return
        done.put(("ok", time.perf_counter()))


def run_once(subscribers: int, events: int) -> float:
    ctx = multiprocess.get_context("fork")
    ready, done = ctx.Queue(), ctx.Queue()
    with shmbus.EventEmitter() as em:
        procs = [ctx.Process(target=subscriber, args=(em.name, events, ready, done))
                 for _ in range(subscribers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=30)
        event = dict(EVENT)
        start = time.perf_counter()
        for i in range(events):
            event["id"] = i
            em.emit(event)
        results = [done.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    for status, value in results:
        if status != "ok":
            raise SystemExit(f"subscriber saw events {status} at {value}")
    return events / (max(value for _, value in results) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for n in args.subscribers:
        rates = [run_once(n, args.events) for _ in range(args.runs)]
        print(f"{n} subscriber(s): median {statistics.median(rates):,.0f} events/s "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.runs} runs of "
              f"{args.events:,} events)")


if __name__ == "__main__":
    main()
