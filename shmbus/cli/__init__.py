"""The `shmbus` command (also `python -m shmbus`): watch, follow, clean, demo, bench, bridge.

## Shape

    shmbus ls [NAME] [--json]        buses and subscribers with their live stats
    shmbus tail NAME [-n N] [--json] [--capacity C]
                                     print a bus's events as they come, like `tail -f`
    shmbus top [--interval S] [--once | --iterations N]
                                     a live view: who is holding the emitter back
    shmbus gc                        remove what dead buses and subscribers left behind
    shmbus demo [--subscribers N] [--events M] [--capacity C] [--slow-ms S]
                [--start-method M]   fan numbered events out, check they all arrive
    shmbus bench [--checkout PATH] [--systems ...] [--workloads ...] [--subscribers ...]
                 [--runs R] [--quick] [--no-latency] [--no-growth] [--json PATH]
                                     the benchmark suite of a source checkout
    shmbus bridge NAME --nats URL [--stream S]
                                     publish a bus's events to NATS JetStream

One private module per concept: `_main` (the parser, `main`, and the one place a
failure is reported), `_common` (exit statuses, stderr lines), `_stats` (`ls`, `top`),
`_tail`, `_gc`, `_demo`, `_bench`, `_bridge`. Each command module has an `add_command`
that adds its subparser and sets the function that runs it.

## Why a layer of its own

The command is a user of the library like any other: it goes through `import shmbus`
(and `shmbus.nats` for the NATS parts, imported only when a command needs them), so
what it shows is what the API says, in the API's words. The core never imports this
package, so `import shmbus` costs nothing for the command's sake (no argparse, no rich).
"""

from ._main import main

__all__ = ["main"]
