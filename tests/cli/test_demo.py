"""`shmbus demo`: every subscriber gets every event in order, and Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
