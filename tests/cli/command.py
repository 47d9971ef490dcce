"""Running the `shmbus` command the way a user runs it: `python -m shmbus ...` in a subprocess.

Every test has its own registry (the suite's SHMBUS_DIR, which the commands inherit), so
these tests neither see nor disturb buses of other tests or of the user; a bus the test
process creates is the bus the command sees, and each test can check that the command
left nothing behind in its registry.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmbus

RUN_TIMEOUT = 50
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NOBODY = 65534


def cli_env(registry: Path) -> dict[str, str]:
    # COLUMNS: a summary line that rich wrapped would no longer match as one string.
    env = {**os.environ, "SHMBUS_DIR": str(registry), "COLUMNS": "200"}
    for forcing in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(forcing, None)  # plain text, as any pipe gets
    return env


def run_cli(registry: Path, *args: str, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmbus", *args], cwd=cwd,
        env=cli_env(registry), capture_output=True, encoding="utf-8", timeout=RUN_TIMEOUT,
    )


@contextlib.contextmanager
def cli_process(registry: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`shmbus ARGS` running in the background; killed (and swept up after) if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", *args], env=cli_env(registry),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            shmbus.cleanup()  # its subscription, so the leak check blames this test only


def assert_registry_empty(registry: Path) -> None:
    """Nothing the command created is still registered (so nothing is left in /dev/shm)."""
    for sub in ("buses", "names"):
        directory = registry / sub
        assert not directory.exists() or os.listdir(directory) == [], os.listdir(directory)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def assert_one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("shmbus: error: "), result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr, result.stderr
    assert_no_traceback(result)


def wait_for_subscribers(em: shmbus.EventEmitter, count: int,
                         proc: subprocess.Popen[str]) -> None:
    """Return once `count` processes subscribed to `em`; fail if `proc` exits first."""
    deadline = time.monotonic() + 20
    while True:
        try:
            em.wait_for_subscribers(count, timeout=0.05)
            return
        except shmbus.Timeout as exc:
            if proc.poll() is not None:
                pytest.fail(f"the command exited early: {proc.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail(str(exc))


def row(output: str, *first_words: str) -> list[str]:
    """The words of the one table line whose words begin with `first_words`."""
    rows = [line.split() for line in output.splitlines()
            if line.split()[:len(first_words)] == list(first_words)]
    assert len(rows) == 1, (first_words, output)
    return rows[0]
