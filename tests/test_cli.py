"""The `shmbus` command, run the way a user runs it: `python -m shmbus ...` in a subprocess.

Every run gets its own registry (SHMBUS_DIR in tmp_path), so these tests neither see nor
disturb buses of other tests or of the user, and each can check that the command left
nothing behind in its registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN_TIMEOUT = 50


def _env(registry: Path) -> dict[str, str]:
    # COLUMNS: a summary line that rich wrapped would no longer match as one string.
    return {**os.environ, "SHMBUS_DIR": str(registry), "COLUMNS": "200"}


def run_cli(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmbus", *args],
        env=_env(registry), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    path.mkdir(mode=0o700)
    return path


def assert_registry_empty(registry: Path) -> None:
    """Nothing the command created is still registered (so nothing is left in /dev/shm)."""
    for sub in ("buses", "names"):
        directory = registry / sub
        assert not directory.exists() or os.listdir(directory) == [], os.listdir(directory)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


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


@pytest.mark.timeout(60)
def test_gc_on_a_clean_registry_has_nothing_to_remove(registry: Path) -> None:
    result = run_cli(registry, "gc")

    assert result.returncode == 0, result.stderr
    assert "nothing to remove" in result.stdout


@pytest.mark.timeout(60)
def test_gc_removes_what_a_killed_process_left(registry: Path) -> None:
    crash = (
        "import os, signal, shmbus\n"
        "em = shmbus.EventEmitter('leaky')\n"
        "sub = shmbus.subscribe('leaky')\n"
        "em.emit({'seq': 0})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    crashed = subprocess.run([sys.executable, "-c", crash], env=_env(registry),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert os.listdir(registry / "buses"), "the killed process should have left its bus"

    result = run_cli(registry, "gc")

    assert result.returncode == 0, result.stderr
    assert "removed 1 bus, 1 subscriber and 1 stale name" in result.stdout, result.stdout
    assert "leaky" in result.stdout
    assert_registry_empty(registry)
    assert "nothing to remove" in run_cli(registry, "gc").stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["demo", "--bogus"],
    ["demo", "--subscribers", "many"],
    ["gc", "--events", "3"],
])
def test_usage_errors_exit_nonzero_without_traceback(registry: Path, args: list[str]) -> None:
    result = run_cli(registry, *args)

    assert result.returncode != 0
    assert "usage:" in result.stderr
    assert_no_traceback(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--subscribers", "0"], "--subscribers must be between"),
    (["--events", "-5"], "--events must be 0 or more"),
    (["--slow-ms", "-1"], "--slow-ms must be"),
    (["--capacity", "0"], "capacity must be between"),
])
def test_bad_values_print_one_error_line_and_exit_1(registry: Path, args: list[str],
                                                     message: str) -> None:
    result = run_cli(registry, "demo", *args)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert message in result.stderr
    assert_no_traceback(result)
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
        env=_env(registry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
