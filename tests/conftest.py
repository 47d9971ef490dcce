"""Fixtures shared by the whole suite.

Every test gets a registry directory of its own (`SHMBUS_DIR`) and a ledger of the shared
objects its processes create (`SHMBUS_LEDGER`); afterwards the suite checks that every
one of them was removed: a leak fails the test that caused it, and is removed so that it
cannot fail the next one. Objects the test did not create are never looked at. That is
`shmbus.testing`'s `shmbus_registry` fixture, which the package ships for its users.
"""

from __future__ import annotations

import fcntl
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time

import pytest

from shmbus import _platform
from tests import helpers


pytest_plugins = [
    "tests.nats_server",  # the `nats_server` fixture: a real nats-server -js
    "tests.private_shm",  # the `private_shm` fixture: a child on a tmpfs of its own
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-seed", default=None, help="replay a chaos run with this seed")
    parser.addoption("--chaos-seconds", type=float, default=12.0,
                     help="how long each timed chaos test runs (default 12; the repeated "
                          "passes of scripts/check run shorter ones)")
    parser.addoption("--wait-modes", default="timed,poll",
                     help="the wait strategies the `wait_mode` tests run with (default "
                          "timed,poll; scripts/check's pure-Python pass runs timed only, "
                          "since its macOS-rules pass runs that core with poll)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: randomized kill/stop runs (tests/chaos)")
    _run_alone(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = set(config.getoption("--wait-modes").split(","))
    unknown = wanted - {"timed", "poll"}
    if unknown:
        raise pytest.UsageError(f"--wait-modes: unknown {sorted(unknown)}; use timed, poll")
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        mode = callspec.params.get("wait_mode") if callspec is not None else None
        (dropped if mode is not None and mode not in wanted else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _run_alone(config: pytest.Config) -> None:
    # The leak check diffs the whole of /dev/shm, and the timing tests assume the cores
    # are ours: a second pytest run of this suite on the machine waits for the first.
    lock = open(os.path.join(tempfile.gettempdir(), "shmbus-tests.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another shmbus test run is in progress; waiting for it", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
    config._shmbus_run_lock = lock  # type: ignore[attr-defined]  # held until exit


@pytest.fixture(autouse=True)
def registry_dir(shmbus_registry: str) -> str:
    """Every test runs with a registry of its own and a leak check of what it created:
    the fixture shmbus ships for its users' tests (`shmbus.testing`)."""
    return shmbus_registry


@pytest.fixture(params=["timed", "poll"] if _platform.TIMED_WAIT else ["poll"])
def wait_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per wait strategy (`SHMBUS_WAIT`), children included: the one
    strategy there is where the platform has no timed wait (macOS, and its rules mode)."""
    monkeypatch.setenv("SHMBUS_WAIT", request.param)
    return request.param


FINISH_GRACE = 1.0
"""How long, in all, the children of a test may take to exit on their own before they are
killed: a child that holds its subscription until killed costs the test that much."""


@pytest.fixture
def procs():
    """Start worker processes that are killed and reaped after the test, pass or fail."""
    started: list = []

    def start(target, *args, ctx: str = "fork"):
        proc = helpers.context(ctx).Process(target=target, args=args, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    start.started = started  # type: ignore[attr-defined]
    yield start
    # A child still finishing on its own (a bridge or an emitter leaving its closed bus)
    # gets a moment to remove what it owns: killed midway, it would leave it behind.
    finishing = [proc.sentinel for proc in started if proc.is_alive()]
    deadline = time.monotonic() + FINISH_GRACE
    while finishing and time.monotonic() < deadline:
        done = multiprocessing.connection.wait(finishing, deadline - time.monotonic())
        finishing = [sentinel for sentinel in finishing if sentinel not in done]
    for proc in started:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.join(5)

