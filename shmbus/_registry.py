"""The registry: where buses and subscribers are written down, and who cleans up.

## Shape

A private directory per user (mode 0700; `SHMBUS_DIR`, else `$XDG_RUNTIME_DIR/shmbus`,
else `/tmp/shmbus-<uid>`):

    names/<name>           symlink to ../buses/<token>, the bus now holding that name
    buses/<token>/         one bus instance; flock on this directory = its mutex
        emitter            JSON about the emitter; flock-held while the emitter lives
        sub.<id>           JSON about subscriber <id>; flock-held while it lives (a
                           queue's record is held by nobody: its members' records are)
        sub.<id>.m<n>      JSON about member <n> of queue <id> (`_group`); flock-held
                           while that member lives
        sub.<id>.claims    the flock every change of queue <id>'s claims is made under
        group.<g>          symlink to sub.<id>: the ring of group <g>
        durable.<d>        symlink to sub.<id>: the ring of durable subscription <d>

The registry is the authoritative list of what a bus created: every shared object is
named from the token and a subscriber id (see `_names`), and a record is written
*before* the objects it names are created. So whatever died half-way, the registry
names everything there is to remove; that matters on macOS, which cannot list shared
memory or semaphores.

## Who removes what

- A subscriber owns its ring, its two semaphores and its `sub.<id>` file, and removes
  them when it closes.
- A queue (a group's ring, or a durable subscription's) belongs to its members together:
  each owns its member record; the last member out of a group removes the queue (its
  ring, semaphores, claims segment and files), and a durable one stays until it is
  unsubscribed (`remove_durable`), or until it has had no owner for its `expire_after`
  (then whoever probes it removes it), or until the bus goes.
- The emitter owns the control block, the large-event segments, the `emitter` file, the
  name link and the instance directory. If subscribers are still draining when it
  closes, those outlive it: the last subscriber out removes them.
- A dead process's objects are removed by whoever first takes its life lock
  (`_liveness`): the emitter when it notices, or any sweep (`cleanup()`, and every new
  emitter or subscription runs one). Taking the lock makes that process the only
  cleaner.

Membership changes (join, leave, reap) happen under the instance mutex; name changes,
bus creation and whole-instance removal under the mutex of the root directory (then the
instance's), so a sweep never mistakes a bus being created for an abandoned one. The
emitter reads membership without any mutex (see `EventEmitter._refresh`), so a process
stopped inside a critical section cannot stall `emit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import posix_ipc

from . import _arena, _group, _names, _platform, _ring
from ._platform import files_checked
from ._control import SIZE as CONTROL_SIZE
from ._control import ControlBlock
from ._errors import (
    BusExists,
    BusNotFound,
    DurableInUse,
    ForeignObject,
    IncompatibleBus,
    InvalidArgument,
    ShmBusError,
    shown,
)
from ._liveness import FileMutex, LifeLock, is_alive, try_lock

REGISTRY_VERSION = 1
_SQUAT_RETRIES = 8
SWEEP_PERIOD = 1.0
"""New emitters and subscriptions sweep a sample of the registry at most this often,
across all of a user's processes: creating a bus costs about the same with 10 buses or
10,000."""
SWEEP_SAMPLE = 8
"""Buses each such sweep looks at, picked at random; `cleanup()` looks at all."""
DIR_ENV = "SHMBUS_DIR"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_TOKEN = re.compile(r"[0-9a-f]{8}")
_SUB_FILE = re.compile(r"sub\.([0-9]{1,19})")
_LIFE_FILE = re.compile(r"sub\.[0-9]{1,19}(\.m[0-9]{1,19})?")
"""A file whose flock says a process lives: a subscriber's record, or a queue member's."""
_MEMBER_FILE = re.compile(r"sub\.([0-9]{1,19})\.m([0-9]{1,19})")
QUEUE_KINDS = ("group", "durable")


def validate_name(name: object) -> str:
    return _valid_name(name, "bus", "a bus name")


def validate_queue_name(kind: str, queue: object) -> str:
    """A group's or a durable subscription's name: the rules of a bus name."""
    return _valid_name(queue, kind, kind)


def _valid_name(name: object, kind: str, called: str) -> str:
    """`name` if it is a valid name of a `kind` (what a message `called` it), else
    `InvalidArgument`."""
    if not isinstance(name, str):
        raise InvalidArgument(f"{called} must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid {kind} name {shown(name)}: use 1 to 128 characters from A-Z a-z 0-9 "
            "_ . -, not starting with '.' or '-'"
        )
    return name


@dataclass
class QueueJoin:
    """What joining a queue gives its new member (`Registry.join_queue`)."""

    sub_id: int
    ring: _ring.Ring
    state: _group.QueueState
    lock: _group.ClaimsLock
    member_id: int
    row: int
    life: LifeLock
    record: dict[str, Any]


def default_root() -> str:
    """`$SHMBUS_DIR`, else `$XDG_RUNTIME_DIR/shmbus`, else `/tmp/shmbus-<uid>`.

    A relative `SHMBUS_DIR` is made absolute against the working directory of the first
    process that reads it, and written back to the environment: every process that one
    starts then finds the same registry, wherever it runs.
    """
    configured = os.environ.get(DIR_ENV)
    if configured:
        if not os.path.isabs(configured):
            configured = os.environ[DIR_ENV] = os.path.abspath(configured)
        return configured
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "shmbus")
    return os.path.join(tempfile.gettempdir(), f"shmbus-{os.getuid()}")


@dataclass
class Cleaned:
    """What a sweep removed, for `shmbus gc` to report."""

    buses: list[str] = field(default_factory=list)
    subscribers: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.buses or self.subscribers or self.names)


class Registry:
    """One registry directory and the operations on it."""

    def __init__(self, root: str | None = None) -> None:
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise InvalidArgument(f"root must be a registry directory's path, a str, got "
                                  f"{shown(root)}")
        path = os.path.abspath(root or default_root())
        try:
            self.root = _private_root(path)
        except ShmBusError:
            raise
        except OSError as exc:
            raise ShmBusError(
                f"registry directory {path} cannot be used: {exc.strerror or exc}. Set "
                f"{DIR_ENV} to a directory of your own."
            ) from exc
        self.names_dir = os.path.join(self.root, "names")
        self.buses_dir = os.path.join(self.root, "buses")
        _ensure_private_dir(self.names_dir)
        _ensure_private_dir(self.buses_dir)

    # -- paths ----------------------------------------------------------------------

    def bus_dir(self, token: str) -> str:
        return os.path.join(self.buses_dir, token)

    def emitter_path(self, token: str) -> str:
        return os.path.join(self.buses_dir, token, "emitter")

    def sub_path(self, token: str, sub_id: int) -> str:
        return os.path.join(self.buses_dir, token, f"sub.{sub_id}")

    def wake_pipe_path(self, token: str, owner: int | str) -> str:
        """The wake pipe (see `_wakepipe`) of subscriber `owner`, or of the emitter."""
        # "bell.": the on-disk name, kept so that processes of this layout version agree.
        return os.path.join(self.buses_dir, token, f"bell.{owner}")

    def root_mutex(self) -> FileMutex:
        return FileMutex(self.root)

    def bus_mutex(self, token: str) -> FileMutex:
        """Raises FileNotFoundError on entry if the instance is gone."""
        return FileMutex(self.bus_dir(token))

    # -- names ----------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        try:
            token = os.path.basename(os.readlink(os.path.join(self.names_dir, name)))
        except OSError:
            return None
        return token if _TOKEN.fullmatch(token) else None

    def no_such_bus(self, name: str) -> BusNotFound:
        """The one way every part of shmbus says that `name` names no live bus."""
        return BusNotFound(f"no bus named {name!r} (registry {self.root}; `shmbus ls` "
                           "lists the buses there)")

    def names(self) -> Iterator[tuple[str, str]]:
        for name in sorted(_listdir(self.names_dir)):
            token = self.resolve(name)
            if token is not None:
                yield name, token

    def release_name(self, name: str, token: str) -> None:
        with self.root_mutex():
            if self.resolve(name) == token:
                _unlink(os.path.join(self.names_dir, name))

    # -- the emitter's side ---------------------------------------------------------

    def create_bus(self, name: str, record: dict[str, Any], slot_size: int,
                   default_capacity: int, large_bytes: int
                   ) -> tuple[str, LifeLock, ControlBlock]:
        """Claim `name` for a new bus instance: its token, life lock and control block."""
        previous = self.resolve(name)
        if previous is not None and not is_alive(self.emitter_path(previous)):
            self._sweep_bus(previous, Cleaned())  # a dead one's leftovers go now
        with self.root_mutex():
            old = self.resolve(name)
            if old is not None and is_alive(self.emitter_path(old)):
                raise BusExists(
                    f"bus {name!r} is held by a live emitter (pid "
                    f"{self._pid_of(self.emitter_path(old))}); close it first or pick "
                    "another name"
                )
            token, life, control = self._new_instance(name, record, slot_size,
                                                      default_capacity, large_bytes)
            link = os.path.join(self.names_dir, f".{name}.{token}")
            os.symlink(os.path.join("..", "buses", token), link)
            os.replace(link, os.path.join(self.names_dir, name))
        return token, life, control

    def _new_instance(self, name: str, record: dict[str, Any], slot_size: int,
                      default_capacity: int, large_bytes: int
                      ) -> tuple[str, LifeLock, ControlBlock]:
        """A fresh token with its directory, emitter record and control block."""
        while True:
            token = secrets.token_hex(4)
            try:
                os.mkdir(self.bus_dir(token), 0o700)
            except FileExistsError:
                continue
            life: LifeLock | None = None
            created = False
            try:
                record = {**record, "version": REGISTRY_VERSION, "name": name,
                          "token": token}
                life = LifeLock.create(self.emitter_path(token), _json(record))
                buf = _platform.create_segment(_names.control_name(token), CONTROL_SIZE)
                created = True
                return token, life, ControlBlock.initialize(buf, slot_size,
                                                            default_capacity, large_bytes)
            except BaseException as exc:
                if created:  # the registry that names it goes next: nothing else would
                    _platform.unlink_segment(_names.control_name(token))
                _remove_tree_quietly(self.bus_dir(token))
                if life is not None:
                    life.release()
                if not isinstance(exc, posix_ipc.ExistentialError):
                    raise
                # The segment name is taken by a bus of another registry: draw again.

    # -- the subscribers' side ------------------------------------------------------

    def open_bus(self, name: str) -> tuple[str, ControlBlock]:
        """The token and mapped control block of the live bus called `name`."""
        token = self.resolve(name)
        if token is None:
            raise self.no_such_bus(name)
        try:
            buf = _platform.open_segment(_names.control_name(token))
        except posix_ipc.ExistentialError:
            raise BusNotFound(f"bus {name!r} is gone (its emitter closed or died)") from None
        return token, ControlBlock.attach(buf, f"bus {name!r}")

    def join(self, name: str, token: str, control: ControlBlock, capacity: int,
             record: dict[str, Any]) -> tuple[int, LifeLock, _ring.Ring]:
        """Register a new subscriber and create its ring, or raise BusNotFound."""
        try:
            with self.bus_mutex(token):
                if control.closed or not is_alive(self.emitter_path(token)):
                    raise BusNotFound(f"bus {name!r} is closed (its emitter closed or died)")
                sub_id, life, ring = self._new_subscriber(token, control, capacity, record)
                control.bump_generation()
        except BusNotFound:  # (itself a FileNotFoundError)
            self._sweep_bus(token, Cleaned())  # a dead one's leftovers go now
            raise
        except FileNotFoundError:
            raise BusNotFound(f"bus {name!r} is gone (its emitter closed or died)") from None
        return sub_id, life, ring

    def _new_subscriber(self, token: str, control: ControlBlock, capacity: int,
                        record: dict[str, Any]) -> tuple[int, LifeLock, _ring.Ring]:
        """Under the bus mutex: record a subscriber, then create its ring."""
        for _ in range(_SQUAT_RETRIES):
            sub_id = control.allocate_sub_id()
            entry = {**record, "version": REGISTRY_VERSION, "id": sub_id,
                     "capacity": capacity}
            life = LifeLock.create(self.sub_path(token, sub_id), _json(entry))
            try:
                return sub_id, life, _ring.Ring.create(token, sub_id, capacity,
                                                       control.slot_size)
            except BaseException as exc:
                _unlink(self.sub_path(token, sub_id))
                life.release()
                if not isinstance(exc, posix_ipc.ExistentialError):
                    raise
                # Someone created one of this ring's names first: try the next id.
        raise ShmBusError(
            f"the shared-memory names for new subscribers of bus {token} are already "
            "taken by objects shmbus did not create; another process may be squatting "
            "them. On Linux `ls -l /dev/shm/*sb_" + token + "_r*` shows whose they are "
            "(macOS cannot list them)."
        )

    def leave(self, token: str, sub_id: int, life: LifeLock,
              control: ControlBlock | None) -> None:
        """Remove a closing subscriber's objects; the last one out removes the bus."""
        try:
            with self.bus_mutex(token):
                self._remove_subscriber_objects(token, sub_id, queue=False)
                life.release()
                if control is not None:
                    control.bump_generation()
        except FileNotFoundError:
            life.release()
            return
        self.remove_bus_if_abandoned(token)

    # -- queues: groups and durable subscriptions (see `_group`) ---------------------

    def member_path(self, token: str, sub_id: int, member_id: int) -> str:
        return os.path.join(self.buses_dir, token, f"sub.{sub_id}.m{member_id}")

    def claims_path(self, token: str, sub_id: int) -> str:
        return os.path.join(self.buses_dir, token, f"sub.{sub_id}.claims")

    def queue_link(self, token: str, kind: str, queue: str) -> str:
        """The symlink naming the ring of group or durable subscription `queue`."""
        return os.path.join(self.buses_dir, token, f"{kind}.{queue}")

    def queue_id(self, token: str, kind: str, queue: str) -> int | None:
        """The subscriber id of the ring of `queue`, if it has one."""
        try:
            target = os.readlink(self.queue_link(token, kind, queue))
        except OSError:
            return None
        match = _SUB_FILE.fullmatch(target)
        return int(match.group(1)) if match else None

    def queues(self, token: str) -> dict[int, tuple[str, str]]:
        """{subscriber id: (kind, name)} of every queue of the bus."""
        found = {}
        for entry in _listdir(self.bus_dir(token)):
            kind, _, queue = entry.partition(".")
            if kind in QUEUE_KINDS:
                sub_id = self.queue_id(token, kind, queue)
                if sub_id is not None:
                    found[sub_id] = (kind, queue)
        return found

    def join_queue(self, name: str, token: str, control: ControlBlock, kind: str,
                   queue: str, capacity: int | None, record: dict[str, Any],
                   expire_after: float, new_capacity: int | None = None) -> "QueueJoin":
        """Join group or durable subscription `queue` as a new member, creating its ring
        (of `new_capacity`, else `capacity`, else the bus's) if it has none; raise
        BusNotFound, or DurableInUse for a durable subscription whose owner lives."""
        try:
            with self.bus_mutex(token):
                if control.closed or not is_alive(self.emitter_path(token)):
                    raise BusNotFound(f"bus {name!r} is closed (its emitter closed or died)")
                joined = None
                sub_id = self.queue_id(token, kind, queue)
                if sub_id is not None:
                    joined = self._join_existing(name, token, control, sub_id, kind, queue,
                                                 capacity, record, expire_after)
                if joined is None:
                    joined = self._new_queue(token, control, kind, queue,
                                             new_capacity or capacity, record, expire_after)
                control.bump_generation()
                return joined
        except BusNotFound:  # (itself a FileNotFoundError)
            self._sweep_bus(token, Cleaned())
            raise
        except FileNotFoundError:
            raise BusNotFound(f"bus {name!r} is gone (its emitter closed or died)") from None

    def _join_existing(self, name: str, token: str, control: ControlBlock, sub_id: int,
                       kind: str, queue: str, capacity: int | None, record: dict[str, Any],
                       expire_after: float) -> "QueueJoin | None":
        """Under the bus mutex: a new member of the queue there is; None if what the link
        names is gone (a leftover of a crash: the link is removed)."""
        found = self._record_quietly(self.sub_path(token, sub_id))
        ring = state = lock = None
        try:
            if found.get("queue") == kind:
                ring = _ring.Ring.attach(token, sub_id, control.slot_size)
                state = _group.QueueState.open(token, sub_id)
                lock = _group.ClaimsLock(self.claims_path(token, sub_id))
        except (posix_ipc.ExistentialError, FileNotFoundError, IncompatibleBus,
                ForeignObject):
            pass
        if ring is None or state is None or lock is None:
            if lock is not None:
                lock.close()
            if state is not None:
                state.close()
            if ring is not None:
                ring.detach()
            self._remove_subscriber_objects(token, sub_id, queue=True)
            return None
        try:
            if capacity is not None and capacity != ring.capacity:
                raise InvalidArgument(
                    f"the {kind} {queue!r} of bus {name!r} has a ring of {ring.capacity} "
                    f"slots; subscribe to it without capacity=, or with {ring.capacity}")
            member = self._add_member(token, sub_id, ring, state, lock, kind, queue, record,
                                      expire_after)
        except BaseException:
            lock.close()
            state.close()
            ring.detach()
            raise
        return QueueJoin(sub_id, ring, state, lock, *member, found)

    def _new_queue(self, token: str, control: ControlBlock, kind: str, queue: str,
                   capacity: int | None, record: dict[str, Any], expire_after: float
                   ) -> "QueueJoin":
        """Under the bus mutex: a queue's record, ring, claims file, segment and link,
        in that order (a record names what may exist before it exists), and a member."""
        wanted = capacity if capacity is not None else control.default_capacity
        entry = {**record, "queue": kind, "queue_name": queue}
        for _ in range(_SQUAT_RETRIES):
            sub_id, life, ring = self._new_subscriber(token, control, wanted, entry)
            state = lock = None
            try:
                with open(self.claims_path(token, sub_id), "xb"):
                    pass
                state = _group.QueueState.create(token, sub_id, ring.capacity,
                                                 _group.KINDS[kind], expire_after)
                lock = _group.ClaimsLock(self.claims_path(token, sub_id))
                os.symlink(f"sub.{sub_id}", self.queue_link(token, kind, queue))
                member = self._add_member(token, sub_id, ring, state, lock, kind, queue,
                                          record, expire_after)
                return QueueJoin(sub_id, ring, state, lock, *member,
                                 self._record_quietly(self.sub_path(token, sub_id)))
            except BaseException as exc:
                for held in (lock, state):
                    if held is not None:
                        held.close()
                ring.detach()
                self._remove_subscriber_objects(token, sub_id, queue=True)
                if not isinstance(exc, posix_ipc.ExistentialError):
                    raise
                # Someone created the queue segment's name first: try the next id.
            finally:
                life.release()  # a queue's record is held by nobody (see `_group`)
        raise ShmBusError(
            f"the shared-memory names for new queues of bus {token} are already taken by "
            "objects shmbus did not create; list /dev/shm for 'sb_" + token + "_q*'")

    def _add_member(self, token: str, sub_id: int, ring: _ring.Ring,
                    state: _group.QueueState, lock: _group.ClaimsLock, kind: str,
                    queue: str, record: dict[str, Any], expire_after: float
                    ) -> tuple[int, int, LifeLock]:
        """Under the bus mutex: (member id, row, life lock) of a new member. The dead
        members' claims are given back first, which is how a durable subscription's new
        owner resumes with what its predecessor had not finished."""
        deadline = time.monotonic() + _group.LOCK_TIMEOUT
        given = 0
        with lock.held(deadline, f"the {kind} {queue!r}"):
            start = ring.start_seq if ring.adopted else None
            given, live = _group.requeue_dead(state, ring, start,
                                              self._member_path_of(token, sub_id))
            if kind == "durable" and live:
                owner = next((pid for _, _, pid in state.member_rows()), "?")
                raise DurableInUse(
                    f"the durable subscription {queue!r} is owned by a live process (pid "
                    f"{owner}); it has one owner at a time. Close it there, or use a "
                    "group to share its events")
            member_id = state.next_member_id()
            entry = {**record, "version": REGISTRY_VERSION, "queue": kind,
                     "queue_name": queue, "member": member_id}
            life = LifeLock.create(self.member_path(token, sub_id, member_id), _json(entry))
            try:
                row = state.add_member(member_id, os.getpid())
            except BaseException:
                _unlink(self.member_path(token, sub_id, member_id))
                life.release()
                raise
            state.mark_owned()
            if kind == "durable":
                state.set_expire_after(expire_after)
        _group.wake(ring.data, given)
        return member_id, row, life

    def _member_path_of(self, token: str, sub_id: int) -> _group.MemberPath:
        def path(member_id: int) -> str:
            return self.member_path(token, sub_id, member_id)
        return path

    def leave_queue(self, token: str, sub_id: int, member_id: int, life: LifeLock,
                    ring: _ring.Ring, state: _group.QueueState, control: ControlBlock | None,
                    keep: bool) -> None:
        """A member that has given back or finished its claims and left its row goes.
        If it was the last one, the queue goes too, unless `keep` (a durable one: its
        expiry clock starts)."""
        try:
            with self.bus_mutex(token):
                _unlink(self.member_path(token, sub_id, member_id))
                life.release()
                if self.live_members(token, sub_id):
                    return  # the queue goes on, so the bus does
                if keep:
                    state.mark_orphaned()
                else:
                    ring.mark_sub_closed()
                    with contextlib.suppress(posix_ipc.Error):
                        ring.space.release()  # an emitter blocked on this ring moves on
                    self._remove_subscriber_objects(token, sub_id, queue=True)
                    if control is not None:
                        control.bump_generation()
        except FileNotFoundError:
            life.release()
            return
        self.remove_bus_if_abandoned(token)

    def remove_durable(self, name: str, durable: str) -> None:
        """Remove durable subscription `durable` of bus `name` and what it holds.

        Raises `BusNotFound`, `InvalidArgument` if the bus has no such durable
        subscription, and `DurableInUse` if its owner lives.
        """
        validate_name(name)
        validate_queue_name("durable", durable)
        token = self.resolve(name)
        if token is None:
            raise self.no_such_bus(name)
        for _ in range(100):
            sub_id = self.queue_id(token, "durable", durable)
            if sub_id is None:
                raise InvalidArgument(f"bus {name!r} has no durable subscription {durable!r} "
                                      "(`shmbus ls` lists them)")
            life = LifeLock.take_if_dead(self.sub_path(token, sub_id))
            if life is None:
                time.sleep(0.01)  # another process is probing it: a moment
                continue
            control = _attach_control_quietly(token)
            try:
                with self.bus_mutex(token):
                    live = self.live_members(token, sub_id)
                    if live:
                        raise DurableInUse(
                            f"the durable subscription {durable!r} of bus {name!r} is owned "
                            "by a live process; close it there first")
                    self._remove_subscriber_objects(token, sub_id, queue=True)
                    if control is not None:
                        control.bump_generation()
                return
            except FileNotFoundError:
                raise self.no_such_bus(name) from None
            finally:
                life.release()
                if control is not None:
                    control.close()
        raise ShmBusError(f"the durable subscription {durable!r} of bus {name!r} stayed "
                          "locked by another process; try again")

    def live_members(self, token: str, sub_id: int) -> list[int]:
        """The ids of queue `sub_id`'s members whose processes live."""
        live = []
        for entry in _listdir(self.bus_dir(token)):
            match = _MEMBER_FILE.fullmatch(entry)
            if match and int(match.group(1)) == sub_id and is_alive(
                    os.path.join(self.bus_dir(token), entry)):
                live.append(int(match.group(2)))
        return live

    def _reap_queue_if_dead(self, token: str, sub_id: int, record: dict[str, Any],
                            control: ControlBlock | None) -> bool:
        """With the queue's record lock held: give back what its dead members held, and
        remove the queue if it has no live member (and, if durable, has had none for
        its `expire_after`); True if it is gone."""
        try:
            state: _group.QueueState | None = _group.QueueState.open(token, sub_id)
        except (posix_ipc.ExistentialError, ShmBusError):
            state = None  # half made or half removed: it goes below, unless a member lives
        try:
            if state is not None:
                self._requeue_dead_members(token, sub_id, state)
            if self.live_members(token, sub_id):
                return False  # the usual answer, found without the bus's mutex
            # Only tried: the emitter calls this, and must never wait on a process that
            # is stopped inside a join or a leave (the next probe looks again).
            with self._bus_mutex_if_free(token) as held:
                if not held or self.live_members(token, sub_id):
                    return False
                if record.get("queue") == "durable" and state is not None:
                    state.mark_orphaned()  # the first prober to find it ownerless
                    since = state.orphaned_since
                    if since is not None and time.time() < since + state.expire_after:
                        return False
                self._remove_subscriber_objects(token, sub_id, queue=True)
                if control is not None:
                    control.bump_generation()
                return True
        finally:
            if state is not None:
                state.close()

    @contextlib.contextmanager
    def _bus_mutex_if_free(self, token: str) -> Iterator[bool]:
        """The bus's mutex if nobody holds it now: True inside, or False."""
        lock = LifeLock(self.bus_dir(token), os.O_RDONLY)  # FileNotFoundError if gone
        try:
            try:
                fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            lock.release()

    def _requeue_dead_members(self, token: str, sub_id: int,
                              state: _group.QueueState) -> None:
        """Give back the claims of the queue's dead members, if any died, unless a member
        holds the claims lock (then it looks after them itself)."""
        if all(is_alive(self.member_path(token, sub_id, member))
               for _, member, _ in state.member_rows()):
            return
        lock = _group.try_claims_lock(self.claims_path(token, sub_id))
        if lock is None:
            return
        try:
            try:
                ring = _ring.Ring.attach(token, sub_id, _ring.SLOT_SIZE)
            except (posix_ipc.ExistentialError, ShmBusError):
                return
            try:
                start = ring.start_seq if ring.adopted else None
                given, _ = _group.requeue_dead(state, ring, start,
                                               self._member_path_of(token, sub_id))
                lock.release()
                _group.wake(ring.data, given)
            finally:
                ring.detach()
        finally:
            lock.close()

    def _remove_subscriber_objects(self, token: str, sub_id: int, queue: bool) -> None:
        """Under the bus mutex: everything of subscriber (or queue) `sub_id`, its record
        last."""
        _ring.unlink_ring(token, sub_id)
        _unlink(self.wake_pipe_path(token, sub_id))
        if queue:
            _group.remove(token, sub_id)
            target = f"sub.{sub_id}"
            for entry in _listdir(self.bus_dir(token)):
                path = os.path.join(self.bus_dir(token), entry)
                if entry.startswith(target + "."):
                    _unlink(path)  # member records, the claims file
                elif entry.partition(".")[0] in QUEUE_KINDS:
                    with contextlib.suppress(OSError):
                        if os.readlink(path) == target:
                            _unlink(path)
        _unlink(self.sub_path(token, sub_id))

    def record_of(self, token: str, sub_id: int) -> dict[str, Any]:
        """Subscriber `sub_id`'s record, or {} if it is gone or unreadable."""
        return self._record_quietly(self.sub_path(token, sub_id))

    def _record_quietly(self, path: str) -> dict[str, Any]:
        try:
            return self.read_record(path)
        except (ShmBusError, OSError):
            return {}

    # -- membership and reaping -----------------------------------------------------

    def subscriber_ids(self, token: str) -> list[int]:
        ids = []
        for entry in _listdir(self.bus_dir(token)):
            match = _SUB_FILE.fullmatch(entry)
            if match:
                ids.append(int(match.group(1)))
        return sorted(ids)

    def reap_if_dead(self, token: str, sub_id: int, control: ControlBlock | None) -> bool:
        """Remove subscriber `sub_id` if its process is dead; True if it is gone.

        It never removes the bus: its callers are the live emitter (the bus is not
        abandoned) and `_sweep_bus`, which checks once after reaping them all.
        """
        path = self.sub_path(token, sub_id)
        life = LifeLock.take_if_dead(path)
        if life is None:
            return not os.path.exists(path)
        try:
            record = self._record_quietly(path)
            if record.get("queue") in QUEUE_KINDS:
                # Nobody holds a queue's record: whether it lives is its members' say.
                return self._reap_queue_if_dead(token, sub_id, record, control)
            with self.bus_mutex(token):
                self._remove_subscriber_objects(token, sub_id, queue=False)
                if control is not None:
                    control.bump_generation()
        except FileNotFoundError:
            pass
        finally:
            life.release()
        return True

    def live_subscribers(self, token: str, control: ControlBlock | None) -> list[int]:
        return [i for i in self.subscriber_ids(token)
                if not self.reap_if_dead(token, i, control)]

    def finish_emitter(self, token: str, life: LifeLock) -> None:
        """A closing emitter lets go; the bus goes now if nobody is left to drain it."""
        life.release()
        self.remove_bus_if_abandoned(token)

    def remove_bus_if_abandoned(self, token: str, cleaned: Cleaned | None = None) -> bool:
        """Remove the instance if no live process belongs to it, and its name if it still
        points there; True if it is gone.

        Under the root mutex, which a bus's creator holds until its record and control
        block exist: a half-created bus is never mistaken for an abandoned one.
        """
        try:
            with self.root_mutex(), self.bus_mutex(token):
                return self._remove_abandoned_locked(token, cleaned)
        except FileNotFoundError:
            return True

    def _remove_abandoned_locked(self, token: str, cleaned: Cleaned | None) -> bool:
        if is_alive(self.emitter_path(token)):
            return False
        for entry in _listdir(self.bus_dir(token)):
            # Subscribers, and members of queues (whose own records nobody holds).
            if _LIFE_FILE.fullmatch(entry) and is_alive(os.path.join(self.bus_dir(token),
                                                                       entry)):
                return False
        name = self._name_of(token)
        if name is not None and self.resolve(name) == token:
            _unlink(os.path.join(self.names_dir, name))
            if cleaned is not None:
                cleaned.names.append(name)
        for sub_id in self.subscriber_ids(token):
            _ring.unlink_ring(token, sub_id)
            _group.remove(token, sub_id)
            _unlink(self.sub_path(token, sub_id))
        _remove_shared_objects(token)
        _remove_tree_quietly(self.bus_dir(token))
        return True

    def _name_of(self, token: str) -> str | None:
        try:
            name = self.read_record(self.emitter_path(token)).get("name")
        except ShmBusError:
            return None
        return name if isinstance(name, str) and _NAME.fullmatch(name) else None

    # -- sweeping -------------------------------------------------------------------

    def sweep(self) -> Cleaned:
        """Remove what dead processes left: subscribers, whole buses and stale names."""
        cleaned = Cleaned()
        for token in sorted(_listdir(self.buses_dir)):
            if _TOKEN.fullmatch(token):
                self._sweep_bus(token, cleaned)
        with self.root_mutex():
            for entry in _listdir(self.names_dir):
                target = self.resolve(entry)
                if target is None or not os.path.isdir(self.bus_dir(target)):
                    _unlink(os.path.join(self.names_dir, entry))
                    if not entry.startswith("."):
                        cleaned.names.append(entry)
        return cleaned

    def sweep_some(self) -> None:
        """The upkeep every new emitter and subscription does: bounded, whatever the size
        of the registry.

        At most once per `SWEEP_PERIOD` across all the user's processes (a file's time
        stamp says when, and a lock lets one process at a time do it), `SWEEP_SAMPLE`
        buses picked at random are swept. A bus whose name is reused, or that someone
        subscribes to, is swept on the spot (`create_bus`, `join`); `sweep()` sweeps all.
        """
        stamp = os.path.join(self.root, "swept")
        try:
            if time.time() - os.stat(stamp).st_mtime < SWEEP_PERIOD:
                return
        except FileNotFoundError:
            pass
        turn = try_lock(stamp)
        if turn is None:
            return  # another process is at it
        try:
            os.utime(turn.fd)
            tokens = [t for t in _listdir(self.buses_dir) if _TOKEN.fullmatch(t)]
            for token in random.sample(tokens, min(SWEEP_SAMPLE, len(tokens))):
                self._sweep_bus(token, Cleaned())
        finally:
            turn.release()

    def _sweep_bus(self, token: str, cleaned: Cleaned) -> None:
        control = _attach_control_quietly(token)
        try:
            for sub_id in self.subscriber_ids(token):
                if self.reap_if_dead(token, sub_id, control):
                    cleaned.subscribers.append(f"{token}/sub.{sub_id}")
            self.remove_bus_if_abandoned(token, cleaned)
            if not os.path.isdir(self.bus_dir(token)):
                cleaned.buses.append(token)  # by the line above, or by the last reap
        finally:
            if control is not None:
                control.close()

    # -- records --------------------------------------------------------------------

    def pid_of(self, token: str, sub_id: int) -> int | None:
        """The pid subscriber `sub_id` wrote in its record, for messages; None if unknown."""
        try:
            pid = self.read_record(self.sub_path(token, sub_id)).get("pid")
        except ShmBusError:
            return None
        return pid if isinstance(pid, int) and pid > 0 else None

    def _pid_of(self, path: str) -> str:
        try:
            return str(self.read_record(path).get("pid", "?"))
        except ShmBusError:
            return "? (its record is unreadable)"

    @staticmethod
    def read_record(path: str) -> dict[str, Any]:
        """The JSON record at `path`, checked; IncompatibleBus if it is not ours."""
        try:
            with files_checked(), open(path, "rb") as f:
                raw = f.read(65536)
        except FileNotFoundError:
            return {}
        try:
            record = json.loads(raw)
        except ValueError:
            raise IncompatibleBus(
                f"registry file {path} is not valid JSON (corrupt or truncated); "
                "run `shmbus gc` to remove what dead buses left"
            ) from None
        if not isinstance(record, dict) or record.get("version") != REGISTRY_VERSION:
            raise IncompatibleBus(
                f"registry file {path} has version "
                f"{record.get('version') if isinstance(record, dict) else '?'}, expected "
                f"{REGISTRY_VERSION}: it was written by another shmbus version; use one "
                "version in every process"
            )
        return record


