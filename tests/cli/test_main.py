"""`main`: usage errors, bad values and unusable registries, each one line and a status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.command import (
    NOBODY,
    RUN_TIMEOUT,
    assert_no_traceback,
    assert_one_error_line,
    assert_registry_empty,
    cli_env,
    run_cli,
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["demo", "--bogus"],
    ["demo", "--subscribers", "many"],
    ["gc", "--events", "3"],
    ["ls", "--bogus"],
    ["tail"],
    ["tail", "news", "-n", "many"],
    ["top", "--once", "--iterations", "2"],
    ["top", "--interval", "soon"],
    ["bench", "--runs", "three"],
    ["bridge", "news"],
])
def test_usage_errors_exit_nonzero_without_traceback(registry: Path, args: list[str]) -> None:
    result = run_cli(registry, *args)

    assert result.returncode != 0
    assert "usage:" in result.stderr
    assert_no_traceback(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["demo", "--subscribers", "0"], "--subscribers must be between"),
    (["demo", "--events", "-5"], "--events must be 0 or more"),
    (["demo", "--slow-ms", "-1"], "--slow-ms must be"),
    (["demo", "--capacity", "0"], "capacity must be between"),
    (["tail", "news", "-n", "0"], "--count must be 1 or more"),
    (["tail", "../news"], "invalid bus name '../news'"),
    (["top", "--interval", "0"], "--interval must be a number of seconds above 0"),
    (["top", "--iterations", "0"], "--iterations must be 1 or more"),
    (["bench", "--runs", "0"], "--runs must be 1 or more"),
])
def test_bad_values_print_one_error_line_and_exit_1(registry: Path, args: list[str],
                                                     message: str) -> None:
    result = run_cli(registry, *args)

    assert_one_error_line(result, message)
    assert_registry_empty(registry)


# -- a registry you may not use ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["ls"], ["tail", "news"], ["top", "--once"], ["gc"]])
def test_a_registry_of_another_user_is_refused_in_one_line(tmp_path: Path,
                                                           command: list[str]) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, NOBODY, NOBODY)
        owner = NOBODY
    else:
        theirs, owner = Path("/"), 0  # root's, and not ours

    result = run_cli(theirs, *command)

    assert_one_error_line(result, f"registry directory {theirs} belongs to uid {owner}")
    assert "SHMBUS_DIR" in result.stderr


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@pytest.mark.timeout(60)
def test_a_registry_you_cannot_create_is_a_permission_error_in_one_line(
        tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    registry = locked / "registry"
    argv = [sys.executable, "-m", "shmbus", "ls"]
    if os.geteuid() == 0:
        # Root may write anywhere; nobody may not even enter the test's private tmp_path.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot run as another user")
        probe = subprocess.run(_as_nobody([sys.executable, "-c", "import shmbus"]),
                               cwd="/", capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot import shmbus here: {probe.stderr[-300:]}")
        argv = _as_nobody(argv)
    else:
        locked.chmod(0o500)
    try:
        result = subprocess.run(argv, cwd="/", env=cli_env(registry), capture_output=True,
                                encoding="utf-8", timeout=RUN_TIMEOUT)
    finally:
        locked.chmod(0o700)

    assert_one_error_line(result, "Permission denied")
    assert f"{registry}" in result.stderr and "SHMBUS_DIR" in result.stderr
    assert not registry.exists()
