"""What a wake-up costs: a bare POSIX semaphore and a POSIX message queue against
shmbus, at a low rate.

    python benchmarks/wakeup_latency.py

Two processes, a `perf_counter_ns` stamp every 500 us: once through shared memory and
a posix_ipc `Semaphore` the receiver sleeps on (the floor under any semaphore-woken
queue, shmbus's doorbells included), once pickled through a posix_ipc `MessageQueue`
(the reference of the latency target, `posix_mq_latency.py`), once as a shmbus event.
Alternated 4 times, since a noisy minute would otherwise land on one of them. Also
reported: how long the `emit` itself takes at that rate, doorbell post included, where
back to back it takes under a microsecond: at a low rate everything runs on cold caches.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import time
from collections.abc import Callable

import posix_ipc

import shmbus

EVENTS, WARMUP, GAP, ROUNDS = 1500, 100, 0.0005, 4
_STAMP = struct.Struct("q")


def _p(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1e3


def _semaphore_round() -> str:
    shared = mmap.mmap(-1, _STAMP.size)  # inherited by the child: one page, both ways
    sem = posix_ipc.Semaphore(f"/sb_bench_wake{os.getpid()}", posix_ipc.O_CREX)
    sem.unlink()  # the name is not needed once both processes hold it
    latencies = _in_child(lambda: _sem_receive(sem, shared))
    try:
        for _ in range(EVENTS + WARMUP):
            time.sleep(GAP)
            shared[:_STAMP.size] = _STAMP.pack(time.perf_counter_ns())
            sem.release()
        return _report("semaphore", latencies(), None)
    finally:
        sem.close()


def _sem_receive(sem: posix_ipc.Semaphore, shared: mmap.mmap) -> list[int]:
    got = []
    for _ in range(EVENTS + WARMUP):
        sem.acquire(10)
        got.append(time.perf_counter_ns() - _STAMP.unpack(shared[:_STAMP.size])[0])
    return got[WARMUP:]


def _queue_round() -> str:
    name = f"/sb_bench_wakeq{os.getpid()}"
    queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=10,
                                   max_message_size=64)
    queue.unlink()  # as the semaphore's: both processes hold it already
    latencies = _in_child(lambda: _queue_receive(queue))
    try:
        for _ in range(EVENTS + WARMUP):
            time.sleep(GAP)
            queue.send(pickle.dumps(time.perf_counter_ns()))
        return _report("message queue", latencies(), None)
    finally:
        queue.close()


def _queue_receive(queue: posix_ipc.MessageQueue) -> list[int]:
    got = []
    for _ in range(EVENTS + WARMUP):
        message, _ = queue.receive(10)
        got.append(time.perf_counter_ns() - pickle.loads(message))
    return got[WARMUP:]


def _shmbus_round() -> str:
    with shmbus.EventEmitter() as emitter:
        latencies = _in_child(lambda: _bus_receive(emitter.name))
        emitter.wait_for_subscribers(1, timeout=10)
        emits = []
        for _ in range(EVENTS + WARMUP):
            time.sleep(GAP)
            sent = time.perf_counter_ns()
            emitter.emit(sent)
            emits.append(time.perf_counter_ns() - sent)
        return _report(f"shmbus ({shmbus.CORE} core)", latencies(), emits[WARMUP:])


def _bus_receive(name: str) -> list[int]:
    got = []
    with shmbus.subscribe(name, wait=10) as sub:
        for _ in range(EVENTS + WARMUP):
            sent = sub.recv(timeout=10)
            got.append(time.perf_counter_ns() - sent)
    return got[WARMUP:]


def _in_child(work: Callable[[], list[int]]) -> Callable[[], list[int]]:
    """Run `work` in a forked child; a function that waits for what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.write(write, ",".join(map(str, work())).encode())
        finally:
            os._exit(0)
    os.close(write)

    def result() -> list[int]:
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        return [int(v) for v in data.split(b",")]
    return result


def _report(what: str, latencies: list[int], emits: list[int] | None) -> str:
    line = f"{what}: p50 {_p(latencies, 0.5):.0f} us, p99 {_p(latencies, 0.99):.0f} us"
    if emits is not None:
        line += f"; the emit itself p50 {_p(emits, 0.5):.1f} us"
    return line


def main() -> None:
    for _ in range(ROUNDS):
        print(_semaphore_round())
        print(_queue_round())
        print(_shmbus_round())


if __name__ == "__main__":
    main()
