"""`shmbus gc`: what dead processes left is removed and listed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.command import RUN_TIMEOUT, assert_registry_empty, cli_env, run_cli


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
    crashed = subprocess.run([sys.executable, "-c", crash], env=cli_env(registry),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert os.listdir(registry / "buses"), "the killed process should have left its bus"

    result = run_cli(registry, "gc")

    assert result.returncode == 0, result.stderr
    assert "removed 1 bus, 1 subscriber and 1 stale name" in result.stdout, result.stdout
    assert "leaky" in result.stdout
    assert_registry_empty(registry)