def _remove_shared_objects(token: str) -> None:
    control = _attach_control_quietly(token)
    if control is not None:
        _arena.remove_all(token, control)
        control.close()
    _platform.unlink_segment(_names.control_name(token))


def _attach_control_quietly(token: str) -> ControlBlock | None:
    try:
        buf = _platform.open_segment(_names.control_name(token))
    except (posix_ipc.ExistentialError, ForeignObject):
        return None  # gone, another user's, or not yet sized: nothing of ours to read
    try:
        return ControlBlock.attach(buf, token)
    except ShmBusError:
        buf.close()
        return None


def _private_root(path: str) -> str:
    """The registry's directory, made if need be (with its parents), checked, and with
    a symlink to it resolved: a link is followed only if it is ours, to a directory that
    is ours and private."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    for _ in range(_MAX_LINKS):
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode):
            _ensure_private_dir(path)
            return path
        if st.st_uid != os.getuid():  # every link of a chain: any one could be repointed
            raise ShmBusError(
                f"registry path {path} is a symlink that belongs to uid {st.st_uid}, not to "
                f"you (uid {os.getuid()}): whoever owns it can point it anywhere. Set "
                f"{DIR_ENV} to a directory of your own."
            )
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    raise ShmBusError(f"registry path {path} is a loop of symlinks (or a chain of more than "
                      f"{_MAX_LINKS}); set {DIR_ENV} to a directory of your own")


_MAX_LINKS = 40  # as the kernel's own limit on following links


def _ensure_private_dir(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ShmBusError(f"registry path {path} exists and is not a directory; remove it")
    if st.st_uid != os.getuid():
        raise ShmBusError(
            f"registry directory {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}). A bus is private to the user who created it: run as "
            f"that user, or set {DIR_ENV} to a directory of your own (if you did not "
            "expect this directory to exist, someone else may have created it)."
        )
    if st.st_mode & stat.S_IWOTH:
        # /tmp, /dev/shm: shared by design. Advising chmod here would break the machine.
        raise ShmBusError(
            f"registry directory {path} has mode {oct(st.st_mode & 0o7777)}: it is shared "
            f"by everyone, so it cannot be a registry. Set {DIR_ENV} to a directory of "
            f"your own (shmbus makes it, mode 0700); leave {path}'s mode as it is."
        )
    if st.st_mode & 0o077:
        raise ShmBusError(
            f"registry directory {path} has mode {oct(st.st_mode & 0o777)}; it must be "
            f"private to you. Run `chmod 700 {path}`."
        )


def _listdir(path: str) -> list[str]:
    try:
        with files_checked():
            return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_tree_quietly(path: str) -> None:
    for entry in _listdir(path):
        _unlink(os.path.join(path, entry))
    try:
        os.rmdir(path)
    except (FileNotFoundError, OSError):
        pass


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def cleanup(root: str | None = None) -> Cleaned:
    """Remove everything dead buses and subscribers left behind; what was removed.

    Safe to run at any time: live buses and subscribers are never touched.
    """
    return Registry(root).sweep()
