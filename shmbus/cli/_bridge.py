"""`shmbus bridge NAME --nats URL`: publish a bus's events to NATS JetStream.

## Shape

It runs a `shmbus.nats.Bridge` in the foreground. It prints one line once events reach
the stream and one when the bus ends. The bridge takes the first Ctrl-C itself, stores
what it already read and returns; the bus still being open is how this command tells
that from the bus's end, and exits 130. The bridge reads through its durable
subscription (`bridge.<stream>`) unless `--no-durable`: stopped or killed, it leaves the
bus keeping what is emitted meanwhile for the next bridge, for `--expire-after` seconds
at most, and says so when it stops.

## Why the NATS layer is imported inside the command

It needs nats-py, an optional extra (`pip install 'shmbus[nats]'`). Every other command
must work without it, so it is imported only when this one runs; without nats-py that
import raises the library's own `NatsError`, whose words `main` prints as they are.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

import shmbus

from ._common import EXIT_INTERRUPTED, EXIT_OK, notice_line, plural


def add_command(commands: Any) -> None:
    """Add `bridge` to the `shmbus` command's subparsers."""
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
    bridge.add_argument("--no-durable", dest="durable", action="store_false",
                        help="read the bus through a plain subscription: what is emitted "
                        "while no bridge runs is lost (and reported lost to remote "
                        "subscribers)")
    bridge.add_argument("--expire-after", type=float, default=None, metavar="SECONDS",
                        help="how long the bus keeps events for a bridge that stopped or "
                        "died before it gives up on it (default: "
                        f"{shmbus.DEFAULT_EXPIRE_AFTER:g})")
    bridge.set_defaults(command=run_bridge)


def run_bridge(args: argparse.Namespace) -> int:
    from shmbus.nats import Bridge  # the optional layer: see the module's docstring

    out = Console(highlight=False)
    bridge = Bridge(args.name, args.nats, stream=args.stream, durable=args.durable,
                    expire_after=args.expire_after)
    where = f"{bridge.url} (stream {bridge.stream})"  # the password redacted

    def ready() -> None:
        out.print(f"bridging bus {args.name!r} to {where}; Ctrl-C to stop", markup=False)

    # The first Ctrl-C makes run() store what it already took and return; a second one
    # raises KeyboardInterrupt out of it (exit 130 too, by `main`).
    published = bridge.run(on_ready=ready)
    summary = f"published {plural(published, 'event', 'events')} to {where}"
    if _bus_is_open(args.name):
        notice_line(f"stopped: {summary}")  # only Ctrl-C ends a bridge before its bus
        if bridge.durable is not None:
            expiry = args.expire_after or shmbus.DEFAULT_EXPIRE_AFTER
            notice_line(f"bus {args.name!r} keeps what is emitted now for the next bridge "
                        f"for {expiry:g} s (shmbus unsubscribe {args.name} "
                        f"{bridge.durable} lets go of it)")
        return EXIT_INTERRUPTED
    out.print(f"bus {args.name!r} ended: {summary}", markup=False)
    return EXIT_OK


def _bus_is_open(name: str) -> bool:
    try:
        stats = shmbus.stats(name)
    except shmbus.BusNotFound:
        return False
    return stats.emitter_alive and not stats.closed
