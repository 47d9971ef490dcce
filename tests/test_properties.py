"""Property-based tests (hypothesis): the codec, and the ring through the public API.

The ring test drives one emitter and its subscriptions, all in this process, with a
random interleaving of emits (inline, at the 496-byte inline limit, and large events up
to about 2 MiB), receives, late subscribes and early unsubscribes, and checks every answer
against a model: a queue of expected events per subscription and that subscription's
capacity. It also checks that the emitter keeps the segment of every large event some
ring has not read yet, and no more than its reuse pool's budget besides. Only non-blocking calls are made where blocking would wait for
ever (`timeout=0`), so a wrong answer is an assertion, never a hang.

Every example closes its emitter and subscriptions, pass or fail, and the leak check
below covers all the examples of a test together.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import shmbus
from shmbus import _arena, _codec, _ring
from tests import helpers

KiB = 1024
MiB = 1024 * KiB

INLINE_MAX = _ring.SLOT_SIZE - _ring.SLOT_HEADER_SIZE  # 496: larger pickles go to a blob
assert INLINE_MAX == 496

# Deterministic filler: slicing it is much faster than generating bytes with hypothesis,
# and an offset per event makes every event's bytes differ from its neighbours'.
_PATTERN = bytes(range(256)) * ((6 * MiB) // 256 + 2)

"""Tokens of the buses this module's current test created."""


SETTINGS = dict(
    database=None,  # nothing written into the repository; failures print their example
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def filler(n: int, salt: int) -> bytes:
    off = salt % 256
    return _PATTERN[off : off + n]


def short(value: Any) -> str:
    """A repr that stays readable for multi-MiB payloads."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return f"<{len(data)} bytes {data[:8].hex()}..{data[-8:].hex()}>"
    if isinstance(value, tuple):
        return "(" + ", ".join(short(v) for v in value) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(short(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {short(v)}" for k, v in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- 1. codec -----------------------------------------------------------------------------


def assert_same(got: Any, want: Any, path: str = "event") -> None:
    """Equal, and of exactly the same types all the way down (True is not 1, a tuple is
    not a list, -0.0 is not 0.0)."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)!r} != {list(want)!r}"
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want), (
            f"{path}: {got!r} != {want!r}"
        )
    else:
        assert got == want, f"{path}: {short(got)} != {short(want)}"


# Mostly small byte strings, about one in 64 up to a few MiB (always cheap to make).
byte_sizes = st.integers(0, 63).flatmap(
    lambda r: st.integers(0, 4 * MiB) if r == 0
    else st.integers(0, 64 * KiB) if r < 4
    else st.integers(0, 600) if r < 16
    else st.integers(0, 64)
)
payload_bytes = st.builds(filler, byte_sizes, st.integers(0, 255))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=64),
    payload_bytes,
)

plain_data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=10), children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
    ),
    max_leaves=20,
)


@pytest.mark.timeout(120)
@settings(max_examples=300, **SETTINGS)
@given(event=plain_data)
def test_codec_round_trips_plain_data(event: Any) -> None:
    data = _codec.encode(event)
    assert isinstance(data, bytes)
    plain = pickle.dumps(event, _codec.PROTOCOL)
    if b"__main__" not in plain:
        assert data == plain  # plain data takes the C pickler's fast path
    assert_same(_codec.decode(data), event)
    # Large events are decoded from a memoryview of their segment.
    with memoryview(data) as view:
        assert_same(_codec.decode(view), event)


@pytest.mark.timeout(120)
@settings(max_examples=40, **SETTINGS)
@given(
    size=st.one_of(st.integers(0, 1024), st.integers(0, 6 * MiB), st.sampled_from([0, 6 * MiB])),
    salt=st.integers(0, 255),
    wrap=st.sampled_from(["bare", "list", "dict", "tuple"]),
)
def test_codec_round_trips_bytes_up_to_several_mib(size: int, salt: int, wrap: str) -> None:
    blob = bytes(size) if salt == 0 else filler(size, salt)
    assert len(blob) == size
    event = {"bare": blob, "list": [blob, size], "dict": {"b": blob}, "tuple": (size, blob)}[wrap]
    data = _codec.encode(event)
    assert len(data) >= size
    assert_same(_codec.decode(data), event)


