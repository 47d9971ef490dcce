"""What one `emit` and one `recv` of a small event cost, in one process, against the
pickling each must do: `python benchmarks/call_cost.py`.

The suite's throughput figures mix both sides, two processes and the harness's own
work per event; this isolates the calls themselves. Each figure is the best of
`ROUNDS` rounds of `CALLS` calls, so it is the cost on warm caches with nothing else
running, not a throughput: compare the lines of one run, not runs on other machines.
`emit` is timed into a ring with room (a subscriber drains it between rounds), `recv`
from a ring filled before each round.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import shmbus

CALLS = 200
"""Events per timed round: less than a ring holds, so no `emit` ever waits."""
ROUNDS = 300
EVENT = {"seq": 1, "ts": 123456789, "text": "x" * 60, "n": 3}
"""About 100 bytes pickled, like the suite's small workload."""


def _best(call: Callable[[], None], between: Callable[[], None]) -> float:
    """Microseconds per call: the best round of `ROUNDS`, `between` run untimed before
    each."""
    best = float("inf")
    for _ in range(ROUNDS):
        between()
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best / CALLS * 1e6


def main() -> None:
    pickled = pickle.dumps(EVENT, 5)
    with shmbus.EventEmitter(capacity=CALLS + 56) as em, em.subscribe() as sub:

        def emits() -> None:
            for _ in range(CALLS):
                em.emit(EVENT, timeout=60)

        def drain() -> None:
            while True:
                try:
                    sub.recv_many(CALLS, timeout=0)
                except shmbus.Timeout:
                    return

        def recvs() -> None:
            for _ in range(CALLS):
                sub.recv(timeout=60)

        def fill() -> None:
            drain()  # what the emit rounds left
            for _ in range(CALLS):
                em.emit(EVENT, timeout=60)

        def dumps() -> None:
            for _ in range(CALLS):
                pickle.dumps(EVENT, 5)

        def loads() -> None:
            for _ in range(CALLS):
                pickle.loads(pickled)

        def nothing() -> None:
            pass

        figures = {
            "emit": _best(emits, drain),
            "pickle.dumps": _best(dumps, nothing),
            "recv": _best(recvs, fill),
            "pickle.loads": _best(loads, nothing),
        }
    print(f"one small event ({len(pickled)} bytes pickled), {shmbus.CORE} core, "
          f"best of {ROUNDS} rounds of {CALLS} calls:")
    for name, micros in figures.items():
        print(f"  {name:<13} {micros:5.2f} us")


if __name__ == "__main__":
    main()
