"""The chaos driver: long streams of numbered events while processes are killed.

Two scenarios, each driven by a seeded `random.Random` whose seed is printed, so any
failure can be replayed with `--seed`:

- **Subscribers under fire** (`subscriber_chaos`): this process emits a numbered stream
  while a chaos loop SIGKILLs subscribers, SIGSTOPs and SIGCONTs them, starts new ones,
  and lets some close cleanly after a random count; subscribers read at random speeds.
  Afterwards every subscriber that reported must have received exactly the events
  emitted while it was subscribed (judged from monotonic timestamps on both sides),
  once each, in order; the emitter must never have spent more than 1 s blocked on a
  dead subscriber (read from that ring's `blocked_ns`, which it mapped before the kill);
  and nothing of the bus may remain in /dev/shm or the registry.
- **A group under fire** (`group_chaos`): this process emits a numbered stream to a
  group of about four member processes, which record each event they handle (to a file
  of their own) and then acknowledge it, while a chaos loop SIGKILLs members (never the
  last), SIGSTOPs them and starts new ones. Afterwards every event must have been
  handled at least once and finished exactly once, a duplicate only where a member that
  handled it was killed before finishing it, every killed member's unfinished events
  handled again within a second of the kill, and nothing of the bus may remain.
- **The emitter dies** (`emitter_chaos`): a child emits (small and large events, often
  blocked on a slow subscriber) until it is SIGKILLed at a random moment; every
  subscriber must then have received every event whose `emit` had returned, with no gap
  and no half-written event, and ended with `EmitterDied` within 1 s of the kill.

Run by hand as a soak: `python -m tests.chaos.driver --minutes 10`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from typing import Any

import multiprocess
import posix_ipc

import shmbus
from shmbus import _names, _platform, _registry, _ring

CTX = multiprocess.get_context("fork")
SHM = "/dev/shm"


@dataclasses.dataclass
class Figures:
    events: int = 0
    kills: int = 0
    stops: int = 0
    joins: int = 0
    clean_closes: int = 0
    worst_blocked_on_dead: float = 0.0
    worst_reap: float = 0.0
    worst_death_detection: float = 0.0
    worst_redelivery: float = 0.0
    duplicates: int = 0

    def add(self, other: "Figures") -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, max(mine, theirs) if f.name.startswith("worst")
                    else mine + theirs)

    def __str__(self) -> str:
        return (f"{self.events:,} events, {self.kills} kills, {self.stops} stops, "
                f"{self.joins} joins, {self.clean_closes} clean closes, "
                f"{self.duplicates} handled twice; worst: blocked "
                f"on a dead subscriber {self.worst_blocked_on_dead * 1e3:.0f} ms, reap "
                f"{self.worst_reap * 1e3:.0f} ms, emitter-death detection "
                f"{self.worst_death_detection * 1e3:.0f} ms, redelivery after a kill "
                f"{self.worst_redelivery * 1e3:.0f} ms")


# -- subscriber processes -------------------------------------------------------------

def _subscriber(name: str, key: int, delay: float, stop_after: int | None, out: Any) -> None:
    called = time.monotonic()
    try:
        sub = shmbus.subscribe(name)
    except shmbus.BusNotFound:  # started as the run ended
        out.put(("done", key, None, None, 0, True, "late", time.monotonic()))
        return
    out.put(("joined", key, sub.id, called, time.monotonic()))
    first = last = None
    count = 0
    in_order = True
    with contextlib.suppress(shmbus.EmitterDied):  # recorded below, as the end reason
        for event in sub:
            n = event[0]
            if first is None:
                first = n
            elif n != last + 1:
                in_order = False
            last = n
            count += 1
            if len(event) > 1 and event[1] != _payload(n, len(event[1])):
                in_order = False  # a torn or foreign payload
            if delay:
                time.sleep(delay)
            if stop_after is not None and count >= stop_after:
                break
    reason = sub.end_reason.value if sub.end_reason else "stopped"
    sub.close()
    out.put(("done", key, first, last, count, in_order, reason, time.monotonic()))


def _payload(n: int, size: int) -> bytes:
    return (n.to_bytes(8, "little") * (size // 8 + 1))[:size]


# -- scenario 1: subscribers under fire -----------------------------------------------

def subscriber_chaos(seed: int, seconds: float) -> Figures:
    rng = random.Random(seed)
    name = f"chaos-{seed}"
    figures = Figures()
    # One queue per subscriber: a process SIGKILLed while writing to a shared queue would
    # leave its lock (an ownerless semaphore) held, and every other writer stuck.
    outs: dict[int, Any] = {}
    procs: dict[int, Any] = {}
    joined: dict[int, tuple[int, float, float]] = {}
    rings: dict[int, Any] = {}
    victims: list[tuple[int, int, float]] = []  # key, blocked_ns before, kill time
    emits: list[tuple[float, float]] = []
    with shmbus.EventEmitter(name, capacity=rng.choice([2, 8, 64, 256])) as em:
        token = em._token

        def start(key: int) -> None:
            delay = rng.choice([0.0, 0.0, 0.0001, 0.001])
            stop_after = rng.choice([None, None, None, rng.randrange(1, 3000)])
            outs[key] = CTX.Queue()
            proc = CTX.Process(target=_subscriber, daemon=True,
                               args=(name, key, delay, stop_after, outs[key]))
            proc.start()
            procs[key] = proc

        def take(msg: tuple) -> None:
            if msg[0] == "joined":
                _, key, sub_id, called, returned = msg
                joined[key] = (sub_id, called, returned)
                try:
                    rings[key] = _platform.open_segment(_names.ring_name(token, sub_id))
                except posix_ipc.ExistentialError:
                    pass  # it read its fill and closed already
            else:
                reports.append(msg)

        def note_messages() -> None:
            for key, queue in outs.items():
                while key not in killed:  # a killed writer may have left half a message
                    try:
                        take(queue.get_nowait())
                    except Exception:
                        break

        reports: list[tuple] = []
        killed: set[int] = set()
        for key in range(4):
            start(key)
            take(outs[key].get(timeout=10))
        stop_emitting = threading.Event()

        def emit_loop() -> None:
            n = 0
            while not stop_emitting.is_set():
                event = (n, _payload(n, 2000)) if n % 50 == 0 else (n,)
                began = time.monotonic()
                em.emit(event)
                emits.append((began, time.monotonic()))
                n += 1

        reaped: list[float] = []
        watch: list[tuple[str, float]] = []  # ring path, kill time
        stop_watching = threading.Event()

        def watch_reaps() -> None:
            # How long after a kill the dead ring vanished from /dev/shm.
            while True:
                last_round = stop_watching.is_set()
                for item in list(watch):
                    if not os.path.exists(item[0]):
                        reaped.append(time.monotonic() - item[1])
                        watch.remove(item)
                if last_round:
                    return
                time.sleep(0.002)

        emitter = threading.Thread(target=emit_loop)
        emitter.start()
        watcher = threading.Thread(target=watch_reaps, daemon=True)
        watcher.start()
        deadline = time.monotonic() + seconds
        next_key = 4
        try:
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.01, 0.15))
                note_messages()
                alive = [k for k, p in procs.items() if p.is_alive() and k in rings]
                action = rng.choice(["kill", "kill", "stop", "join", "join"])
                if action == "join" or not alive:
                    start(next_key)
                    next_key += 1
                    figures.joins += 1
                elif action == "kill":
                    key = rng.choice(alive)
                    before = _blocked_ns(rings[key])
                    os.kill(procs[key].pid, signal.SIGKILL)
                    killed.add(key)
                    procs[key].join(5)  # dead, not dying: its locks are gone
                    victims.append((key, before, time.monotonic()))
                    path = os.path.join(SHM, _names.ring_name(token, joined[key][0])[1:])
                    watch.append((path, victims[-1][2]))
                    figures.kills += 1
                else:
                    key = rng.choice(alive)
                    os.kill(procs[key].pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(0.01, 0.3))
                    os.kill(procs[key].pid, signal.SIGCONT)
                    figures.stops += 1
        finally:
            stop_emitting.set()
            emitter.join(30)
    stop_watching.set()  # after close(), which reaps whoever died at the very end
    watcher.join(5)
    assert not watch, f"seed {seed}: killed subscribers never reaped: {watch}"
    # The emitter closed: the survivors drain and report.
    for proc in procs.values():
        proc.join(30)
    note_messages()
    figures.events = len(emits)
    try:
        _check_subscribers(seed, emits, joined, reports, procs, victims)
        figures.worst_blocked_on_dead = max(
            ((_blocked_ns(rings[k]) - before) / 1e9 for k, before, _ in victims), default=0.0)
        figures.worst_reap = max(reaped, default=0.0)
        figures.clean_closes = sum(1 for r in reports if r[6] == "stopped")
        assert figures.worst_blocked_on_dead < 1.0, (
            f"seed {seed}: emitter blocked {figures.worst_blocked_on_dead:.3f}s on a dead "
            "subscriber")
        leftovers = [n for n in os.listdir(SHM) if token in n]
        assert not leftovers, f"seed {seed}: left in /dev/shm: {leftovers}"
        assert not os.path.exists(em._registry.bus_dir(token)), f"seed {seed}: registry"
    finally:
        for ring in rings.values():
            ring.close()
    return figures


def _blocked_ns(ring: Any) -> int:
    return int(struct.unpack_from("<Q", ring.view, _ring._BLOCKED_NS)[0])


def _check_subscribers(seed: int, emits: list[tuple[float, float]],
                       joined: dict[int, tuple[int, float, float]], reports: list[tuple],
                       procs: dict[int, Any], victims: list[tuple[int, int, float]]) -> None:
    killed = {k for k, _, _ in victims}
    done = {r[1]: r for r in reports}
    for key, proc in procs.items():
        if key in killed or (key in done and done[key][6] == "late"):
            continue
        assert key in done, f"seed {seed}: subscriber {key} never reported (exit {proc.exitcode})"
        _, _, first, last, count, in_order, reason, _ = done[key]
        _, called, returned = joined[key]
        assert in_order, f"seed {seed}: subscriber {key} saw a gap, a repeat or a torn event"
        # Everything whose emit began after subscribe() returned must arrive...
        expected_first = next((i for i, (began, _) in enumerate(emits) if began > returned),
                              len(emits))
        if count == 0:
            assert expected_first == len(emits), f"seed {seed}: {key} received nothing"
            continue
        assert last - first + 1 == count
        # ...and nothing whose emit had returned before subscribe() was called.
        assert emits[first][1] >= called, f"seed {seed}: {key} got event {first}, too early"
        assert first <= expected_first, (
            f"seed {seed}: subscriber {key} missed events {expected_first}..{first - 1}")
        if reason == "closed":
            assert last == len(emits) - 1, (
                f"seed {seed}: subscriber {key} ended at {last} of {len(emits) - 1}")


# -- scenario 3: a group under fire ---------------------------------------------------

def _group_member(name: str, path: str, rng_seed: int, ready: Any) -> None:
    """Take events from group "workers" and, per event: record "h <n> <time>", work a
    moment, acknowledge, record "a <n>". A line cut short by a kill is ignored."""
    rng = random.Random(rng_seed)
    delay = rng.choice([0.0, 0.0, 0.0002, 0.001])
    batch = rng.choice([1, 1, 3, 8])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sub = shmbus.subscribe(name, group="workers", auto_ack=False)
    ready.put(os.getpid())
    try:
        while True:
            try:
                events = sub.recv_many(batch) if batch > 1 else [sub.recv()]
            except shmbus.Closed:
                break
            for event in events:
                os.write(fd, f"h {event[0]} {time.monotonic():.6f}\n".encode())
                if len(event) > 1 and event[1] != _payload(event[0], len(event[1])):
                    os.write(fd, f"torn {event[0]}\n".encode())
                if delay:
                    time.sleep(delay)
            sub.ack()
            os.write(fd, "".join(f"a {e[0]}\n" for e in events).encode())
    finally:
        sub.close()
        os.write(fd, b"end\n")
        os.close(fd)


def group_chaos(seed: int, seconds: float) -> Figures:
    rng = random.Random(seed)
    name = f"group-chaos-{seed}"
    figures = Figures()
    records = tempfile.mkdtemp(prefix="sbgroup-")
    procs: dict[int, Any] = {}
    killed: dict[int, float] = {}  # key: when
    ready = CTX.Queue()
    emitted = 0
    with shmbus.EventEmitter(name, capacity=rng.choice([4, 16, 64, 256])) as em:
        token = em._token

        def start(key: int) -> None:
            proc = CTX.Process(target=_group_member, daemon=True,
                               args=(name, os.path.join(records, str(key)),
                                     rng.randrange(1 << 30), ready))
            proc.start()
            procs[key] = proc
            ready.get(timeout=30)

        for key in range(4):
            start(key)
        stop_emitting = threading.Event()
        counts = [0]

        def emit_loop() -> None:
            n = 0
            while not stop_emitting.is_set():
                em.emit((n, _payload(n, 2000)) if n % 50 == 0 else (n,))
                n += 1
                counts[0] = n

        emitter = threading.Thread(target=emit_loop)
        emitter.start()
        deadline = time.monotonic() + seconds
        next_key = 4
        try:
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.01, 0.15))
                alive = [k for k, p in procs.items() if k not in killed and p.is_alive()]
                action = rng.choice(["kill", "kill", "stop", "join"])
                if len(alive) < 4 or action == "join" and len(alive) < 6:
                    start(next_key)
                    next_key += 1
                    figures.joins += 1
                elif action == "kill" and len(alive) >= 2:
                    key = rng.choice(alive)
                    os.kill(procs[key].pid, signal.SIGKILL)
                    killed[key] = time.monotonic()
                    procs[key].join(5)
                    figures.kills += 1
                elif action == "stop":
                    key = rng.choice(alive)
                    os.kill(procs[key].pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(0.01, 0.3))
                    os.kill(procs[key].pid, signal.SIGCONT)
                    figures.stops += 1
        finally:
            stop_emitting.set()
            emitter.join(30)
        emitted = counts[0]
    for proc in procs.values():
        proc.join(60)
    try:
        figures.events = emitted
        figures.worst_redelivery, figures.duplicates = _check_group(seed, records, emitted,
                                                                    procs, killed)
        assert all(p.exitcode == 0 for k, p in procs.items() if k not in killed), (
            f"seed {seed}: a member failed: {[p.exitcode for p in procs.values()]}")
        assert figures.worst_redelivery < 1.0, (
            f"seed {seed}: a killed member's events came again only "
            f"{figures.worst_redelivery:.3f} s after the kill")
        leftovers = [n for n in os.listdir(SHM) if token in n]
        assert not leftovers, f"seed {seed}: left in /dev/shm: {leftovers}"
        assert not os.path.exists(em._registry.bus_dir(token)), f"seed {seed}: registry"
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(records, ignore_errors=True)
    return figures


def _check_group(seed: int, records: str, emitted: int, procs: dict[int, Any],
                 killed: dict[int, float]) -> tuple[float, int]:
    """Check what the members recorded; the longest a killed member's unfinished event
    waited after the kill to be handled again, and how many events were handled twice."""
    handled: dict[int, list[tuple[int, float]]] = {}  # n: [(member, when)]
    finished: dict[int, list[int]] = {}
    for key in procs:
        path = os.path.join(records, str(key))
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = f.read().split("\n")
        assert key in killed or "end" in lines, f"seed {seed}: member {key} never ended"
        for line in lines[:-1]:  # the last is empty, or cut short by a kill
            kind, *rest = line.split()
            if kind == "h":
                handled.setdefault(int(rest[0]), []).append((key, float(rest[1])))
            elif kind == "a":
                finished.setdefault(int(rest[0]), []).append(key)
            elif kind == "torn":
                raise AssertionError(f"seed {seed}: member {key} read event {rest[0]} torn")
    lost = [n for n in range(emitted) if n not in handled]
    assert not lost, f"seed {seed}: {len(lost)} events never handled, first {lost[:5]}"
    extra = set(handled) - set(range(emitted))
    assert not extra, f"seed {seed}: events handled that were never emitted: {extra}"
    worst = 0.0
    for n, by in handled.items():
        done = finished.get(n, [])
        assert len(done) <= 1, f"seed {seed}: event {n} finished by {done}"
        for key, when in by:
            if key in done:
                continue
            # Handled without being finished: only a member killed before finishing.
            assert key in killed, (
                f"seed {seed}: member {key} handled event {n} and never finished it")
        if len(by) > 1:
            unfinished = [(key, when) for key, when in by if key not in done]
            assert len(unfinished) >= len(by) - 1, (
                f"seed {seed}: event {n} handled {len(by)} times: {by}, finished by {done}")
            for key, _ in unfinished:
                later = [w for k, w in by if w > killed[key]]
                if later:
                    worst = max(worst, min(later) - killed[key])
        elif not done:
            assert by[0][0] in killed, f"seed {seed}: event {n} was never finished"
    return worst, sum(1 for by in handled.values() if len(by) > 1)


# -- scenario 2: the emitter dies ------------------------------------------------------

def _doomed_emitter(name: str, subscribers: int, capacity: int, progress: Any) -> None:
    em = shmbus.EventEmitter(name, capacity=capacity)
    em.wait_for_subscribers(subscribers, timeout=30)
    n = 0
    while True:
        em.emit((n, _payload(n, 100_000)) if n % 7 == 0 else (n, _payload(n, 100)))
        progress.value = n + 1
        n += 1


def emitter_chaos(seed: int, rounds: int) -> Figures:
    rng = random.Random(seed)
    figures = Figures()
    for r in range(rounds):
        name = f"doomed-{seed}-{r}"
        # lock=False: a multiprocessing lock is an ownerless semaphore, and the emitter is
        # SIGKILLed; it would leave the lock held and the driver stuck reading the value.
        out, progress = CTX.Queue(), CTX.Value("q", 0, lock=False)
        emitter = CTX.Process(target=_doomed_emitter, daemon=True,
                              args=(name, 2, rng.choice([1, 4, 64]), progress))
        emitter.start()
        subs = []
        try:
            token = _wait_for_name(name)
            for key, delay in enumerate([0.0, rng.choice([0.0, 0.0005, 0.002])]):
                p = CTX.Process(target=_subscriber, args=(name, key, delay, None, out),
                                daemon=True)
                p.start()
                subs.append(p)
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(emitter.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            emitter.join(5)
            returned = progress.value
            reports = [m for m in (out.get(timeout=30) for _ in range(4)) if m[0] == "done"]
        finally:
            for p in subs + [emitter]:
                if p.is_alive():
                    p.kill()
                p.join(5)
        figures.kills += 1
        figures.events += returned
        for _, key, first, last, count, in_order, reason, ended in reports:
            assert in_order and (count == 0 or first == 0), (
                f"seed {seed} round {r}: subscriber {key} stream broken")
            assert count >= returned, (
                f"seed {seed} round {r}: subscriber {key} got {count} events, but {returned} "
                "emits had returned")
            assert reason == "emitter died", f"seed {seed} round {r}: ended as {reason}"
            figures.worst_death_detection = max(figures.worst_death_detection,
                                                ended - killed_at)
        assert figures.worst_death_detection < 1.0, (
            f"seed {seed} round {r}: end seen {figures.worst_death_detection:.3f}s after kill")
        leftovers = [n for n in os.listdir(SHM) if token in n]
        assert not leftovers, f"seed {seed} round {r}: left in /dev/shm: {leftovers}"
    return figures


def _wait_for_name(name: str) -> str:
    """The token of bus `name`, once it exists."""
    registry = _registry.Registry()
    deadline = time.monotonic() + 10
    while (token := registry.resolve(name)) is None:
        assert time.monotonic() < deadline, f"bus {name} never appeared"
        time.sleep(0.005)
    return token


# -- soak ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description="shmbus chaos soak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("SHMBUS_DIR", tempfile.mkdtemp(prefix="sbsoak-"))
    end = time.monotonic() + args.minutes * 60
    total = Figures()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    while time.monotonic() < end:
        print(f"seed {seed}", flush=True)
        total.add(subscriber_chaos(seed, seconds=20))
        total.add(emitter_chaos(seed, rounds=10))
        total.add(group_chaos(seed, seconds=20))
        print(f"  so far: {total}", flush=True)
        seed += 1
    print(f"soak done: {total}")


if __name__ == "__main__":
    sys.exit(main())
