"""One-way latency of a POSIX message queue, the reference the latency target names.

    python benchmarks/posix_mq_latency.py

Measured as the suite measures every system (benchmarks/run.py): 1 receiver process,
2,000 small events at least 500 us apart after 100 unmeasured, a `perf_counter_ns`
stamp taken just before sending and compared at receipt; 3 runs. It is not one of the
suite's systems because a message queue cannot fan out (one queue per receiver, and
receivers compete for messages) and does not exist on macOS.

The sender sleeps out each gap (`time.sleep`), as the suite's emitters do. It used to
spin instead, which keeps a CPU and its caches warm: here that gave a p50 of about 20 us
where sleeping gives 24-28, so it compared a warm sender with the suite's cold ones.
"""

from __future__ import annotations

import pickle
import os
import statistics
import time
from typing import Any

import multiprocess
import posix_ipc

NAME = f"/sb_bench_mq_{os.getpid()}"
"""One queue per run, removed at the end: a run killed midway leaves one name that no
later run trips over."""
EVENTS, WARMUP, GAP = 2000, 100, 0.0005


def _receive(out: Any) -> None:
    queue = posix_ipc.MessageQueue(NAME)
    latencies = []
    for _ in range(EVENTS + WARMUP):
        message, _ = queue.receive()
        latencies.append(time.perf_counter_ns() - pickle.loads(message)["sent"])
    queue.close()
    out.put(latencies[WARMUP:])


def _one_run(queue: posix_ipc.MessageQueue) -> tuple[float, float]:
    ctx = multiprocess.get_context("fork")
    out = ctx.Queue()
    receiver = ctx.Process(target=_receive, args=(out,))
    receiver.start()
    try:
        time.sleep(0.2)
        for i in range(EVENTS + WARMUP):
            event = {"id": i, "kind": "token", "text": "hello world",
                     "sent": time.perf_counter_ns()}
            queue.send(pickle.dumps(event))
            time.sleep(GAP)
        latencies = sorted(out.get(timeout=60))
    finally:
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()
    return latencies[len(latencies) // 2] / 1000, latencies[int(len(latencies) * 0.99)] / 1000


def main() -> None:
    queue = posix_ipc.MessageQueue(NAME, posix_ipc.O_CREX, max_messages=10,
                                   max_message_size=1024)
    try:
        runs = [_one_run(queue) for _ in range(3)]
    finally:
        queue.close()
        queue.unlink()
    p50s, p99s = zip(*runs)
    print(f"POSIX message queue, one-way latency: p50 {statistics.median(p50s):.0f} us "
          f"({min(p50s):.0f}-{max(p50s):.0f}), p99 {statistics.median(p99s):.0f} us "
          f"({min(p99s):.0f}-{max(p99s):.0f}), median of 3 runs")


if __name__ == "__main__":
    main()
