"""A private /dev/shm of a chosen size, for a child Python: how tests run out of memory.

The child runs in a mount namespace of its own with a fresh tmpfs on /dev/shm (`unshare
-m` as root, else `unshare --map-root-user -m` in an unprivileged user namespace); tests
that need one skip where neither is permitted. The child prints what it saw as JSON on
its last line of output; `run` returns that.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Callable

import pytest

CHILD_TIMEOUT = 60.0

_UNSHARE = (("unshare", "-m"), ("unshare", "--map-root-user", "-m"))
"""As root, a mount namespace is enough; otherwise a user namespace maps us to root in it
(files we own, such as the registry, then appear owned by that root: the same uid)."""


def _command(unshare: tuple[str, ...], size: str, argv: list[str]) -> list[str]:
    mount = f'mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && exec "$@"'
    return [*unshare, "sh", "-c", mount, "sh", *argv]


@functools.lru_cache(maxsize=None)
def _how() -> tuple[tuple[str, ...] | None, str]:
    """How to get a private /dev/shm here, or None and why not."""
    if not sys.platform.startswith("linux"):
        return None, "needs Linux (mount namespaces, tmpfs on /dev/shm)"
    if shutil.which("unshare") is None:
        return None, "`unshare` (util-linux) is not installed"
    failures = []
    for unshare in _UNSHARE:
        try:
            probe = subprocess.run(_command(unshare, "1m", ["ls", "-A", "/dev/shm"]),
                                   capture_output=True, text=True, timeout=CHILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"`{' '.join(unshare)}`: {exc}")
            continue
        if probe.returncode == 0 and not probe.stdout.strip():
            return unshare, ""
        said = probe.stderr.strip() or probe.stdout.strip()
        failures.append(f"`{' '.join(unshare)}`: {said}")
    return None, ("cannot mount a private tmpfs on /dev/shm (needs root, or unprivileged "
                  "user namespaces): " + "; ".join(failures))


def run(unshare: tuple[str, ...], size: str, script: str, *args: str) -> dict[str, Any]:
    """Run Python `script` with `args` on a private /dev/shm of `size`; its JSON."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # SHMBUS_DIR: this test's
    env.pop("SHMBUS_LEDGER", None)  # nothing it makes outlives its private /dev/shm
    done = subprocess.run(_command(unshare, size, [sys.executable, "-c", script, *args]),
                          env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert done.returncode == 0, f"child crashed ({done.returncode}):\n{done.stderr}"
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


@pytest.fixture
def private_shm() -> Callable[..., dict[str, Any]]:
    """`private_shm(size, script, *args)`: run a child Python on a private /dev/shm."""
    unshare, reason = _how()
    if unshare is None:
        pytest.skip(reason)
    return functools.partial(run, unshare)
