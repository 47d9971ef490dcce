"""`shmbus demo`: every subscriber gets every event in order, and Ctrl-C leaves nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shmbus
from shmbus.cli import main
from shmbus.cli._demo import CheckOrder, OutOfOrder, describe
from tests.cli.command import (
    RUN_TIMEOUT,
    assert_no_traceback,
    assert_registry_empty,
    cli_env,
    run_cli,
)


@pytest.mark.timeout(60)
def test_demo_delivers_every_event_in_order_to_every_subscriber(registry: Path) -> None:
    result = run_cli(registry, "demo", "--subscribers", "2", "--events", "300")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("received 300 of 300, in order") == 2, result.stdout
    assert "events/s" in result.stdout
    assert_no_traceback(result)
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_demo_works_with_spawned_workers(registry: Path) -> None:
    result = run_cli(registry, "demo", "--subscribers", "2", "--events", "200",
                     "--start-method", "spawn")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("received 200 of 200, in order") == 2, result.stdout
    assert_registry_empty(registry)


def _session_members(session: int) -> list[str]:
    """Live (non-zombie) processes of a session; zombies are dead already."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            members.append(entry)
    return members


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to list processes")
def test_ctrl_c_exits_130_quietly_and_leaves_nothing_behind(registry: Path) -> None:
    # Its own session, so that SIGINT to the group is what a terminal's Ctrl-C does and
    # every worker can be found afterwards by its session id.
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", "demo", "--subscribers", "2", "--events", "1000000",
         "--slow-ms", "5"],
        env=cli_env(registry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        _wait_for_subscribers(registry, 2, proc)
        time.sleep(0.5)  # well into emitting, blocked on the slow subscriber
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 5
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_members(proc.pid) == []
    assert_registry_empty(registry)


def _wait_for_subscribers(registry: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        buses = registry / "buses"
        for bus in (os.listdir(buses) if buses.exists() else []):
            subs = [e for e in os.listdir(buses / bus) if e.startswith("sub.")
                    and not e.endswith(".tmp")]
            if len(subs) >= count:
                return
        time.sleep(0.05)
    pytest.fail("the demo's workers never subscribed")


# -- on a WorkerPool --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo_runs_its_subscribers_on_a_worker_pool(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    made: list[shmbus.WorkerPool] = []

    class Recorded(shmbus.WorkerPool):
        def start(self) -> shmbus.WorkerPool:
            made.append(self)
            return super().start()

    monkeypatch.setattr(shmbus, "WorkerPool", Recorded)
    try:
        status = main(["demo", "--subscribers", "2", "--events", "50", "--slow-ms", "0"])
    finally:
        for pool in made:  # stopped by the demo already, unless the test failed
            with contextlib.suppress(shmbus.ShmBusError):
                pool.stop(timeout=1)

    assert status == 0, capsys.readouterr()
    assert len(made) == 1 and len(made[0].pids) == 2
    results = made[0].worker_results
    assert [(r.index, r.handled, r.end_reason) for r in results] == [
        (0, 50, shmbus.EndReason.CLOSED), (1, 50, shmbus.EndReason.CLOSED)]
    assert capsys.readouterr().out.count("received 50 of 50, in order") == 2


@pytest.mark.timeout(60)
def test_a_subscriber_killed_mid_demo_is_reported_in_the_pools_words(
        registry: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", "demo", "--subscribers", "3", "--events", "3000"],
        env=cli_env(registry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # so that the finally can kill every worker at once
    )
    try:
        _wait_for_subscribers(registry, 3, proc)
        time.sleep(0.3)  # the slow worker's ring is full by now, a fast one's is not
        [bus] = shmbus.buses()
        fast = min(bus.subscribers, key=lambda s: s.fill)
        assert fast.pid is not None and fast.fill < fast.capacity, bus
        os.kill(fast.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            shmbus.cleanup()

    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err, out + err
    assert re.search(rf"\(pid {fast.pid}\) on bus '[^']+' was killed by SIGKILL without "
                     "reporting; how many events it handled is unknown", out), out
    assert out.count("received 3000 of 3000, in order") == 2, out
    assert "FAILED: not every subscriber received every event in order" in out
    assert_registry_empty(registry)


def test_the_workers_handler_raises_at_the_first_event_out_of_order() -> None:
    check = CheckOrder(slow_seconds=0)
    check({"seq": 0})
    check({"seq": 1})

    with pytest.raises(OutOfOrder, match=r"^event 2 had seq 3$"):
        check({"seq": 3})
    with pytest.raises(OutOfOrder, match=r"^event 0 had seq None$"):
        CheckOrder(slow_seconds=0)("not numbered")


@pytest.mark.parametrize("result, expected", [
    (shmbus.WorkerResult(0, 7, 0, 5, shmbus.EndReason.CLOSED, None),
     (True, "received 5 of 5, in order")),
    (shmbus.WorkerResult(1, 7, 1, 2, shmbus.EndReason.UNSUBSCRIBED,
                         OutOfOrder("event 2 had seq 3")),
     (False, "received 2 of 5, out of order: event 2 had seq 3")),
    (shmbus.WorkerResult(0, 7, 0, 4, shmbus.EndReason.CLOSED, None),
     (False, "received 4 of 5, some missing")),
    (shmbus.WorkerResult(0, 7, 0, 5, shmbus.EndReason.EMITTER_DIED, None),
     (False, "received 5 of 5, stream ended: emitter died")),
    (shmbus.WorkerResult(2, 7, -9, None, None, shmbus.WorkerError("worker 2 was killed")),
     (False, "worker 2 was killed")),
])
def test_each_worker_is_described_by_its_result(result: shmbus.WorkerResult,
                                                expected: tuple[bool, str]) -> None:
    assert describe(result, 5) == expected
