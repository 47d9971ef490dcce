"""`shmbus tail NAME`: print a bus's events as they come, like `tail -f`.

## Shape

`tail` is an ordinary subscriber (`shmbus.subscribe`): it sees the events emitted after
it subscribed (with `--history`, first the last ones the bus keeps for late joiners,
`EventEmitter(history=K)`), and while it runs the emitter waits for it like for any
other. It prints a str event as it is (unless it holds control characters) and anything
else as its repr, one per line; `--json` prints one JSON document per line, and the repr
as a JSON string for an object JSON cannot represent.
NAME may be `nats://host:port/NAME`, a bridged bus read back from NATS: the library's
`subscribe` picks the layer, so this module never imports the NATS one.

When the bus closes it says so on stderr, with how many events it printed, and exits 0;
if the emitter died, it says so and exits 1. An event that cannot be unpickled here, or
a gap in a bridged stream, is one line on stderr and the stream goes on, as the library
itself goes on.

## Why it flushes every line

A follower is read by a person or a pipe now, not at exit: `shmbus tail jobs | grep x`
must show a match as it happens.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

import shmbus

from ._common import EXIT_FAILED, EXIT_OK, at_least, error_line, notice_line, plural

LineOf = Callable[[Any], str]


def add_command(commands: Any) -> None:
    """Add `tail` to the `shmbus` command's subparsers."""
    tail = commands.add_parser(
        "tail", help="print a bus's events as they come, like tail -f",
        description="Subscribe to bus NAME and print every event emitted from now on, one "
        "per line (a str as it is, anything else as its repr), until the bus closes or "
        "Ctrl-C. This is a real subscriber: the emitter waits for it like for any other.",
    )
    tail.add_argument("name", metavar="NAME",
                      help="the bus to follow (or nats://HOST:PORT/NAME, a bridged one)")
    tail.add_argument("-n", "--count", type=int, default=None, metavar="N",
                      help="exit after N events")
    tail.add_argument("--json", action="store_true",
                      help="one JSON document per line (the repr, as a string, for an "
                      "event JSON cannot represent)")
    tail.add_argument("--capacity", type=int, default=None, metavar="C",
                      help="ring slots for this subscriber (default: the bus's)")
    tail.add_argument("--history", action="store_true",
                      help="first print the last events emitted before this started, as "
                      "many as the bus keeps (EventEmitter(name, history=K))")
    tail.set_defaults(command=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    limit = at_least("--count", args.count, 1) if args.count is not None else None
    line_of = json_line if args.json else text_line
    if isinstance(sys.stdout, io.TextIOWrapper):
        # An event's text may hold characters the terminal's encoding lacks; one event
        # must not end the stream.
        sys.stdout.reconfigure(errors="backslashreplace")
    with shmbus.subscribe(args.name, capacity=args.capacity, history=args.history) as sub:
        printed = follow(sub, line_of, limit, sys.stdout)
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


def follow(sub: shmbus.Subscription, line_of: LineOf, limit: int | None,
           out: TextIO) -> int:
    """Print events until the stream ends or `limit` is reached; how many were taken."""
    taken = 0
    while limit is None or taken < limit:
        try:
            event = sub.recv()
        except shmbus.DeserializationError as exc:
            # Consumed, but not readable here (its class is not importable, say).
            notice_line(f"event not shown: {exc}")
            taken += 1
            continue
        except shmbus.EventsLost as exc:
            # A bridged bus read from NATS: the gap is reported once, the stream goes on.
            notice_line(f"{exc.count} events lost in transit: {exc}")
            continue
        except shmbus.Closed:
            break
        out.write(line_of(event) + "\n")
        out.flush()
        taken += 1
    return taken


def text_line(event: Any) -> str:
    # A str with control characters (a terminal escape sequence, a newline) is shown as
    # its repr: an event must not drive the user's terminal or forge a line of output.
    if isinstance(event, str) and not _CONTROL.search(event):
        return event
    return repr(event)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def json_line(event: Any) -> str:
    try:
        # allow_nan=False: NaN is not JSON, and jq and most parsers reject it.
        return json.dumps(event, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        # Not representable as a whole (a set, a custom object, a tuple key): the repr
        # is the only faithful rendering that keeps the line valid JSON.
        return json.dumps(repr(event), ensure_ascii=False)
