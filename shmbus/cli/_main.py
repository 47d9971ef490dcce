"""`main`: the `shmbus` command's parser, and the one place that reports a failure.

## Failures

Commands raise; `main` alone reports. Foreseeable failures (any `ShmBusError`, a bad
value's `ValueError`, an `OSError` such as a registry directory you may not write, a
command's own `CommandFailed`) print one red line on stderr and exit 1, never a
traceback. The line is the exception's own message: a situation the library has words
for (no such bus, a registry that is not yours, no NATS server) reads the same from the
command as from the API. argparse's usage errors exit 2, Ctrl-C exits 130, and a closed
pipe (`shmbus tail x | head`) exits 141 without a word, as other tools do.

## Why argparse and rich, and not click or typer

argparse is in the standard library and its usage errors are already what users expect;
rich is a dependency anyway (tables, progress bars, the live view). Output is plain
text when stdout is not a terminal, so everything can be piped and grepped.
"""

from __future__ import annotations

import argparse
import os
import sys

import shmbus

from . import _bench, _bridge, _demo, _gc, _stats, _tail, _unsubscribe
from ._common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    REGISTRY_ENV,
    CommandFailed,
    error_line,
    registry_root,
)


def main(argv: list[str] | None = None) -> int:
    """Run the `shmbus` command; its exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: argparse already said why
        return _status_of(exc)
    try:
        status: int = args.command(args)
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (shmbus.ShmBusError, ValueError, CommandFailed) as exc:
        error_line(str(exc))
        return EXIT_FAILED
    except OSError as exc:
        error_line(_describe_os_error(exc))
        return EXIT_FAILED


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmbus", description="A multi-process, shared-memory event bus.",
        epilog=f"Buses are found through the registry directory ${REGISTRY_ENV} "
        f"(now {registry_root()}).",
    )
    parser.add_argument("--version", action="version",
                        version=f"shmbus {shmbus.__version__} (core: {shmbus.CORE})")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _stats.add_commands(commands)
    _tail.add_command(commands)
    _gc.add_command(commands)
    _unsubscribe.add_command(commands)
    _demo.add_command(commands)
    _bench.add_command(commands)
    _bridge.add_command(commands)
    return parser


def _status_of(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    return exc.code if isinstance(exc.code, int) else EXIT_FAILED


def _describe_os_error(exc: OSError) -> str:
    # The library lets the system's own error through here (it has no better words for
    # "you may not create that directory"); what it lacks is where the path came from.
    what = exc.strerror or str(exc)
    if not isinstance(exc, PermissionError):
        return f"{what}: {exc.filename}" if exc.filename else what
    root = os.path.abspath(registry_root())
    hint = f"point {REGISTRY_ENV} at a directory of your own that you can write"
    if exc.filename is None or os.path.abspath(exc.filename) == root:
        return f"{what} on the registry directory {root} (${REGISTRY_ENV}): {hint}"
    return f"{what}: {exc.filename} (the registry is {root}, ${REGISTRY_ENV}): {hint}"


def _silence_stdout() -> None:
    # The reader is gone; without this the interpreter's final flush of stdout raises
    # BrokenPipeError again and prints "Exception ignored" on the way out.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
