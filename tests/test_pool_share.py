"""WorkerPool in "share" mode (each event to one worker) and its streamed results.

Real worker processes on a real bus; every pool is stopped and every worker killed after
the test, pass or fail (the `pools` fixture of test_pool.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import shmbus
from shmbus._errors import WorkerError
from shmbus._pool import WorkerPool, worker_index
from tests.test_pool import kill_all

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pools() -> Any:
    made: list[WorkerPool] = []

    def make(*args: Any, **kwargs: Any) -> WorkerPool:
        pool = WorkerPool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        if pool.pids and len(pool.worker_results) < len(pool.pids):
            pool.stop(timeout=1.0)
        kill_all(pool.pids)


def square(event: int) -> int:
    return event * event


def test_share_is_the_default_and_each_event_is_handled_once_with_its_result(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter(capacity=16) as em:
        pool = pools(em.name, square, workers=4, results=True).start()
        assert pool.mode == "share" and pool.group is not None
        assert em.subscriber_count == 1  # one group: one ring
        for n in range(500):
            em.emit(n, timeout=5)
    results = list(pool.results(timeout=20))
    assert sorted(r.seq for r in results) == list(range(500))
    assert all(r.value == r.seq * r.seq for r in results)
    finished = pool.join(timeout=10)
    assert sum(r.handled or 0 for r in finished) == 500
    assert all(r.ok and r.end_reason is shmbus.EndReason.CLOSED for r in finished)
    assert sum(1 for r in finished if r.handled) >= 2, "the work was not shared"


def test_results_stream_while_events_are_still_being_emitted(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, square, workers=2, results=True).start()
        stream = pool.results(timeout=10)
        em.emit(3)
        assert next(stream) == (0, 9)
        em.emit(4)
        first = next(stream)
        assert (first.seq, first.value) == (1, 16)
    assert list(stream) == []
    pool.join(timeout=10)


def test_thousands_of_results_never_wait_for_the_caller(
        pools: Callable[..., WorkerPool]) -> None:
    # The caller reads nothing until it has emitted everything: a pipe of results that
    # nobody drained would block the workers, then the ring, then this emit.
    with shmbus.EventEmitter(capacity=64) as em:
        pool = pools(em.name, lambda event: "x" * 200, workers=3, results=True).start()
        em.emit_many(range(20_000), timeout=30)
    seqs = [r.seq for r in pool.results(timeout=30)]
    assert sorted(seqs) == list(range(20_000))
    pool.join(timeout=10)


def test_fanout_results_come_from_every_worker(pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, lambda event: (worker_index(), event), workers=2,
                     mode="fanout", results=True).start()
        assert pool.group is None
        for n in range(10):
            em.emit(n)
    results = list(pool.results(timeout=10))
    for index in range(2):
        assert [r.value for r in results if r.value[0] == index] == \
            [(index, n) for n in range(10)]
    pool.join(timeout=10)


def test_results_without_results_true_says_how(pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, square, workers=1).start()
        with pytest.raises(shmbus.ShmBusError, match="results=True"):
            pool.results()
    pool.join(timeout=10)


def test_bad_modes_and_groups_are_refused() -> None:
    with pytest.raises(shmbus.InvalidArgument, match="mode must be"):
        WorkerPool("bus", print, mode="broadcast")
    with pytest.raises(shmbus.InvalidArgument, match="mode='share' only"):
        WorkerPool("bus", print, mode="fanout", group="g")
    with pytest.raises(shmbus.InvalidArgument, match="invalid group name"):
        WorkerPool("bus", print, group="no spaces")
    with pytest.raises(shmbus.InvalidArgument, match="results must be"):
        WorkerPool("bus", print, results=1)  # type: ignore[arg-type]


def _record_slowly(directory: Path, event: int) -> int:
    with open(directory / f"{os.getpid()}", "a") as out:
        out.write(f"{event}\n")
    time.sleep(0.01)
    return event


def test_a_sigkilled_workers_event_is_handled_by_another(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    with shmbus.EventEmitter(capacity=64) as em:
        pool = pools(em.name, lambda e: _record_slowly(tmp_path, e), workers=3,
                     results=True).start()
        victim = pool.pids[0]
        for n in range(60):
            em.emit(n, timeout=5)
        time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
    values = [r.value for r in pool.results(timeout=20)]
    assert sorted(set(values)) == list(range(60))  # nothing lost
    handled: dict[int, list[int]] = {}
    for name in os.listdir(tmp_path):
        for line in (tmp_path / name).read_text().split():
            handled.setdefault(int(line), []).append(int(name))
    assert sorted(handled) == list(range(60))
    for event, by in handled.items():
        if len(by) > 1:  # handled twice: only where the first one died before finishing
            assert victim in by, (event, by)
    results = pool.join(timeout=10)
    assert isinstance(results[0].error, WorkerError)
    assert all(r.ok for r in results[1:])


def test_a_failed_event_is_not_handed_to_the_next_worker(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    def handle(event: int) -> int:
        if event == 7:
            raise ValueError("seven")
        return _record_slowly(tmp_path, event)

    with shmbus.EventEmitter(capacity=8) as em:
        pool = pools(em.name, handle, workers=3, results=True).start()
        for n in range(30):
            em.emit(n, timeout=5)
    values = sorted(r.value for r in pool.results(timeout=20))
    assert values == [n for n in range(30) if n != 7]
    results = pool.join(timeout=10)
    assert sum(1 for r in results if isinstance(r.error, ValueError)) == 1
    with pytest.raises(ValueError, match="seven"):
        pool.check()


def test_stop_with_drain_handles_everything_emitted_before(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    with shmbus.EventEmitter(capacity=256) as em:
        with pools(em.name, lambda e: _record_slowly(tmp_path, e), workers=2) as pool:
            for n in range(100):
                em.emit(n, timeout=5)
        assert em.subscriber_count == 0
    handled = sorted(int(line) for name in os.listdir(tmp_path)
                     for line in (tmp_path / name).read_text().split())
    assert handled == list(range(100))
    assert sum(r.handled or 0 for r in pool.worker_results) == 100


def _slow_square(event: int) -> int:
    time.sleep(0.05)
    return event * event


def test_an_explicit_group_is_shared_with_other_members(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter(capacity=16) as em:
        pool = pools(em.name, _slow_square, workers=1, group="squares",
                     results=True).start()
        with em.subscribe(group="squares") as mine:
            assert pool.group == "squares"
            for n in range(20):
                em.emit(n, timeout=5)
            taken = []
            while len(taken) < 5:
                taken += mine.recv_many(5 - len(taken), timeout=5)
            mine.ack()
    theirs = [r.seq for r in pool.results(timeout=10)]
    assert sorted(theirs + taken) == list(range(20))
    pool.join(timeout=10)
