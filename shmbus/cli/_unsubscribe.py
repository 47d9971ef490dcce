"""`shmbus unsubscribe NAME DURABLE`: remove a durable subscription and what it holds.

A durable subscription (`shmbus.subscribe(name, durable=...)`) keeps its ring when its
owner dies or stops, and the emitter keeps writing it, then waits on it once it is full,
until its owner comes back or it expires (`shmbus ls` shows how long that is). This is
the way to let go of one sooner: it is `shmbus.unsubscribe(name, durable)`, which
refuses while a live process owns the subscription (that process is the one to close
it), so a command can never pull a ring from under a reader.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

import shmbus

from ._common import EXIT_OK


def add_command(commands: Any) -> None:
    """Add `unsubscribe` to the `shmbus` command's subparsers."""
    unsubscribe = commands.add_parser(
        "unsubscribe", help="remove a durable subscription that has no owner",
        description="Remove durable subscription DURABLE of bus NAME, and the events it "
        "holds, so that the emitter stops keeping them for it. Refused while a live "
        "process owns it. `shmbus ls NAME` lists a bus's durable subscriptions.",
    )
    unsubscribe.add_argument("name", metavar="NAME", help="the bus")
    unsubscribe.add_argument("durable", metavar="DURABLE",
                             help="the durable subscription's name")
    unsubscribe.set_defaults(command=run_unsubscribe)


def run_unsubscribe(args: argparse.Namespace) -> int:
    shmbus.unsubscribe(args.name, args.durable)
    Console(highlight=False).print(
        f"removed durable subscription {args.durable!r} of bus {args.name!r}", markup=False)
    return EXIT_OK
