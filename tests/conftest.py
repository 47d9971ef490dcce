"""Fixtures shared by the whole suite.

Every test gets a registry directory of its own (`SHMBUS_DIR`) and a ledger of the shared
objects its processes create (`SHMBUS_LEDGER`); afterwards the suite checks that every
one of them was removed: a leak fails the test that caused it, and is removed so that it
cannot fail the next one. Objects the test did not create are never looked at.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import tempfile

import pytest

from shmbus import _platform
from tests import helpers


pytest_plugins = [
    "tests.nats_server",  # the `nats_server` fixture: a real nats-server -js
    "tests.private_shm",  # the `private_shm` fixture: a child on a tmpfs of its own
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-seed", default=None, help="replay a chaos run with this seed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: randomized kill/stop runs (tests/chaos)")
    _run_alone(config)


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
def registry_dir(monkeypatch: pytest.MonkeyPatch):
    # A short path: the registry's paths show up in error messages.
    path = tempfile.mkdtemp(prefix="sbreg-")
    monkeypatch.setenv("SHMBUS_DIR", path)
    yield path
    helpers.remove_tree(path)


@pytest.fixture(autouse=True)
def no_leaks(registry_dir: str, monkeypatch: pytest.MonkeyPatch):
    # Only what this test's processes created is checked (they inherit the ledger), never
    # the rest of /dev/shm: other programs' buses may come and go meanwhile.
    ledger = registry_dir + ".ledger"
    monkeypatch.setenv(_platform.LEDGER_ENV, ledger)
    yield
    leaked = _platform.ledger_leftovers(ledger)
    for kind, name in leaked:
        _platform.remove(kind, name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ledger)
    assert not leaked, f"the test left shared objects behind: {leaked}"


@pytest.fixture(params=["timed", "poll"])
def wait_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per wait strategy (`SHMBUS_WAIT`), children included."""
    monkeypatch.setenv("SHMBUS_WAIT", request.param)
    return request.param


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
    for proc in started:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.join(5)

