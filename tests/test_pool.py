"""WorkerPool: real worker processes on a real bus.

Handlers record what they see in one file per worker (a handler runs in another process,
so files are the plainest way back), and the tests read those files. Every pool a test
starts is stopped by the `pools` fixture, and every stray process is killed, even when
the test fails.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import shmbus
from shmbus import _platform
from shmbus._errors import WorkerError
from shmbus._pool import WorkerPool, WorkerResult, worker_index
from tests.helpers import context, token_of, wait_until

EMIT_TIMEOUT = 5.0
"""No emit in these tests may block longer: one that does means a worker left its ring
behind, which is the bug the test is there to catch."""


# -- tools --------------------------------------------------------------------------------


def _append(directory: Path, event: Any) -> None:
    """Module-level handler (for "spawn"): one line per event, in this worker's file."""
    with open(directory / str(worker_index()), "a") as out:
        out.write(json.dumps(event) + "\n")


def recorded(directory: Path, index: int) -> list[Any]:
    path = directory / str(index)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def kill_all(pids: list[int]) -> None:
    """SIGKILL what is still running, and sweep away what it leaves on the bus."""
    stray = [pid for pid in pids if running(pid)]
    for pid in stray:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if stray:
        wait_until(lambda: not any(running(pid) for pid in stray), timeout=5.0)
        shmbus.cleanup()


@pytest.fixture
def pools() -> Iterator[Callable[..., WorkerPool]]:
    """Make pools that are stopped, and whose workers are killed, after the test."""
    made: list[WorkerPool] = []

    def make(*args: Any, **kwargs: Any) -> WorkerPool:
        # These tests are about every worker getting every event; "share" mode has its
        # own file (test_pool_share.py).
        kwargs.setdefault("mode", "fanout")
        pool = WorkerPool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        if pool.pids and len(pool.worker_results) < len(pool.pids):
            pool.stop(timeout=1.0)
        kill_all(pool.pids)


def emit_all(em: shmbus.EventEmitter, events: list[Any]) -> None:
    for event in events:
        em.emit(event, timeout=EMIT_TIMEOUT)


def assert_clean(result: WorkerResult, handled: int, end: shmbus.EndReason) -> None:
    assert result.error is None, result.error
    assert result.ok
    assert (result.exitcode, result.handled, result.end_reason) == (0, handled, end)


# -- delivery -----------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_every_worker_handles_every_event_in_order_with_a_closure(
        pools: Callable[..., WorkerPool], tmp_path: Path, start_method: str) -> None:
    events = [{"id": n, "text": f"event {n}"} for n in range(300)]
    with shmbus.EventEmitter(capacity=16) as em:
        # A lambda over a local: "spawn" has to pickle it by value (dill).
        handler = lambda event: _append(tmp_path, event)  # noqa: E731
        pool = pools(em.name, handler, workers=3, start_method=start_method).start()
        emit_all(em, events)
    results = pool.join(timeout=20)

    assert [r.index for r in results] == [0, 1, 2]
    assert sorted(r.pid for r in results) == sorted(pool.pids)
    for result in results:
        assert_clean(result, len(events), shmbus.EndReason.CLOSED)
        assert recorded(tmp_path, result.index) == events
    pool.check()


def test_spawned_workers_run_a_module_level_handler(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    handler = functools.partial(_append, tmp_path)
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, handler, workers=2, start_method="spawn").start()
        emit_all(em, list(range(50)))
    for result in pool.join(timeout=20):
        assert_clean(result, 50, shmbus.EndReason.CLOSED)
        assert recorded(tmp_path, result.index) == list(range(50))


def test_an_event_emitted_right_after_start_reaches_every_worker(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, functools.partial(_append, tmp_path), workers=4).start()
        assert em.emit("first") == 4
    for result in pool.join(timeout=10):
        assert recorded(tmp_path, result.index) == ["first"]


