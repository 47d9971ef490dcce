"""What every `shmbus` command shares: exit statuses, the user-facing failure, stderr lines.

Commands never print their own errors: they raise, and `_main.main` turns any
foreseeable failure into one red line on stderr and a non-zero status. `CommandFailed` is
the failure that is the command's own (no benchmark suite to run, say), as opposed to the
library's `ShmBusError`, whose message is printed as the library words it; keeping it
here lets the command modules raise it without importing `_main`, which imports them.

The registry's location is the one thing every command shows that the public API does
not name (`shmbus.buses()` takes a `root`, but does not say what its default is), so it
is read here, from the core, in one place.
"""

from __future__ import annotations

import math

from rich.console import Console

from shmbus._registry import DIR_ENV, default_root

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for `shmbus tail x | head -n 3` with any other tool."""

REGISTRY_ENV = DIR_ENV
"""The environment variable that points every process of a user at the same registry."""


class CommandFailed(Exception):
    """A command cannot do its job for a reason the user can fix; the message says how."""


def registry_root() -> str:
    """The registry directory the library uses now (`$SHMBUS_DIR` or its default)."""
    return default_root()


def error_line(message: str) -> None:
    """One red line on stderr, prefixed like argparse's own errors."""
    # markup=False: messages quote bus names and paths, which may hold '[' ']'.
    # soft_wrap: one line however narrow the terminal, so it greps and pastes whole.
    Console(stderr=True, highlight=False).print(
        f"shmbus: error: {message}", style="bold red", markup=False, soft_wrap=True
    )


def notice_line(message: str) -> None:
    """One line on stderr that is news, not an error (a stream ended as it should)."""
    Console(stderr=True, highlight=False).print(
        f"shmbus: {message}", style="dim", markup=False, soft_wrap=True
    )


def positive_seconds(option: str, value: float) -> float:
    """`value` if it is a finite number of seconds above 0, else ValueError naming `option`."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a number of seconds above 0, got {value}")
    return value


def at_least(option: str, value: int, low: int) -> int:
    """`value` if it is at least `low`, else ValueError naming `option`."""
    if value < low:
        raise ValueError(f"{option} must be {low} or more, got {value}")
    return value


def plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"
