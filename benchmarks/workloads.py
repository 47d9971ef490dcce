"""The events every system carries: small dicts, 1 MiB of bytes, an 8 MiB numpy array.

Every event is a fresh four-field dict `{"seq", "ts", "kind", <body>}`: `seq` lets the
receiver check order and completeness, `ts` (`time.perf_counter_ns()` just before the
emit) gives one-way latency. A fresh dict per event, not one dict mutated in place,
because `multiprocessing.Queue` pickles in a background thread after `put` returns: a
mutated event would arrive with a later `seq`.

The bulky part (bytes, array) is built once, in the emitter process, and shared by
every event: the benchmark measures moving events, not making them. numpy is imported
only there, so the harness itself runs without it.

Two of each kind of large event: the fast workloads (`large`, `numpy`) check a body
with a few samples, so the figure is the system's own speed; the slow ones
(`large-slow`, `numpy-slow`) carry the same events but every subscriber compares the
whole body with what was sent (`==` on the bytes, `numpy.array_equal` on the array,
against a copy each process builds once with the same `make_body`): real work on every
event, as consumers do, so that subscribers fall behind and bounds fill. Whether they
do depends on the system: a peer whose emit costs more than a receive and the
comparison together stays limited by its emitter. The results' CPU split
(`cpu_us_per_event_by_role`) shows which side paid more.
"""

from __future__ import annotations

import importlib.util
import os
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
    warmup: int
    """Unmeasured events each run starts with: enough to cycle a 256-deep buffer once,
    except for numpy, where that would copy gigabytes before every measurement."""
    make_body: Callable[[], Any]
    body_ok: Callable[[Any], bool]
    """The receivers' check that a body arrived whole: a cheap one (type, size and
    sampled content), or for the slow workloads a comparison of every byte."""
    needs: str | None = None
    """A module the body needs, imported only in the processes that use it."""

    def event(self, seq: int, ts: int, body: Any) -> dict[str, Any]:
        return {"seq": seq, "ts": ts, "kind": self.name, self.body_field: body}

    def unavailable(self) -> str | None:
        """Why this workload cannot run here, or None."""
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed: pip install -e '.[bench]'"
        return None


_PATTERN = bytes(range(256))
_PROBES = (0, MiB // 2 + 256, MiB - 256)  # offsets of 256-byte samples, pattern-aligned


def _large_body() -> bytes:
    return _PATTERN * (MiB // 256)


def _large_ok(body: Any) -> bool:
    return (type(body) is bytes and len(body) == MiB
            and all(body[at:at + 256] == _PATTERN for at in _PROBES))


_ARRAY_LENGTH = MiB  # float64: 8 MiB


def _numpy_body() -> Any:
    import numpy

    return numpy.arange(_ARRAY_LENGTH, dtype=numpy.float64)  # every page really written


def _numpy_ok(body: Any) -> bool:
    import numpy

    return (isinstance(body, numpy.ndarray) and body.dtype == numpy.float64
            and body.shape == (_ARRAY_LENGTH,)
            and all(body[i] == i for i in (0, _ARRAY_LENGTH // 2 + 1, _ARRAY_LENGTH - 1)))


_expected: dict[tuple[int, str], Any] = {}


def _expected_body(name: str, make_body: Callable[[], Any]) -> Any:
    """`make_body()`, built once per process: the pid in the key makes a forked child
    build its own rather than trust one it inherited."""
    key = (os.getpid(), name)
    if key not in _expected:
        _expected[key] = make_body()
    return _expected[key]


def _large_equal(body: Any) -> bool:
    return type(body) is bytes and body == _expected_body("large", _large_body)


def _numpy_equal(body: Any) -> bool:
    import numpy

    expected = _expected_body("numpy", _numpy_body)
    return (isinstance(body, numpy.ndarray) and body.dtype == expected.dtype
            and bool(numpy.array_equal(body, expected)))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("small", "a dict of four fields, ~100 bytes pickled", "text", 0, 256, 500,
                 lambda: SMALL_TEXT, lambda body: body == SMALL_TEXT),
        Workload("large", "a dict holding 1 MiB of bytes", "payload", MiB, MiB + 512, 300,
                 _large_body, _large_ok),
        Workload("numpy", "a dict holding an 8 MiB numpy array", "payload", 8 * MiB,
                 8 * MiB + 1024, 10, _numpy_body, _numpy_ok, needs="numpy"),
        Workload("large-slow", "a dict holding 1 MiB of bytes, each subscriber comparing "
                 "every byte", "payload", MiB, MiB + 512, 300, _large_body, _large_equal),
        Workload("numpy-slow", "a dict holding an 8 MiB numpy array, each subscriber "
                 "comparing it whole", "payload", 8 * MiB, 8 * MiB + 1024, 10, _numpy_body,
                 _numpy_equal, needs="numpy"),
    )
}
