"""The `shmbus` command (also `python -m shmbus`): watch, follow, clean, demo, bench, bridge.

## Shape

    shmbus ls [NAME] [--json]        buses and subscribers with their live figures
    shmbus tail NAME [-n N] [--json] [--capacity C]
                                     print a bus's events as they come, like `tail -f`
    shmbus top [--interval S] [--once | --iterations N]
                                     a live view: who is holding the emitter back
    shmbus gc                        remove what dead buses and subscribers left behind
    shmbus demo [--subscribers N] [--events M] [--capacity C] [--slow-ms S]
                [--start-method M]   fan numbered events out, check they all arrive
    shmbus bench [--systems ...] [--workloads ...] [--subscribers ...] [--runs R]
                 [--quick] [--no-latency] [--no-growth] [--json PATH]
                                     the benchmark suite of a source checkout
    shmbus bridge NAME --nats URL [--stream S]
                                     publish a bus's events to NATS JetStream

- `ls` and `top` read each bus's shared memory read-only (`shmbus.buses()`), so
  watching cannot slow a bus down (`_cli_figures`). A table has a row for each bus's
  emitter and one per subscriber: pid, ring fill (a bar), events emitted or delivered,
  and how long the emitter has waited on that ring; `top` adds the rates since its last
  refresh and names the subscriber holding the emitter back. `ls --json` prints
  `dataclasses.asdict(BusStats)` per bus, plus its total `blocked_seconds`.
- `tail` is an ordinary subscriber: it sees the events emitted after it subscribed, and
  while it runs the emitter waits for it like for any other. It prints a str event as
  it is and anything else as its repr, one per line; `--json` prints one JSON document
  per line, and the repr as a JSON string for an object JSON cannot represent. When the
  bus closes it says so on stderr and exits 0; if the emitter died, it says so and
  exits 1. NAME may be `nats://host:port/NAME`, a bridged bus read from NATS.
- `gc` runs `shmbus.cleanup()` and says what it removed.
- `demo` is the README's main job end to end (`_cli_demo`).
- `bench` imports `benchmarks/run.py` from the source checkout this package was
  imported from (`_cli_bench`): the benchmarks are not part of the installed package.
- `bridge` runs a `shmbus._bridge.Bridge`, imported only then because it needs nats-py
  (an optional extra). It prints one line once events reach the stream and one when the
  bus ends. The bridge takes the first Ctrl-C itself, stores what it already read and
  returns; the bus still being open is how this command tells that from the bus's end,
  and exits 130.

## Failures

Commands raise; `main` alone reports. Foreseeable failures (any `ShmBusError`, a bad
value's `ValueError`, an `OSError` such as a registry directory you may not write, a
command's own `CommandFailed`) print one red line on stderr and exit 1, never a
traceback. argparse's usage errors exit 2, Ctrl-C exits 130, and a closed pipe
(`shmbus tail x | head`) exits 141 without a word, as other tools do.

## Why argparse and rich, and not click or typer

argparse is in the standard library and its usage errors are already what users expect;
rich is a dependency anyway (tables, progress bars, the live view). Output is plain
text when stdout is not a terminal, so everything can be piped and grepped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

import shmbus
from shmbus._errors import EventsLost
from shmbus._registry import DIR_ENV, default_root

from . import _cli_bench, _cli_demo, _cli_figures
from ._cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandFailed,
    at_least,
    error_line,
    notice_line,
    plural,
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
        epilog=f"Buses are found through the registry directory ${DIR_ENV} "
        f"(now {default_root()}).",
    )
    parser.add_argument("--version", action="version", version=f"shmbus {shmbus.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _cli_figures.add_commands(commands)
    _add_tail(commands)
    _add_gc(commands)
    _cli_demo.add_command(commands)
    _cli_bench.add_command(commands)
    _add_bridge(commands)
    return parser


def _status_of(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    return exc.code if isinstance(exc.code, int) else EXIT_FAILED


def _describe_os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if not isinstance(exc, PermissionError):
        return f"{what}: {exc.filename}" if exc.filename else what
    root = os.path.abspath(default_root())
    hint = f"point {DIR_ENV} at a directory of your own that you can write"
    if exc.filename is None or os.path.abspath(exc.filename) == root:
        return f"{what} on the registry directory {root} (${DIR_ENV}): {hint}"
    return f"{what}: {exc.filename} (the registry is {root}, ${DIR_ENV}): {hint}"


def _silence_stdout() -> None:
    # The reader is gone; without this the interpreter's final flush of stdout raises
    # BrokenPipeError again and prints "Exception ignored" on the way out.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- tail -----------------------------------------------------------------------------


def _add_tail(commands: Any) -> None:
    tail = commands.add_parser(
        "tail", help="print a bus's events as they come, like tail -f",
        description="Subscribe to bus NAME and print every event emitted from now on, one "
        "per line (a str as it is, anything else as its repr), until the bus closes or "
        "Ctrl-C. This is a real subscriber: the emitter waits for it like for any other.",
    )
    tail.add_argument("name", metavar="NAME", help="the bus to follow")
    tail.add_argument("-n", "--count", type=int, default=None, metavar="N",
                      help="exit after N events")
    tail.add_argument("--json", action="store_true",
                      help="one JSON document per line (the repr, as a string, for an "
                      "event JSON cannot represent)")
    tail.add_argument("--capacity", type=int, default=None, metavar="C",
                      help="ring slots for this subscriber (default: the bus's)")
    tail.set_defaults(command=_run_tail)


def _run_tail(args: argparse.Namespace) -> int:
    limit = at_least("--count", args.count, 1) if args.count is not None else None
    line_of = _json_line if args.json else _text_line
    if isinstance(sys.stdout, io.TextIOWrapper):
        # An event's text may hold characters the terminal's encoding lacks; one event
        # must not end the stream.
        sys.stdout.reconfigure(errors="backslashreplace")
    with shmbus.subscribe(args.name, capacity=args.capacity) as sub:
        printed = _follow(sub, line_of, limit, sys.stdout)
        end = sub.end_reason
    if limit is not None and printed >= limit:
        return EXIT_OK
    events = plural(printed, "event", "events")
    if end is shmbus.EndReason.EMITTER_DIED:
        error_line(f"the emitter of bus {args.name!r} died after {events} here; every "
                   "event it finished emitting was printed")
        return EXIT_FAILED
    notice_line(f"bus {args.name!r} closed after {events}")
    return EXIT_OK


def _follow(sub: Any, line_of: Any, limit: int | None, out: TextIO) -> int:
    """Print events until the stream ends or `limit` is reached; how many were taken."""
    taken = 0
    while limit is None or taken < limit:
        try:
            event = sub.recv()
        except shmbus.DeserializationError as exc:
            # Consumed, but not readable here (its class is not importable, say):
            # say so and go on, as the library itself does.
            notice_line(f"event not shown: {exc}")
            taken += 1
            continue
        except EventsLost as exc:
            # A bridged bus read from NATS: the gap is reported once, the stream goes on.
            notice_line(f"{exc.count} events lost in transit: {exc}")
            continue
        except shmbus.Closed:
            break
        out.write(line_of(event) + "\n")
        out.flush()  # a follower is read by a person or a pipe now, not at exit
        taken += 1
    return taken


def _text_line(event: Any) -> str:
    return event if isinstance(event, str) else repr(event)


def _json_line(event: Any) -> str:
    try:
        # allow_nan=False: NaN is not JSON, and jq and most parsers reject it.
        return json.dumps(event, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        # Not representable as a whole (a set, a custom object, a tuple key): the repr
        # is the only faithful rendering that keeps the line valid JSON.
        return json.dumps(repr(event), ensure_ascii=False)


# -- gc -------------------------------------------------------------------------------


def _add_gc(commands: Any) -> None:
    gc = commands.add_parser(
        "gc", help="remove what dead buses and subscribers left behind",
        description="Remove the shared memory, semaphores and registry entries of buses "
        "and subscribers whose processes died. Live buses are never touched.",
    )
    gc.set_defaults(command=_run_gc)


def _run_gc(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    cleaned = shmbus.cleanup()
    if not cleaned:
        out.print(f"nothing to remove (registry {default_root()})", markup=False)
        return EXIT_OK
    table = Table(title=f"Removed from {default_root()}", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("what")
    for kind, entries in (("bus", cleaned.buses), ("subscriber", cleaned.subscribers),
                          ("name", cleaned.names)):
        for entry in entries:
            table.add_row(kind, entry)
    out.print(table)
    out.print(
        f"removed {plural(len(cleaned.buses), 'bus', 'buses')}, "
        f"{plural(len(cleaned.subscribers), 'subscriber', 'subscribers')} and "
        f"{plural(len(cleaned.names), 'stale name', 'stale names')}",
        markup=False,
    )
    return EXIT_OK


# -- bridge ---------------------------------------------------------------------------


def _add_bridge(commands: Any) -> None:
    bridge = commands.add_parser(
        "bridge", help="publish a bus's events to a NATS JetStream stream",
        description="Subscribe to bus NAME and publish every event to NATS JetStream, "
        "until the bus closes or Ctrl-C; other hosts read it with "
        "shmbus.subscribe('nats://host:port/NAME'). Needs nats-py: "
        "pip install 'shmbus[nats]'.",
    )
    bridge.add_argument("name", metavar="NAME", help="the bus to bridge")
    bridge.add_argument("--nats", required=True, metavar="URL",
                        help="the NATS server, e.g. nats://127.0.0.1:4222")
    bridge.add_argument("--stream", default=None, metavar="S",
                        help="the JetStream stream to publish to (default: the bridge's)")
    bridge.set_defaults(command=_run_bridge)


def _run_bridge(args: argparse.Namespace) -> int:
    try:
        from ._bridge import Bridge
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("nats"):
            raise
        raise CommandFailed(
            "shmbus bridge needs nats-py, which is not installed: "
            "pip install 'shmbus[nats]'"
        ) from None
    out = Console(highlight=False)
    bridge = Bridge(args.name, args.nats, stream=args.stream)
    where = f"{bridge.url} (stream {bridge.stream})"  # the password redacted

    def ready() -> None:
        out.print(f"bridging bus {args.name!r} to {where}; Ctrl-C to stop", markup=False)

    # The first Ctrl-C makes run() store what it already took and return; a second one
    # raises KeyboardInterrupt out of it (exit 130 too, by `main`).
    published = bridge.run(on_ready=ready)
    summary = f"published {plural(published, 'event', 'events')} to {where}"
    if _bus_is_open(args.name):
        notice_line(f"stopped: {summary}")  # only Ctrl-C ends a bridge before its bus
        return EXIT_INTERRUPTED
    out.print(f"bus {args.name!r} ended: {summary}", markup=False)
    return EXIT_OK


def _bus_is_open(name: str) -> bool:
    try:
        figures = shmbus.stats(name)
    except shmbus.BusNotFound:
        return False
    return figures.emitter_alive and not figures.closed