def test_a_handler_can_shard_by_worker_index(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    def mine_only(event: int) -> None:
        if event % 3 == worker_index():
            _append(tmp_path, event)

    with shmbus.EventEmitter() as em:
        pool = pools(em.name, mine_only, workers=3).start()
        emit_all(em, list(range(30)))
    pool.join(timeout=10)

    for index in range(3):
        assert recorded(tmp_path, index) == list(range(index, 30, 3))


def test_worker_index_outside_a_worker_says_where_to_call_it() -> None:
    with pytest.raises(shmbus.ShmBusError, match="outside a WorkerPool worker"):
        worker_index()


# -- failures -----------------------------------------------------------------------------


def test_a_failing_handler_is_reported_with_its_traceback_while_the_others_finish(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    def fail_on_five_in_worker_one(event: int) -> None:
        if worker_index() == 1 and event == 5:
            raise ValueError(f"cannot handle event {event}")
        _append(tmp_path, event)

    events = list(range(40))
    # A ring of 4: had the failed worker stayed subscribed, the 5th event after its
    # failure would block emit for EMIT_TIMEOUT and fail the test.
    with shmbus.EventEmitter(capacity=4) as em:
        pool = pools(em.name, fail_on_five_in_worker_one, workers=3).start()
        emit_all(em, events)
        assert em.subscriber_count == 2
    results = pool.join(timeout=10)

    failed = results[1]
    assert (failed.exitcode, failed.handled) == (1, 5)
    assert failed.end_reason is shmbus.EndReason.UNSUBSCRIBED
    assert not failed.ok
    assert isinstance(failed.error, ValueError)
    assert str(failed.error) == "cannot handle event 5"
    cause = failed.error.__cause__
    assert isinstance(cause, WorkerError)
    assert cause.remote_traceback is not None
    assert "fail_on_five_in_worker_one" in cause.remote_traceback
    assert "ValueError: cannot handle event 5" in cause.remote_traceback
    assert f"worker 1 (pid {failed.pid})" in str(cause)
    assert recorded(tmp_path, 1) == events[:5]
    for index in (0, 2):
        assert_clean(results[index], len(events), shmbus.EndReason.CLOSED)
        assert recorded(tmp_path, index) == events
    with pytest.raises(ValueError, match="cannot handle event 5"):
        pool.check()


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def test_an_exception_that_cannot_travel_comes_back_as_its_traceback(
        pools: Callable[..., WorkerPool]) -> None:
    def fail(event: Any) -> None:
        raise _Unpicklable()

    with shmbus.EventEmitter() as em:
        pool = pools(em.name, fail, workers=1).start()
        em.emit("x", timeout=EMIT_TIMEOUT)
    [result] = pool.join(timeout=10)

    assert isinstance(result.error, WorkerError)
    assert "_Unpicklable: holds a lock" in str(result.error)
    assert result.error.remote_traceback is not None
    assert "raise _Unpicklable()" in result.error.remote_traceback
    with pytest.raises(WorkerError, match="_Unpicklable"):
        pool.check()


def test_a_sigkilled_worker_is_reported_and_reaped_while_emit_goes_on(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    with shmbus.EventEmitter(capacity=4) as em:
        pool = pools(em.name, functools.partial(_append, tmp_path), workers=2).start()
        emit_all(em, [0, 1])
        os.kill(pool.pids[0], signal.SIGKILL)
        emit_all(em, list(range(2, 50)))  # 12 times the dead worker's ring
        assert em.subscriber_count == 1
    results = pool.join(timeout=10)

    killed = results[0]
    assert (killed.exitcode, killed.handled, killed.end_reason) == (-signal.SIGKILL, None, None)
    assert isinstance(killed.error, WorkerError)
    assert "killed by SIGKILL without reporting" in str(killed.error)
    assert_clean(results[1], 50, shmbus.EndReason.CLOSED)
    assert recorded(tmp_path, 1) == list(range(50))
    with pytest.raises(WorkerError, match="SIGKILL"):
        pool.check()


def _emit_then_die(name: str, ready: Any, go: Any) -> None:
    em = shmbus.EventEmitter(name)
    ready.put(True)
    go.get()
    for event in range(5):
        em.emit(event)
    os.kill(os.getpid(), signal.SIGKILL)


def test_workers_read_everything_an_emitter_sent_before_dying_then_exit_cleanly(
        pools: Callable[..., WorkerPool], procs: Any, tmp_path: Path) -> None:
    ready, go = context().Queue(), context().Queue()
    procs(_emit_then_die, "doomed", ready, go)
    ready.get(timeout=10)
    pool = pools("doomed", functools.partial(_append, tmp_path), workers=2).start()
    go.put(True)
    for result in pool.join(timeout=10):
        assert_clean(result, 5, shmbus.EndReason.EMITTER_DIED)
        assert recorded(tmp_path, result.index) == list(range(5))


def test_an_event_a_worker_cannot_unpickle_is_its_error(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, print, workers=1).start()
        em.emit(_Unloadable(), timeout=EMIT_TIMEOUT)
    [result] = pool.join(timeout=10)
    assert result.exitcode == 1
    assert isinstance(result.error, shmbus.DeserializationError)


class _Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("this event cannot be loaded")


def test_start_raises_the_workers_subscribe_error_and_leaves_no_process(
        pools: Callable[..., WorkerPool]) -> None:
    pool = pools("no-such-bus", print, workers=3)
    with pytest.raises(shmbus.BusNotFound, match="no-such-bus"):
        pool.start()
    assert len(pool.pids) == 3
    assert not any(running(pid) for pid in pool.pids)


def test_a_handler_that_cannot_be_pickled_for_spawn_is_refused_before_any_start(
        pools: Callable[..., WorkerPool]) -> None:
    generator = (n for n in range(3))
    pool = pools("any-bus", lambda event: next(generator), start_method="spawn")
    with pytest.raises(shmbus.SerializationError, match="start_method='fork'"):
        pool.start()
    assert pool.pids == []


def test_bad_arguments_are_refused_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkerPool("bus", print, workers=0)
    with pytest.raises(ValueError, match="forkserver"):
        WorkerPool("bus", print, start_method="forkserver")
    with pytest.raises(TypeError, match="callable"):
        WorkerPool("bus", "print")  # type: ignore[arg-type]
    with pytest.raises(shmbus.ShmBusError, match="start"):
        WorkerPool("bus", print).join()


# -- ending -------------------------------------------------------------------------------


def test_stop_makes_every_worker_leave_an_open_bus(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, print, workers=3).start()
        with pytest.raises(shmbus.Timeout, match="3 of 3 workers"):
            pool.join(timeout=0.2)
        started = time.monotonic()
        results = pool.stop()
        took = time.monotonic() - started

        assert em.subscriber_count == 0
        assert took < 1.0, f"stop() took {took:.2f} s"
        for result in results:
            assert_clean(result, 0, shmbus.EndReason.UNSUBSCRIBED)
        with pytest.raises(shmbus.ShmBusError, match="already started"):
            pool.start()


def test_leaving_the_with_block_first_handles_every_event_emitted_in_it(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    def slow(event: int) -> None:
        time.sleep(0.002)
        _append(tmp_path, event)

    with shmbus.EventEmitter(capacity=256) as em:
        with pools(em.name, slow, workers=2) as pool:
            emit_all(em, list(range(100)))  # returns long before the workers are done
        assert em.subscriber_count == 0
        for result in pool.worker_results:
            assert_clean(result, 100, shmbus.EndReason.UNSUBSCRIBED)
            assert recorded(tmp_path, result.index) == list(range(100))


def test_leaving_the_with_block_by_an_exception_stops_the_workers_at_once(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter(capacity=256) as em:
        with pytest.raises(RuntimeError):
            with pools(em.name, lambda event: time.sleep(0.05), workers=2) as pool:
                emit_all(em, list(range(100)))  # 5 s of work each
                raise RuntimeError("the caller's own failure")
        for result in pool.worker_results:
            assert result.ok and result.end_reason is shmbus.EndReason.UNSUBSCRIBED
            assert result.handled is not None and result.handled < 20


def test_stop_terminates_a_handler_that_outstays_the_grace(
        pools: Callable[..., WorkerPool]) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, lambda event: time.sleep(30), workers=1).start()
        em.emit("sleep", timeout=EMIT_TIMEOUT)
        time.sleep(0.2)  # let it get into the handler
        started = time.monotonic()
        [result] = pool.stop(timeout=0.3)
        took = time.monotonic() - started

        assert took < 2.0, f"stop() took {took:.2f} s"
        assert em.subscriber_count == 0
    assert (result.exitcode, result.handled) == (-signal.SIGTERM, 0)
    assert result.end_reason is shmbus.EndReason.UNSUBSCRIBED  # it still left the bus
    assert isinstance(result.error, WorkerError)
    assert "killed by SIGTERM after handling 0 events" in str(result.error)


def test_workers_ignore_ctrl_c_which_is_the_parents_business(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    with shmbus.EventEmitter() as em:
        pool = pools(em.name, functools.partial(_append, tmp_path), workers=2).start()
        for pid in pool.pids:
            os.kill(pid, signal.SIGINT)
        emit_all(em, list(range(10)))
    for result in pool.join(timeout=10):
        assert_clean(result, 10, shmbus.EndReason.CLOSED)


def test_a_pool_started_by_a_thread_outlives_that_thread(
        pools: Callable[..., WorkerPool], tmp_path: Path) -> None:
    # The kernel sends the parent-death signal when the *thread* that forked exits.
    with shmbus.EventEmitter() as em:
        started: list[WorkerPool] = []
        thread = threading.Thread(target=lambda: started.append(
            pools(em.name, functools.partial(_append, tmp_path), workers=2).start()))
        thread.start()
        thread.join()
        [pool] = started
        time.sleep(0.3)  # time for a misread signal to do its damage
        assert all(running(pid) for pid in pool.pids)
        emit_all(em, list(range(10)))
    for result in pool.join(timeout=10):
        assert_clean(result, 10, shmbus.EndReason.CLOSED)


_FORGETFUL = """
import json, sys
from shmbus._pool import WorkerPool

pool = WorkerPool(sys.argv[1], print, workers=2).start()
print(json.dumps(pool.pids), flush=True)
"""  # and exits without stopping the pool


def test_a_pool_left_running_is_stopped_when_the_interpreter_exits() -> None:
    with shmbus.EventEmitter() as em:  # still open, so only the exit hook ends them
        worker_pids: list[int] = []
        try:
            done = subprocess.run([sys.executable, "-c", _FORGETFUL, em.name],
                                  capture_output=True, text=True, timeout=20)
            assert done.returncode == 0, done.stderr
            worker_pids.extend(json.loads(done.stdout))
            assert not any(running(pid) for pid in worker_pids)
            assert em.subscriber_count == 0
        finally:
            kill_all(worker_pids)


# -- the parent dies ----------------------------------------------------------------------

_PARENT = """
import ctypes, json, sys, time
import shmbus
from shmbus._pool import WorkerPool, worker_index

def handle(event):
    if event == "hold" and worker_index() == 0:
        time.sleep(60)  # only the death signal can get it out of here
    if event == "hold" and worker_index() == 1:
        ctypes.CDLL(None).prctl(1, ctypes.c_ulong(0))  # no signal: the polling must do

pool = WorkerPool(sys.argv[1], handle, workers=2, mode="fanout").start()
print(json.dumps(pool.pids), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not _platform.PLATFORM.parent_death_signal,
                    reason=f"{_platform.PLATFORM.name} has no parent-death signal: see "
                           "test_without_a_parent_death_signal_workers_still_leave...")
def test_workers_leave_the_bus_and_exit_when_their_parent_is_sigkilled(
        registry_dir: str) -> None:
    worker_pids: list[int] = []
    with shmbus.EventEmitter() as em:  # in this process, so the bus outlives the parent
        parent = subprocess.Popen([sys.executable, "-c", _PARENT, em.name],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout is not None
            worker_pids.extend(json.loads(parent.stdout.readline()))
            assert em.emit("hold", timeout=EMIT_TIMEOUT) == 2
            time.sleep(0.3)  # both handlers have run: one sleeps, one disowned its signal
            parent.kill()
            parent.wait(5)
            killed = time.monotonic()

            wait_until(lambda: not any(running(pid) for pid in worker_pids), timeout=2.0)
            took = time.monotonic() - killed
            # They left the bus themselves: no subscriber record is left for a reaper.
            bus_dir = Path(registry_dir, "buses", token_of(em))
            assert [n for n in os.listdir(bus_dir) if n.startswith("sub")] == []
            assert em.subscriber_count == 0
            assert em.emit("after", timeout=EMIT_TIMEOUT) == 0
        finally:
            parent.kill()
            parent.wait(5)
            kill_all(worker_pids)
    assert took < 2.0


_ORPHANED = """
import json, sys
from shmbus._pool import WorkerPool

def handle(directory):
    import ctypes, os
    from shmbus._pool import worker_index
    libc = ctypes.CDLL(None)
    libc.prctl(1, ctypes.c_ulong(0))  # PR_SET_PDEATHSIG 0: none, wherever one was asked
    asked = ctypes.c_int(-1)
    libc.prctl(2, ctypes.byref(asked))  # PR_GET_PDEATHSIG
    path = os.path.join(directory, str(worker_index()))
    with open(path + ".new", "w") as out:
        out.write(str(asked.value))
    os.replace(path + ".new", path)

pool = WorkerPool(sys.argv[1], handle, workers=2, mode="fanout").start()
print(json.dumps(pool.pids), flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(60)
def test_without_a_parent_death_signal_workers_still_leave_when_their_parent_is_sigkilled(
        registry_dir: str, tmp_path: Path) -> None:
    """The getppid() checks carry the job alone, as on macOS (which the macOS rules mode
    plays: there the workers never asked for a signal; here they cleared it)."""
    worker_pids: list[int] = []
    took = None
    with shmbus.EventEmitter() as em:
        parent = subprocess.Popen([sys.executable, "-c", _ORPHANED, em.name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout is not None
            worker_pids.extend(json.loads(parent.stdout.readline()))
            assert em.emit(str(tmp_path), timeout=EMIT_TIMEOUT) == 2
            files = [tmp_path / str(i) for i in range(2)]
            wait_until(lambda: all(f.exists() for f in files), timeout=10)
            assert [f.read_text() for f in files] == ["0", "0"]  # no signal will come
            assert all(running(pid) for pid in worker_pids)  # handled it, still serving
            parent.kill()
            parent.wait(5)
            killed = time.monotonic()

            wait_until(lambda: not any(running(pid) for pid in worker_pids), timeout=2.0)
            took = time.monotonic() - killed
            bus_dir = Path(registry_dir, "buses", token_of(em))
            assert [n for n in os.listdir(bus_dir) if n.startswith("sub")] == []
            assert em.subscriber_count == 0
            assert em.emit("after", timeout=EMIT_TIMEOUT) == 0
        finally:
            parent.kill()
            parent.wait(5)
            kill_all(worker_pids)
    assert took is not None and took < 2.0
