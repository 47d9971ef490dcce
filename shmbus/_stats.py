"""Live stats of a bus, readable from any process of its user.

## Shape

`stats(name)` and `buses()` read what the bus already keeps for itself: the control
block's `committed` (events emitted) and byte total, each ring's header (`tail` is the
events its subscriber consumed; `start_seq` + `tail` against `committed` is how full it
is; `blocked_ns` is how long the emitter has waited on it), and the registry's records
(pids) and life locks (who is alive). Nothing is written and no semaphore is touched,
so watching a bus cannot change what anyone receives. The one trace it leaves: probing a
life lock holds it shared for a few microseconds, and a reap of a dead subscriber that
lands in them waits for the next slice.

A snapshot is not atomic: the numbers are read one after another while the bus runs,
so a ring's fill may be off by the events emitted during the read. That is the price of
reading without a lock, which is the only way to read without disturbing.

## Why not counters kept by a monitoring process

A daemon would have to be started, would see only what is sent to it, and could die.
The bus's own words are always there and always true.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import posix_ipc

from . import _group, _ring
from ._errors import IncompatibleBus, ShmBusError
from ._liveness import is_alive
from ._registry import Registry, _attach_control_quietly, validate_name


@dataclass(frozen=True)
class SubscriberStats:
    """One subscriber's stats at the moment of reading."""

    id: int
    pid: int | None
    """None if its record could not be read (it is joining or leaving)."""
    alive: bool
    capacity: int
    fill: int
    """Events emitted to it that it has not consumed yet: at `capacity`, emit blocks."""
    delivered: int
    """Events it has consumed."""
    blocked_seconds: float
    """Total time the emitter has spent waiting for room in its ring."""
    kind: str = "subscriber"
    """"subscriber", or "group" or "durable" for a queue's ring (`shmbus.subscribe(name,
    group=...)`, `durable=...`), which its members read together."""
    queue: str | None = None
    """The group's or the durable subscription's name."""
    member_pids: tuple[int, ...] = ()
    """A queue's live members (a durable one has one owner at most)."""
    in_flight: int = 0
    """A queue's events taken by a member and not yet finished."""
    redelivered: int = 0
    """A queue's events given to another member because the one that had them died."""
    expires_in: float | None = None
    """A durable subscription without an owner: seconds until it is removed."""


@dataclass(frozen=True)
class BusStats:
    """A bus's stats at the moment of reading."""

    name: str
    token: str
    emitter_pid: int | None
    emitter_alive: bool
    closed: bool
    capacity: int
    """The ring capacity a subscriber gets unless it asks for its own."""
    emitted: int
    """Events whose `emit` completed (committed), over the life of the bus."""
    bytes_emitted: int
    """Pickled bytes of those events (each counted once, whatever the subscribers)."""
    large_bytes: int
    """The bound of the shared memory large events may take (`EventEmitter(large_bytes=)`),
    which two events larger than half of it may pass (`_arena.OVERSIZED_PAST_BOUND`)."""
    large_bytes_held: int
    """Shared memory the bus's large events hold now, oversized ones included."""
    subscribers: tuple[SubscriberStats, ...]
    history: int = 0
    """How many of the last events the emitter keeps for late joiners (`EventEmitter(
    history=K)`); `history_held` is how many it has now."""
    history_held: int = 0

    @property
    def blocked_seconds(self) -> float:
        """How long the emitter has waited on all subscribers together."""
        return sum(s.blocked_seconds for s in self.subscribers)


def stats(name: str, *, root: str | None = None) -> BusStats:
    """The live stats of the bus called `name`. Raises `BusNotFound` if there is none."""
    validate_name(name)
    registry = Registry(root)
    token = registry.resolve(name)
    bus = _read_bus(registry, name, token) if token is not None else None
    if bus is None:
        raise registry.no_such_bus(name)
    return bus


def buses(*, root: str | None = None) -> list[BusStats]:
    """The live stats of every bus of this user, by name."""
    registry = Registry(root)
    found = (_read_bus(registry, name, token) for name, token in registry.names())
    return [bus for bus in found if bus is not None]


def _read_bus(registry: Registry, name: str, token: str) -> BusStats | None:
    control = _attach_control_quietly(token)
    if control is None:
        return None  # removed, or not ours
    try:
        emitted = control.committed
        bus = BusStats(
            name=name,
            token=token,
            emitter_pid=_pid(registry, registry.emitter_path(token)),
            emitter_alive=is_alive(registry.emitter_path(token)),
            closed=control.closed,
            capacity=control.default_capacity,
            emitted=emitted,
            bytes_emitted=control.bytes_emitted,
            large_bytes=control.large_bytes,
            large_bytes_held=sum(size for _, size in [*control.arena_entries(),
                                                      *control.segment_entries()]),
            subscribers=tuple(_read_subscribers(registry, token, emitted)),
            history=control.history,
            history_held=control.history_held,
        )
    finally:
        control.close()
    return bus


def _read_subscribers(registry: Registry, token: str, emitted: int) -> list[SubscriberStats]:
    found = []
    queues = registry.queues(token)
    for sub_id in registry.subscriber_ids(token):
        ring = _ring.read_stats(token, sub_id)
        if ring is None:
            continue  # joining or just gone
        path = registry.sub_path(token, sub_id)
        consumed_up_to = ring.start_seq + ring.tail
        sub = SubscriberStats(
            id=sub_id,
            pid=_pid(registry, path),
            alive=is_alive(path),
            capacity=ring.capacity,
            fill=max(0, emitted - consumed_up_to) if ring.adopted else 0,
            delivered=ring.tail,
            blocked_seconds=ring.blocked_ns / 1e9,
        )
        queue = queues.get(sub_id)
        if queue is not None:
            sub = _queue_stats(registry, token, sub, queue, ring.tail)
        found.append(sub)
    return found


def _queue_stats(registry: Registry, token: str, sub: SubscriberStats,
                 queue: tuple[str, str], tail: int) -> SubscriberStats:
    """A queue's ring's stats, with its members' (read from its segment, `_group`)."""
    kind, name = queue
    try:
        state = _group.QueueState.open(token, sub.id)
    except (posix_ipc.ExistentialError, ShmBusError):
        return dataclasses.replace(sub, kind=kind, queue=name, alive=False)
    try:
        live = set(registry.live_members(token, sub.id))
        pids = tuple(pid for _, member, pid in state.member_rows() if member in live)
        expires_in = None
        if kind == "durable" and not live:
            since = state.orphaned_since
            left = state.expire_after - (time.time() - since if since else 0.0)
            expires_in = max(0.0, left)
        return dataclasses.replace(
            sub, kind=kind, queue=name, alive=bool(live), member_pids=pids,
            pid=pids[0] if pids else None, in_flight=max(0, state.claimed - tail),
            redelivered=state.redelivered, expires_in=expires_in)
    finally:
        state.close()


def _pid(registry: Registry, path: str) -> int | None:
    try:
        pid = registry.read_record(path).get("pid")
    except (IncompatibleBus, OSError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None
