"""Durable subscriptions: a ring that outlives its owner, resumed by the next one, kept by
the emitter until it expires or is unsubscribed. Real processes, real SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shmbus
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode")]


def durable_reader(name: str, durable: str, path: str, ready: Any) -> None:
    """Take the durable subscription and append each event to `path` as it is returned
    (unbuffered: a SIGKILL loses nothing written), until the bus ends."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sub = shmbus.subscribe(name, durable=durable, wait=10)
    ready.put(os.getpid())
    for event in sub:
        os.write(fd, b"%d\n" % event)
    os.write(fd, b"end\n")
    sub.close()


def read_lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.mark.timeout(60)
def test_a_durable_subscription_keeps_events_while_it_has_no_owner():
    with shmbus.EventEmitter("keep", capacity=16) as em:
        sub = shmbus.subscribe("keep", durable="d")
        assert isinstance(sub, shmbus.QueueSubscription)
        assert (sub.durable, sub.group) == ("d", None)
        for n in range(5):
            em.emit(n)
        assert sub.recv_many(2, timeout=1) == [0, 1]
        sub.close()  # 0 and 1 finished (auto_ack: they were handed out), 2-4 kept
        for n in range(5, 10):
            assert em.emit(n, timeout=1) == 1  # still a recipient
        again = em.subscribe(durable="d")
        assert again.id == sub.id
        assert again.recv_many(20, timeout=1) == list(range(2, 10))
        again.unsubscribe()
        assert em.subscriber_count == 0
        assert em.emit("nobody") == 0


@pytest.mark.timeout(60)
def test_a_durable_subscription_has_one_owner_at_a_time():
    with shmbus.EventEmitter("owned") as em:
        with em.subscribe(durable="d") as sub:
            with pytest.raises(shmbus.DurableInUse, match="pid"):
                shmbus.subscribe("owned", durable="d")
            with pytest.raises(shmbus.DurableInUse):
                shmbus.unsubscribe("owned", "d")
            other = em.subscribe(durable="e")  # another name is another subscription
            assert other.id != sub.id
            other.unsubscribe()


@pytest.mark.timeout(60)
def test_unsubscribe_removes_it_and_says_what_is_not_there():
    with shmbus.EventEmitter("gone", capacity=4) as em:
        shmbus.subscribe("gone", durable="d").close()
        for n in range(4):
            em.emit(n, timeout=1)
        with pytest.raises(shmbus.Timeout):
            em.emit(4, timeout=0.3)  # its ring is full and it has no owner: kept
        shmbus.unsubscribe("gone", "d")
        assert em.emit(4, timeout=1) == 0
        with pytest.raises(shmbus.InvalidArgument, match="no durable subscription 'd'"):
            shmbus.unsubscribe("gone", "d")
        with pytest.raises(shmbus.InvalidArgument, match="invalid durable name"):
            shmbus.unsubscribe("gone", "../x")
    with pytest.raises(shmbus.BusNotFound):
        shmbus.unsubscribe("gone", "d")
    assert helpers.objects_of(helpers.token_of(em)) == []


@pytest.mark.timeout(60)
def test_an_abandoned_durable_subscription_expires_and_the_emitter_moves_on():
    with shmbus.EventEmitter("expire", capacity=4) as em:
        shmbus.subscribe("expire", durable="d", expire_after=1.0).close()
        for n in range(4):
            em.emit(n, timeout=1)
        started = time.monotonic()
        assert em.emit(4, timeout=5) == 0  # blocked until it expired, then dropped
        waited = time.monotonic() - started
        assert 0.9 <= waited < 2.0, waited
        with pytest.raises(shmbus.InvalidArgument, match="no durable subscription"):
            shmbus.unsubscribe("expire", "d")


@pytest.mark.timeout(60)
def test_a_new_owner_resets_the_expiry_and_can_change_it():
    with shmbus.EventEmitter("reset", capacity=8) as em:
        shmbus.subscribe("reset", durable="d", expire_after=0.5).close()
        time.sleep(0.3)
        sub = shmbus.subscribe("reset", durable="d", expire_after=30)
        time.sleep(0.5)
        em.emit("x")
        assert em.subscriber_count == 1
        sub.close()
        time.sleep(0.8)
        assert em.subscriber_count == 1  # 30 s now
        shmbus.unsubscribe("reset", "d")


@pytest.mark.timeout(60)
def test_a_durable_subscription_goes_with_its_bus():
    em = shmbus.EventEmitter("with-bus")
    token = helpers.token_of(em)
    shmbus.subscribe("with-bus", durable="d").close()
    em.emit("kept")
    em.close()  # no owner to drain it: the bus and what the durable held go
    assert helpers.objects_of(token) == []


@pytest.mark.timeout(120)
def test_a_durable_subscriber_killed_and_restarted_20_times_receives_everything(
        procs: Any, tmp_path: Path) -> None:
    ready = helpers.context().Queue()
    rng = random.Random()
    emitted = 0
    stop = threading.Event()
    with shmbus.EventEmitter("restarts", capacity=32) as em:
        paths = [tmp_path / f"run{i}" for i in range(21)]
        reader = procs(durable_reader, "restarts", "d", str(paths[0]), ready)
        ready.get(timeout=10)

        def emit() -> None:
            nonlocal emitted
            while not stop.is_set():
                em.emit(emitted, timeout=30)
                emitted += 1
                if emitted % 8 == 0:
                    time.sleep(0.0005)

        emitter = threading.Thread(target=emit)
        emitter.start()
        try:
            for run in range(1, 21):
                time.sleep(rng.uniform(0.02, 0.15))
                os.kill(reader.pid, signal.SIGKILL)
                reader.join(5)
                time.sleep(rng.choice([0.0, 0.01, 0.1]))  # the emitter goes on meanwhile
                reader = procs(durable_reader, "restarts", "d", str(paths[run]), ready)
                ready.get(timeout=10)
        finally:
            stop.set()
            emitter.join(30)
    reader.join(30)
    assert reader.exitcode == 0
    runs = [[int(line) for line in read_lines(path) if line != "end"] for path in paths]
    assert read_lines(paths[-1])[-1] == "end"
    assert sum(1 for run in runs if run) >= 15, "too few runs received anything"
    merged: list[int] = []
    for run in runs:
        if run:
            # Each run resumes at the first event the one before had not finished: the
            # last one it was handed, if it died before its next recv, comes again.
            assert not merged or run[0] in (merged[-1], merged[-1] + 1), (merged[-1:], run[:3])
            assert run == list(range(run[0], run[0] + len(run)))
            merged += run if not merged or run[0] > merged[-1] else run[1:]
    assert merged == list(range(emitted)), (len(merged), emitted)
