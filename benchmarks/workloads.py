"""The events every system carries: small dicts, 1 MiB of bytes, an 8 MiB numpy array.

Every event is a fresh four-field dict `{"seq", "ts", "kind", <body>}`: `seq` lets the
receiver check order and completeness, `ts` (`time.perf_counter_ns()` just before the
emit) gives one-way latency. A fresh dict per event, not one dict mutated in place,
because `multiprocessing.Queue` pickles in a background thread after `put` returns: a
mutated event would arrive with a later `seq`.

The bulky part (bytes, array) is built once, in the emitter process, and shared by
every event: the benchmark measures moving events, not making them. numpy is imported
only there, so the harness itself runs without it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

MiB = 1 << 20
SMALL_TEXT = "the quick brown fox jumps over the dog"  # makes the pickle ~100 bytes


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    body_field: str
    body_bytes: int
    """The size of the bulky part, 0 for small events."""
    message_bytes: int
    """An upper bound of one event's pickle, for systems that size buffers in bytes."""
    make_body: Callable[[], Any]
    body_ok: Callable[[Any], bool]

    def event(self, seq: int, ts: int, body: Any) -> dict[str, Any]:
        return {"seq": seq, "ts": ts, "kind": self.name, self.body_field: body}

    def unavailable(self) -> str | None:
        """Why this workload cannot run here, or None."""
        if self.name == "numpy" and importlib.util.find_spec("numpy") is None:
            return "numpy is not installed: pip install -e '.[bench]'"
        return None


def _large_body() -> bytes:
    return bytes(range(256)) * (MiB // 256)


def _numpy_body() -> Any:
    import numpy

    return numpy.arange(MiB, dtype=numpy.float64)  # 8 MiB, every page really written


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("small", "a dict of four fields, ~100 bytes pickled", "text", 0, 256,
                 lambda: SMALL_TEXT, lambda body: body == SMALL_TEXT),
        Workload("large", "a dict holding 1 MiB of bytes", "payload", MiB, MiB + 512,
                 _large_body, lambda body: len(body) == MiB),
        Workload("numpy", "a dict holding an 8 MiB numpy array", "payload", 8 * MiB,
                 8 * MiB + 1024, _numpy_body, lambda body: body.nbytes == 8 * MiB),
    )
}
