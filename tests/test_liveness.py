"""Liveness: life or death is decided by a kernel-held lock, never by a PID."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time

import pytest

import shmbus
from shmbus import _liveness
from tests import helpers

pytestmark = pytest.mark.timeout(30)


def test_a_lock_is_held_while_its_owner_lives_and_free_when_it_dies(tmp_path, procs):
    path = str(tmp_path / "life")
    ready = helpers.context().Queue()

    def owner() -> None:
        lock = _liveness.LifeLock.create(path, b"{}")
        ready.put(True)
        while lock:
            time.sleep(1)

    proc = procs(owner)
    ready.get(timeout=10)
    assert _liveness.is_alive(path)
    assert _liveness.LifeLock.take_if_dead(path) is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(5)
    assert not _liveness.is_alive(path)
    cleaner = _liveness.LifeLock.take_if_dead(path)
    assert cleaner is not None
    assert _liveness.LifeLock.take_if_dead(path) is None  # only one cleaner at a time
    cleaner.release()


def test_a_forked_child_does_not_keep_a_dead_parent_alive(tmp_path, procs):
    path = str(tmp_path / "parent")
    ready = helpers.context().Queue()

    def parent() -> None:
        lock = _liveness.LifeLock.create(path, b"{}")
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        ready.put(child)
        while lock:
            time.sleep(1)

    proc = procs(parent)
    grandchild = ready.get(timeout=10)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        helpers.wait_until(lambda: not proc.is_alive())  # join() would wait on the
        # grandchild too: it inherited the process sentinel
        os.kill(grandchild, 0)  # the forked child still runs...
        assert not _liveness.is_alive(path)  # ...and does not hold the parent's lock
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_a_reused_pid_does_not_make_a_dead_subscriber_look_alive(registry_dir):
    with shmbus.EventEmitter("pids") as em:
        token = helpers.token_of(em)
        # A subscriber record naming a live PID (ours) whose owner holds no lock: the
        # situation after a subscriber died and its PID went to another process.
        fake = em._registry.sub_path(token, 999)
        with open(fake, "w") as f:
            json.dump({"version": 1, "id": 999, "pid": os.getpid(), "capacity": 1}, f)
        assert em.subscriber_count == 0
        assert not os.path.exists(fake)


def test_the_same_process_can_probe_its_own_subscription():
    # flock, unlike fcntl record locks, conflicts between two handles of one process.
    with shmbus.EventEmitter("self") as em, em.subscribe():
        assert em.subscriber_count == 1
        assert em.subscriber_count == 1  # probing did not release the lock


def test_a_look_at_a_dead_owner_does_not_make_it_pass_for_alive(tmp_path):
    """A cleaner that met a prober mid-look called the dead owner alive, so a durable
    subscription's next owner was refused while an emitter was looking (seen in CI)."""
    path = str(tmp_path / "dead")
    _liveness.LifeLock.create(path, b"{}").release()  # its owner is gone
    looking = _liveness.LifeLock(path, os.O_RDONLY)
    assert looking.try_flock(fcntl.LOCK_SH)  # a prober, halfway through `is_alive`
    done = threading.Timer(_liveness.PROBE_PATIENCE / 5, looking.release)
    done.start()
    try:
        cleaner = _liveness.LifeLock.take_if_dead(path)
        assert cleaner is not None
        cleaner.release()
    finally:
        done.cancel()
        looking.release()


def test_a_live_owner_is_not_taken_from_however_long_one_waits(tmp_path, monkeypatch):
    path = str(tmp_path / "live")
    owner = _liveness.LifeLock.create(path, b"{}")
    # A patience so long that one step of waiting (a fiftieth of it) shows plainly, on
    # however noisy a machine.
    monkeypatch.setattr(_liveness, "PROBE_PATIENCE", 600.0)
    try:
        started = time.monotonic()
        assert _liveness.LifeLock.take_if_dead(path) is None
        assert time.monotonic() - started < 6  # no waiting: the owner's hold answers
    finally:
        owner.release()
