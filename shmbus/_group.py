"""Queues: one ring whose events several processes take, each event by one of them.

## Shape

A *queue* is the ring of a **group** (`subscribe(name, group="workers")`: its members
share the work) or of a **durable** subscription (`subscribe(name, durable="bridge1")`:
one owner at a time, and the ring outlives it). The emitter sees it as one ring like any
subscriber's and writes it with the same protocol (`_protocol.Fanout`): it waits while
the ring is full, and the ring's `tail` frees room. What is new is the consumer side:
instead of one reader moving `tail` as it decodes, members *claim* events, decode them
on their own, *finish* them (`ack()`, or the next `recv`), and `tail` moves over the
finished prefix. Beside the ring lies the queue's segment `/sb_<token>_q<id>`:

    header   magic, version, kind (group | durable), capacity
             claimed       events (counted from the ring's start, as `tail` is) that
                           have been claimed at least once: [tail, claimed) is in flight
             free_hint     at least the number of events in [tail, claimed) given back
                           for redelivery (a hint: only its being 0 is relied on)
             next_member   the id the next member gets (ids are never reused)
             orphaned_ns   durable: when it was first found without an owner; 0 if owned
             expire_ms     durable: how long it may stay without one before it is removed
             redelivered   events given back because their holder died (statistics)
    members  MAX_MEMBERS x (member id, pid): who may hold claims (id 0: a free row)
    owners   capacity x u32, one per ring slot: for event offset o in [tail, claimed),
             the word of slot `(start + o) % capacity` says FREE (to be claimed again),
             FINISHED, or 2 + the row of the member that holds it

Every write of the segment, and every store of the ring's `tail`, happens under the
queue's **claims lock**: an exclusive `flock` on the registry file `sub.<id>.claims`.
Under it a member finishes what it was done with, advances `tail` over the finished
prefix (posting one `space` token per slot freed, as a lone subscriber does), and claims
the next events: FREE ones first, lowest first, then fresh ones from `claimed` up to
`committed`. It lets go and decodes outside the lock: a claimed slot cannot be written
over, since `tail` stays at or below every unfinished event. One lock round trip per
`recv`, a few microseconds; a slow handler never holds the lock.

## Death, and why a member's death cannot wedge the queue

Each member holds a life lock on its own record `sub.<id>.m<member>` (`_liveness`). A
member that died holding claims is found by whoever probes next: a member that waited a
slice without an event (every `_wait.SLICE`), a member claiming (at most every
`UPKEEP_EVERY`), or the emitter's upkeep of its rings (`Registry.reap_if_dead`: while it
waits on a full queue, once per slice; otherwise every sweep). The prober takes the dead
member's life lock (which makes it the only one cleaning up after it), and under the
claims lock gives every event the dead member held back (FREE), frees its row, removes
its record and posts a `data` token per event, so a waiting member wakes and claims them.
Redelivery therefore comes within a slice or two of the death, well under a second.

The claims lock cannot wedge the queue either: it is a `flock`, which the kernel drops
with a dead holder, and each update is ordered so that a holder killed halfway leaves a
state the next holder reads correctly. A claim writes the owner words before it stores
`claimed` (an owner word beyond `claimed` means nothing); a finish writes FINISHED before
it moves `tail`; a give-back raises `free_hint` before it writes FREE. The emitter never
takes the claims lock to emit; its upkeep only tries it, and skips the work while a
member holds it.

## Why not a compare-and-swap, a semaphore as a mutex, or fcntl record locks

Python has no atomic compare-and-swap on shared memory. A POSIX semaphore used as a
mutex stays taken when its holder dies: that is `multiprocessing.Queue`'s hang. `fcntl`
record locks would be released by the kernel too, but they do not exclude two members in
one process (they belong to the process), and closing *any* descriptor of the file drops
them; a `flock` belongs to the open file description, so every member opens its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterator

import posix_ipc

from . import _names, _platform
from ._errors import IncompatibleBus, ShmBusError, Timeout
from ._liveness import LifeLock
from ._ring import Ring
from ._wait import POLL_MAX_SLEEP, SPIN, fence, post_each

MAGIC = b"shmbusQU"
LAYOUT_VERSION = 1
GROUP = 1
DURABLE = 2
KINDS = {"group": GROUP, "durable": DURABLE}

MAX_MEMBERS = 64
"""Members of one group at once (rows of the segment's member table)."""

FREE = 0
FINISHED = 1
_MEMBER_BASE = 2

UPKEEP_EVERY = 0.5
"""How often a member that keeps finding events still looks for dead members' claims
(one that waits looks every slice)."""

LOCK_TIMEOUT = 5.0
"""The longest a join or a leave waits for the claims lock (held for microseconds by a
live member, forever only by one that is stopped: SIGSTOP)."""

_HEADER = 128
_HEAD = struct.Struct("<8sIIQ")  # magic, version, kind, capacity
_CLAIMED, _FREE_HINT, _NEXT_MEMBER, _ORPHANED, _EXPIRE, _REDELIVERED = 3, 4, 5, 6, 7, 8
"""Word indexes in the header."""


def segment_size(capacity: int) -> int:
    return _HEADER + MAX_MEMBERS * 16 + capacity * 4


class QueueState:
    """A mapped queue segment (see the module docstring). Writes only under the claims
    lock; reads anywhere (stats)."""

    def __init__(self, mapping: _platform.Mapping, where: str) -> None:
        view = mapping.view
        if len(view) < _HEADER:
            raise IncompatibleBus(f"{where}: queue segment of {len(view)} bytes is corrupt")
        magic, version, kind, capacity = _HEAD.unpack_from(view, 0)
        if magic != MAGIC or version != LAYOUT_VERSION or kind not in (GROUP, DURABLE) \
                or len(view) < segment_size(capacity):
            raise IncompatibleBus(
                f"{where}: queue segment has magic {magic!r} version {version}: corrupt, or "
                "made by another shmbus version. Use one shmbus version in every process."
            )
        self.mapping = mapping
        self.kind: int = kind
        self.capacity: int = capacity
        self.words = view[:_HEADER].cast("Q")
        self.members = view[_HEADER:_HEADER + MAX_MEMBERS * 16].cast("Q")
        self.owners = view[_HEADER + MAX_MEMBERS * 16:segment_size(capacity)].cast("I")

    @classmethod
    def create(cls, token: str, sub_id: int, capacity: int, kind: int,
               expire_after: float) -> "QueueState":
        name = _names.queue_name(token, sub_id)
        mapping = _platform.create_segment(name, segment_size(capacity))
        _HEAD.pack_into(mapping.view, 0, MAGIC, LAYOUT_VERSION, kind, capacity)
        state = cls(mapping, name)
        state.words[_NEXT_MEMBER] = 1
        state.words[_EXPIRE] = int(expire_after * 1000)
        return state

    @classmethod
    def open(cls, token: str, sub_id: int) -> "QueueState":
        """Raises `posix_ipc.ExistentialError` if it is gone."""
        name = _names.queue_name(token, sub_id)
        mapping = _platform.open_segment(name)
        try:
            return cls(mapping, name)
        except BaseException:
            mapping.close()
            raise

    def close(self) -> None:
        for view in (self.words, self.members, self.owners):
            view.release()
        self.mapping.close()

    # -- stats (read anywhere) ----------------------------------------------------------

    @property
    def claimed(self) -> int:
        return self.words[_CLAIMED]

    @property
    def redelivered(self) -> int:
        return self.words[_REDELIVERED]

    @property
    def orphaned_since(self) -> float | None:
        """Durable: when (time.time()) it was first found without an owner, or None."""
        stamp = self.words[_ORPHANED]
        return stamp / 1e9 if stamp else None

    @property
    def expire_after(self) -> float:
        return self.words[_EXPIRE] / 1000

    def member_rows(self) -> list[tuple[int, int, int]]:
        """(row, member id, pid) of every row in use."""
        members = self.members
        return [(row, members[2 * row], members[2 * row + 1])
                for row in range(MAX_MEMBERS) if members[2 * row]]

    # -- under the claims lock ----------------------------------------------------------

    def set_expire_after(self, seconds: float) -> None:
        self.words[_EXPIRE] = int(seconds * 1000)

    def mark_orphaned(self, now: float | None = None) -> None:
        """Durable: start its expiry clock, unless it runs already."""
        if not self.words[_ORPHANED]:
            self.words[_ORPHANED] = int((time.time() if now is None else now) * 1e9) or 1

    def mark_owned(self) -> None:
        self.words[_ORPHANED] = 0

    def add_member(self, member_id: int, pid: int) -> int:
        """Write a member into a free row; its row. Raises ShmBusError if none is free."""
        members = self.members
        for row in range(MAX_MEMBERS):
            if not members[2 * row]:
                members[2 * row + 1] = pid
                members[2 * row] = member_id
                return row
        raise ShmBusError(f"the group already has {MAX_MEMBERS} members, the most it takes")

    def next_member_id(self) -> int:
        member_id = self.words[_NEXT_MEMBER]
        self.words[_NEXT_MEMBER] = member_id + 1
        return member_id

    def remove_member(self, row: int) -> None:
        self.members[2 * row] = 0
        self.members[2 * row + 1] = 0

    def claim(self, ring: Ring, start: int, row: int, want: int, committed: int
              ) -> list[int]:
        """Claim up to `want` events for member `row`: given-back ones first, lowest
        first, then fresh ones below `committed` (a sequence number). Their offsets."""
        words, owners, capacity = self.words, self.owners, self.capacity
        mine = row + _MEMBER_BASE
        taken: list[int] = []
        claimed = words[_CLAIMED]
        if words[_FREE_HINT]:
            tail = ring.tail
            free = [o for o in range(tail, claimed) if owners[(start + o) % capacity] == FREE]
            taken = free[:want]
            for offset in taken:
                owners[(start + offset) % capacity] = mine
            words[_FREE_HINT] = len(free) - len(taken)
        fresh = min(want - len(taken), committed - start - claimed)
        if fresh > 0:
            for offset in range(claimed, claimed + fresh):
                owners[(start + offset) % capacity] = mine
            words[_CLAIMED] = claimed + fresh  # the claim exists from this store on
            taken.extend(range(claimed, claimed + fresh))
        return taken

    def finish(self, ring: Ring, start: int, row: int, offsets: list[int]) -> int:
        """Mark the events at `offsets` that member `row` still holds finished, and move
        the ring's `tail` over the finished prefix; how many slots that freed (the caller
        posts that many `space` tokens, after letting go of the lock)."""
        owners, capacity = self.owners, self.capacity
        mine = row + _MEMBER_BASE
        tail = ring.tail
        for offset in offsets:
            index = (start + offset) % capacity
            if offset >= tail and owners[index] == mine:
                owners[index] = FINISHED
        claimed = self.words[_CLAIMED]
        moved = tail
        while moved < claimed and owners[(start + moved) % capacity] == FINISHED:
            moved += 1
        if moved > tail:
            if _platform.NEEDS_FENCES:
                fence(ring.space)  # the slots read before `tail` frees them
            ring.set_tail(moved)
        return moved - tail

    def give_back(self, ring: Ring, start: int, row: int, offsets: list[int] | None,
                  died: bool = False) -> int:
        """Make the events at `offsets` (None: all) that member `row` holds claimable
        again; how many. The caller posts that many `data` tokens."""
        owners, capacity = self.owners, self.capacity
        mine = row + _MEMBER_BASE
        tail = ring.tail
        if offsets is None:
            offsets = list(range(tail, self.words[_CLAIMED]))
        back = [o for o in offsets
                if o >= tail and owners[(start + o) % capacity] == mine]
        if back:
            self.words[_FREE_HINT] += len(back)  # first: a hint may be high, never low
            for offset in back:
                owners[(start + offset) % capacity] = FREE
            if died:
                self.words[_REDELIVERED] += len(back)
        return len(back)

    def held_by(self, ring: Ring, start: int, row: int) -> list[int]:
        """The offsets member `row` holds now (after an interruption: to reconcile)."""
        owners, capacity = self.owners, self.capacity
        mine = row + _MEMBER_BASE
        return [o for o in range(ring.tail, self.words[_CLAIMED])
                if owners[(start + o) % capacity] == mine]

    def others_hold(self, ring: Ring, start: int, row: int) -> bool:
        """Whether any event in flight is claimable or held by a member other than `row`."""
        owners, capacity = self.owners, self.capacity
        mine = row + _MEMBER_BASE
        return any(owners[(start + o) % capacity] not in (FINISHED, mine)
                   for o in range(ring.tail, self.words[_CLAIMED]))


class ClaimsLock:
    """The exclusive `flock` on a queue's `sub.<id>.claims` file, one descriptor per
    member (see the module docstring on why `flock`).

    Taken by polling (a try, a short spell of yielding, then sleeps growing to
    `POLL_MAX_SLEEP`) so that a call keeps its timeout and Ctrl-C stays prompt: the lock
    is held for microseconds at a time. The descriptor is a `_liveness` one, so a fork
    child closes its copy at once and can never hold the lock for a dead parent.
    """

    def __init__(self, path: str) -> None:
        self._lock = LifeLock(path, os.O_RDWR)
        self._maybe_held = False

    def acquire(self, deadline: float | None) -> bool:
        # Raised before the lock is taken: an interruption just after the flock returns
        # must still find `release` letting go (unlocking an unheld flock is harmless).
        self._maybe_held = True
        if self._try():
            return True
        spin_until = time.monotonic() + SPIN
        pause = 20e-6
        while True:
            now = time.monotonic()
            if now < spin_until:
                os.sched_yield()
            else:
                if deadline is not None and now >= deadline:
                    self._maybe_held = False
                    return False
                time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - now)))
                pause = min(2 * pause, POLL_MAX_SLEEP)
            if self._try():
                return True

    def _try(self) -> bool:
        return self._lock.try_flock(fcntl.LOCK_EX)

    def release(self) -> None:
        if self._maybe_held and self._lock.fd >= 0:
            fcntl.flock(self._lock.fd, fcntl.LOCK_UN)
        self._maybe_held = False

    @contextlib.contextmanager
    def held(self, deadline: float | None, what: str) -> Iterator[None]:
        try:
            if not self.acquire(deadline):
                raise Timeout(f"the claims lock of {what} stayed taken (is a member "
                              "stopped, SIGSTOP?)")
            yield
        finally:
            self.release()

    def close(self) -> None:
        self.release()
        self._lock.release()