# -- 2. the ring through the public API ---------------------------------------------------


def make_event(i: int, wire: int) -> tuple[tuple[int, bytes], int]:
    """Event `(i, bytes)` whose pickle is `wire` bytes long (or, where no pickle has
    exactly that length, the longest below it); and its actual pickled length."""
    n = max(0, wire - len(_codec.encode((i, b""))))
    event = (i, filler(n, i))
    size = len(_codec.encode(event))
    while size > wire and n > 0:
        n = max(0, n - (size - wire))
        event = (i, filler(n, i))
        size = len(_codec.encode(event))
    return event, size


# Pickled sizes: mostly small, often right at the inline limit, sometimes up to ~2 MiB.
wire_sizes = st.one_of(
    st.integers(0, 200),
    st.sampled_from([INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1]),
    st.integers(INLINE_MAX - 16, INLINE_MAX + 16),
    st.integers(0, 600),
    st.integers(0, 64 * KiB),
    st.integers(0, 2 * MiB),
)

# Often tiny, so that rings fill up; up to 64 slots.
capacities = st.one_of(st.integers(1, 4), st.integers(1, 64))

small_wire_sizes = st.one_of(
    st.integers(0, 200),
    st.sampled_from([INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1]),
    st.integers(INLINE_MAX - 16, INLINE_MAX + 16),
)

# ("emit", pickled size, blocking): blocking emits (timeout=None) only where the model
# says every ring has room; everywhere else timeout=0.
emit_op = st.tuples(st.just("emit"), wire_sizes, st.booleans())
# ("burst", count, pickled size): `count` emits in a row, each as above with timeout=0,
# so that rings of up to 64 slots fill up and refuse.
burst_op = st.tuples(st.just("burst"), st.integers(1, 70), small_wire_sizes)
# ("batch", count, pickled size): one emit_many of `count` events with timeout=0, which
# commits them in chunks of a quarter of the smallest ring while every ring has room.
batch_op = st.tuples(st.just("batch"), st.integers(1, 70), small_wire_sizes)
recv_op = st.tuples(st.just("recv"), st.integers(0, 2))  # which open subscription
# ("recv_many", which, max_n): one recv_many(max_n, timeout=0).
recv_many_op = st.tuples(st.just("recv_many"), st.integers(0, 2), st.integers(1, 70))
# ("drain", which, count): up to `count` receives in a row from one subscription.
drain_op = st.tuples(st.just("drain"), st.integers(0, 2), st.integers(1, 70))
subscribe_op = st.tuples(st.just("subscribe"), st.none() | capacities)
unsubscribe_op = st.tuples(st.just("unsubscribe"), st.integers(0, 2))

operations = st.lists(
    st.one_of(emit_op, recv_op, emit_op, recv_op, burst_op, drain_op, subscribe_op,
              unsubscribe_op, batch_op, recv_many_op),
    max_size=60,
)


@dataclass
class ModelSub:
    handle: shmbus.Subscription
    capacity: int
    queue: deque = field(default_factory=deque)  # (seq, event, wire size), oldest first
    open: bool = True


def check_event(got: Any, want: tuple[int, bytes], where: str) -> None:
    assert got == want, f"{where}: got {short(got)}, expected {short(want)}"


