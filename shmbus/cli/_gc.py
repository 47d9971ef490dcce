"""`shmbus gc`: remove what dead buses and subscribers left behind, and say what.

It is `shmbus.cleanup()` with a table: the library decides what is dead (a life lock
nobody holds), so the command can never remove a live bus.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

import shmbus

from ._common import EXIT_OK, plural, registry_root


def add_command(commands: Any) -> None:
    """Add `gc` to the `shmbus` command's subparsers."""
    gc = commands.add_parser(
        "gc", help="remove what dead buses and subscribers left behind",
        description="Remove the shared memory, semaphores and registry entries of buses "
        "and subscribers whose processes died. Live buses are never touched.",
    )
    gc.set_defaults(command=run_gc)


def run_gc(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    cleaned = shmbus.cleanup()
    if not cleaned:
        out.print(f"nothing to remove (registry {registry_root()})", markup=False)
        return EXIT_OK
    table = Table(title=f"Removed from {registry_root()}", title_justify="left")
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