def try_claims_lock(path: str) -> "ClaimsLock | None":
    """The claims lock if it is free now (for upkeep, which skips when it is not)."""
    try:
        lock = ClaimsLock(path)
    except FileNotFoundError:
        return None
    lock._maybe_held = True
    if lock._try():
        return lock
    lock.close()
    return None


MemberPath = Callable[[int], str]
"""A member id's record path (`Registry.member_path` for one queue)."""


def requeue_dead(state: QueueState, ring: Ring | None, start: int | None,
                 member_path: MemberPath, except_row: int | None = None) -> tuple[int, int]:
    """Under the claims lock: give back every event held by a dead member, free its row
    and remove its record; (events given back, live members left). `ring` and `start`
    None: the ring was never adopted, so no member can hold anything yet."""
    given = live = 0
    for row, member_id, _ in state.member_rows():
        if row == except_row:
            live += 1
            continue
        path = member_path(member_id)
        life = LifeLock.take_if_dead(path)
        if life is None and os.path.exists(path):
            live += 1
            continue
        # Dead (its lock was free), or its record gone while its row was not: it died
        # leaving. Holding its lock makes this the only process cleaning up after it.
        try:
            if ring is not None and start is not None:
                given += state.give_back(ring, start, row, None, died=True)
            state.remove_member(row)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            if life is not None:
                life.release()
    return given, live


def wake(sem: posix_ipc.Semaphore, count: int) -> None:
    """Post `count` tokens: one per event made claimable, or per slot freed."""
    if count > 0:
        post_each([sem], count)


def remove(token: str, sub_id: int) -> None:
    """Remove a queue's segment, if it has one (every subscriber is tried: cheap)."""
    _platform.unlink_segment(_names.queue_name(token, sub_id))