@pytest.mark.timeout(120)
@settings(max_examples=150, **SETTINGS)
@given(
    capacity=capacities,
    initial=st.lists(st.none() | capacities, min_size=1, max_size=2),
    ops=operations,
)
# Found by hypothesis: the rest of a batch read in part, then more from the ring.
@example(capacity=1, initial=[8], ops=[("batch", 3, 0), ("recv", 0), ("recv_many", 0, 2)])
@example(capacity=1, initial=[8], ops=[("batch", 3, 0), ("recv", 0), ("burst", 7, 0)])
@example(capacity=8, initial=[None], ops=[("batch", 2, 497), ("emit", 0, False)])
def test_ring_matches_a_model_of_bounded_fifo_queues(
    capacity: int, initial: list[int | None], ops: list[tuple[Any, ...]]
) -> None:
    subs: list[ModelSub] = []
    committed = 0  # events emitted successfully so far: the next event's sequence number
    attempts = 0  # emits tried so far: each event's payload is made from this
    large_sent: list[tuple[int, int]] = []  # (seq, size) of delivered events in the arena
    check_large = True

    def live() -> list[ModelSub]:
        return [s for s in subs if s.open]

    def in_ring(s: ModelSub) -> int:
        # A subscription that returned part of a batch holds the rest itself, out of
        # its ring: those no longer count against the ring's capacity.
        return len(s.queue) - helpers.held_back(s.handle)

    def join(cap: int | None) -> None:
        handle = em.subscribe(capacity=cap)
        cleanup.callback(handle.close)
        subs.append(ModelSub(handle, cap if cap is not None else capacity))
        assert handle.capacity == subs[-1].capacity

    def emit(where: str, wire: int, blocking: bool) -> bool:
        """Emit one event as the model predicts; whether it was delivered."""
        nonlocal committed, attempts
        ev, size = make_event(attempts, wire)
        attempts += 1
        if INLINE_MAX - 16 <= wire <= INLINE_MAX + 16:
            assert size == wire  # the test really exercises the inline boundary
        targets = live()
        room = all(in_ring(s) < s.capacity for s in targets)
        # When an emit begins, the emitter frees the blobs every ring has read.
        floor = min((s.queue[0][0] if s.queue else committed for s in targets),
                    default=committed)
        timeout = None if (blocking and room) else 0
        note(f"{where}: emit {size}-byte pickle timeout={timeout} "
             f"queues={[len(s.queue) for s in targets]}/{[s.capacity for s in targets]}")
        if room:
            if size > INLINE_MAX:
                hypothesis.event("emit of a large event")
            if wire in (INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1):
                hypothesis.event(f"emit of a {wire}-byte pickle (inline limit {INLINE_MAX})")
            reached = em.emit(ev, timeout=timeout)
            assert reached == len(targets), f"{where}: emit reached {reached} subscribers"
            for s in targets:
                s.queue.append((committed, ev, size))
            if size > INLINE_MAX and targets:
                large_sent.append((committed, size))
            committed += 1
        else:
            hypothesis.event("emit refused: a ring is full")
            with pytest.raises(shmbus.Timeout):
                em.emit(ev, timeout=0)
        if check_large:
            unread = [size for seq, size in large_sent if seq >= floor]
            held = shmbus.stats(em.name).large_bytes_held
            # One arena holds them all, never more than its bound; an event still unread
            # is still in it.
            assert held <= _arena.DEFAULT_LARGE_BYTES, f"{where}: large events hold {held}"
            assert not unread or held >= max(unread), (
                f"{where}: {held} bytes hold {len(unread)} unread large events "
                f"(at seq >= {floor} of {large_sent})")
        return room

    def recv(where: str, which: int) -> bool:
        """Receive once from an open subscription as the model predicts; whether an
        event came."""
        targets = live()
        if not targets:
            return False
        s = targets[which % len(targets)]
        if s.queue:
            seq, want, _ = s.queue.popleft()
            got = s.handle.recv(timeout=0)
            check_event(got, want, f"{where}: recv #{s.handle.id} (seq {seq})")
            return True
        hypothesis.event("recv refused: queue empty")
        with pytest.raises(shmbus.Timeout):
            s.handle.recv(timeout=0)
        return False

    def emit_many(where: str, count: int, wire: int) -> None:
        """One emit_many(timeout=0): the model commits whole chunks while all have room."""
        nonlocal committed, attempts
        made = [make_event(attempts + i, wire) for i in range(count)]
        attempts += count
        targets = live()
        chunk = max(1, min((s.capacity for s in targets), default=capacity) // 4)
        expected = 0
        while expected < count and all(
                in_ring(s) + expected + min(chunk, count - expected) <= s.capacity
                for s in targets):
            expected += min(chunk, count - expected)
        note(f"{where}: emit_many of {count} in chunks of {chunk}, expecting {expected}")
        events = [ev for ev, _ in made]
        if expected == count:
            assert em.emit_many(events, timeout=0) == (len(targets) if count else 0)
        else:
            hypothesis.event("emit_many stopped between chunks: a ring is full")
            with pytest.raises(shmbus.Timeout) as refused:
                em.emit_many(events, timeout=0)
            assert refused.value.emitted == expected, f"{where}: emitted"
        for ev, size in made[:expected]:
            # Not counted as large: a chunk pickled as one may fit its slots whole, events
            # of a few hundred bytes included, and then it never touches the arena.
            for s in targets:
                s.queue.append((committed, ev, size))
            committed += 1

    def recv_many(where: str, which: int, max_n: int) -> None:
        targets = live()
        if not targets:
            return
        s = targets[which % len(targets)]
        if not s.queue:
            with pytest.raises(shmbus.Timeout):
                s.handle.recv_many(max_n, timeout=0)
            return
        got = s.handle.recv_many(max_n, timeout=0)
        expected = min(max_n, len(s.queue))
        if any(size > INLINE_MAX for _, _, size in list(s.queue)[:expected]):
            # Large events stop the list once they hold about BATCH_BYTES, after one.
            assert 1 <= len(got) <= expected, f"{where}: recv_many got {len(got)}"
        else:
            assert len(got) == expected, f"{where}: recv_many got {len(got)}"
        for i, event in enumerate(got):
            seq, want, _ = s.queue.popleft()
            check_event(event, want, f"{where}: recv_many #{s.handle.id} item {i} (seq {seq})")

    # Everything opened is closed on the way out, pass or fail, even if a close raises.
    with ExitStack() as cleanup:
        em = shmbus.EventEmitter(capacity=capacity)
        cleanup.callback(em.close)
        for cap in initial:
            join(cap)
        for step, op in enumerate(ops):
            kind = op[0]
            if kind == "emit":
                emit(f"step {step}", op[1], op[2])
            elif kind == "burst":
                for k in range(op[1]):
                    if not emit(f"step {step}.{k}", op[2], False):
                        break
            elif kind == "recv":
                recv(f"step {step}", op[1])
            elif kind == "batch":
                emit_many(f"step {step}", op[1], op[2])
            elif kind == "recv_many":
                recv_many(f"step {step}", op[1], op[2])
            elif kind == "drain":
                for k in range(op[2]):
                    if not recv(f"step {step}.{k}", op[1]):
                        break
            elif kind == "subscribe":
                if len(subs) < 3:
                    hypothesis.event("late subscribe")
                    join(op[1])
            elif kind == "unsubscribe":
                targets = live()
                if len(targets) < 2:
                    continue  # keep one subscription to the end
                s = targets[op[1] % len(targets)]
                hypothesis.event("early unsubscribe")
                s.handle.close()
                s.open = False
                with pytest.raises(shmbus.Closed):
                    s.handle.recv(timeout=0)

        em.close()
        for s in live():
            rest = list(s.handle)
            wanted = [ev for _, ev, _ in s.queue]
            assert len(rest) == len(wanted), (
                f"subscription #{s.handle.id} drained {len(rest)} events after close, "
                f"expected {len(wanted)}"
            )
            for i, (got, want) in enumerate(zip(rest, wanted)):
                check_event(got, want, f"drain #{s.handle.id} item {i}")
            assert s.handle.end_reason is shmbus.EndReason.CLOSED
            s.handle.close()
