"""`shmbus ls` and `shmbus top`: the live stats of every bus, once or refreshed.

## Shape

Both read `shmbus.buses()` (or `shmbus.stats(name)`), which maps each bus's control
block and rings read-only: watching a bus cannot slow it down. `ls` prints one snapshot,
as a table or as JSON, and says which core (`shmbus.CORE`) shmbus runs here. `top` takes a snapshot every `--interval` seconds and shows, per
subscriber, what changed since the previous one: events/s, and the share of that time
the emitter spent waiting for room in its ring. The subscriber with a full ring, or with
the largest share, is the one holding everyone back, and a line under the table names it.

A table has one row for the emitter of each bus, one for the shared memory its large
events take, one for the events it keeps for late joiners if it keeps any (`history`,
its fill column what it holds of how many), then one per subscriber (a group's or a
durable subscription's ring is one row: `group NAME (N members)`, `durable NAME`, or
`durable NAME (expires in S s)` when it has no owner, with its first member's pid), so that the emitter's stats (events emitted,
emit rate, total time blocked) sit in the same columns as each subscriber's (events
delivered, receive rate, time the emitter was blocked on it). In the `large` row, the
fill column is what the bus's large events hold now against their bound
(`BusStats.large_bytes_held` of `large_bytes`): at the bound, emit waits for room as it
does on a full ring. It may pass the bound by events larger than half of it, which take
a segment each. `--json` has both numbers in bytes, as `dataclasses.asdict(BusStats)`
gives them.

## Why `top` prints frames one after another when stdout is not a terminal

rich's `Live` redraws in place on a terminal, but into a pipe or a file it writes only
the last frame, when it stops. Like `top -b`, `top` then prints every frame in turn,
which is what `shmbus top --iterations 5 > log` is for (and what the tests read).

## Why the emitter's blocked time is not enough to name the culprit

The emitter adds to a ring's blocked time when a wait for room in that ring *ends*. An
emitter stuck on a stopped subscriber has not finished waiting, so its blocked time does
not move; the ring's fill, at capacity, is what shows it. So the culprit is a full ring
first, and the largest blocked share otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

import shmbus

from ._common import EXIT_OK, at_least, plural, positive_seconds, registry_root

FILL_BAR_WIDTH = 12


def add_commands(commands: Any) -> None:
    """Add `ls` and `top` to the `shmbus` command's subparsers."""
    ls = commands.add_parser(
        "ls", help="list buses and their subscribers, with live stats",
        description="List every bus of this user (or one, by name) with its emitter and "
        "subscribers: pid, ring capacity and fill, events delivered, how long the "
        "emitter has waited on each subscriber, the shared memory the bus's large "
        "events hold against their bound, and the events it keeps for late joiners. "
        "Groups and durable subscriptions are one row each: their members, or whether "
        "a durable one has an owner and, if not, when it expires.",
    )
    ls.add_argument("name", nargs="?", metavar="NAME", help="show only this bus")
    ls.add_argument("--json", action="store_true", help="print the stats as JSON")
    ls.set_defaults(command=run_ls)

    top = commands.add_parser(
        "top", help="a live view of every bus: who is holding the emitter back",
        description="Refresh the stats of every bus every INTERVAL seconds: per "
        "subscriber, its ring's fill, events delivered and events/s, and the share of the "
        "time the emitter spent waiting on it. Ctrl-C stops. When stdout is not a "
        "terminal, every frame is printed in turn.",
    )
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes (default: 1.0)")
    stop = top.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true",
                      help="print one frame (rates over one interval) and exit")
    stop.add_argument("--iterations", type=int, default=None, metavar="N",
                      help="exit after N refreshes (default: run until Ctrl-C)")
    top.set_defaults(command=run_top)


# -- ls -------------------------------------------------------------------------------


def run_ls(args: argparse.Namespace) -> int:
    found = [shmbus.stats(args.name)] if args.name else shmbus.buses()
    out = Console(highlight=False)
    if args.json:
        document = {"registry": registry_root(), "core": shmbus.CORE,
                    "buses": [bus_as_json(b) for b in found]}
        # print(), not rich: JSON is for programs, and rich would wrap long lines.
        print(json.dumps(document, indent=2))
        return EXIT_OK
    # The core is this process's (each process picks its own, and they share a bus):
    # what `import shmbus` runs here, which is what a user's program run here would too.
    where = f"(registry {registry_root()}; core: {shmbus.CORE})"
    if not found:
        out.print(f"no buses {where}", markup=False)
        return EXIT_OK
    out.print(stats_table(found, previous=None, elapsed=None))
    subscribers = sum(len(b.subscribers) for b in found)
    out.print(f"{plural(len(found), 'bus', 'buses')}, "
              f"{plural(subscribers, 'subscriber', 'subscribers')} {where}", markup=False)
    return EXIT_OK


def bus_as_json(bus: shmbus.BusStats) -> dict[str, Any]:
    """The bus's stats as plain JSON values, its total blocked time included."""
    return {**dataclasses.asdict(bus), "blocked_seconds": bus.blocked_seconds}


# -- top ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    taken: float
    """time.monotonic() when the reading began."""
    buses: list[shmbus.BusStats]

    @classmethod
    def take(cls) -> "Snapshot":
        return cls(time.monotonic(), shmbus.buses())


def run_top(args: argparse.Namespace) -> int:
    interval = positive_seconds("--interval", args.interval)
    frames = 1 if args.once else args.iterations
    if frames is not None:
        at_least("--iterations", frames, 1)
    out = Console(highlight=False)
    snapshots = _every(interval, frames)
    previous = next(snapshots)
    if out.is_terminal and not args.once:
        with Live(_frame(previous, None, interval), console=out, auto_refresh=False) as live:
            for current in snapshots:
                live.update(_frame(current, previous, interval), refresh=True)
                previous = current
        return EXIT_OK
    for index, current in enumerate(snapshots):
        if index:
            out.print()
        out.print(_frame(current, previous, interval))
        previous = current
    return EXIT_OK


def _every(interval: float, frames: int | None) -> Iterator[Snapshot]:
    """A baseline snapshot now, then `frames` more (None: forever), `interval` apart."""
    baseline = Snapshot.take()
    yield baseline
    due = baseline.taken
    taken = 0
    while frames is None or taken < frames:
        due += interval
        # Sleeping until a due time, not for `interval`, keeps reading and drawing from
        # stretching the period; a late wake-up restarts the schedule rather than rush
        # to catch up. The rates use the real times between snapshots either way.
        time.sleep(max(0.0, due - time.monotonic()))
        due = max(due, time.monotonic())
        yield Snapshot.take()
        taken += 1


def _frame(current: Snapshot, previous: Snapshot | None, interval: float) -> RenderableType:
    elapsed = current.taken - previous.taken if previous is not None else None
    subscribers = sum(len(b.subscribers) for b in current.buses)
    header = Text(
        f"shmbus top: {plural(len(current.buses), 'bus', 'buses')}, "
        f"{plural(subscribers, 'subscriber', 'subscribers')}, every {interval:g} s "
        f"({time.strftime('%H:%M:%S')}, registry {registry_root()})",
        style="bold",
    )
    if not current.buses:
        return Group(header, Text("no buses"))
    before = previous.buses if previous is not None else []
    table = stats_table(current.buses, before, elapsed)
    verdicts = [v for v in (_culprit(b, before, elapsed) for b in current.buses) if v]
    return Group(header, table, *verdicts)


# -- the table both commands print ----------------------------------------------------


def stats_table(buses: list[shmbus.BusStats], previous: list[shmbus.BusStats] | None,
                elapsed: float | None) -> Table:
    """One row per emitter and per subscriber; rate columns only if `previous` is given."""
    rates = previous is not None
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("bus", no_wrap=True)
    table.add_column("who", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("fill", no_wrap=True)
    table.add_column("events", justify="right", no_wrap=True)
    if rates:
        table.add_column("events/s", justify="right", no_wrap=True)
    table.add_column("blocked", justify="right", no_wrap=True)
    if rates:
        table.add_column("blocked now", justify="right", no_wrap=True)
    before = {b.token: b for b in previous or []}
    for bus in buses:
        old = before.get(bus.token)
        table.add_row(*_emitter_cells(bus, old, elapsed, rates), style="bold")
        table.add_row(*_large_events_cells(bus, rates))
        if bus.history:
            table.add_row(*_history_cells(bus, rates))
        old_subs = {s.id: s for s in old.subscribers} if old is not None else {}
        for sub in bus.subscribers:
            table.add_row(*_subscriber_cells(sub, old_subs.get(sub.id), elapsed, rates))
        if bus is not buses[-1]:
            table.add_section()
    return table


def _emitter_cells(bus: shmbus.BusStats, old: shmbus.BusStats | None,
                   elapsed: float | None, rates: bool) -> list[RenderableType]:
    cells: list[RenderableType] = [
        Text(bus.name),
        _emitter_state(bus),
        _pid(bus.emitter_pid),
        "",
        f"{bus.emitted:,}",
    ]
    return cells + _counter_cells(bus.emitted, old.emitted if old else None,
                                  bus.blocked_seconds, old.blocked_seconds if old else None,
                                  elapsed, rates)


def _large_events_cells(bus: shmbus.BusStats, rates: bool) -> list[RenderableType]:
    held, bound = bus.large_bytes_held, bus.large_bytes
    # Numbers without a bar: with one, `top` no longer fits 80 columns.
    fill = Text(f"{human_bytes(held)}/{human_bytes(bound)}", style=_fill_style(held, bound))
    cells: list[RenderableType] = ["", "large", "", fill, ""]
    return cells + [""] * (3 if rates else 1)  # no events, rates or blocked time of its own


def _history_cells(bus: shmbus.BusStats, rates: bool) -> list[RenderableType]:
    cells: list[RenderableType] = ["", "history", "", f"{bus.history_held:,}/{bus.history:,}",
                                   ""]
    return cells + [""] * (3 if rates else 1)


def subscriber_label(sub: shmbus.SubscriberStats) -> Text:
    """`sub 3`, `group workers (4 members)`, `durable bridge1 (expires in 42 s)` (one
    without an owner)."""
    if sub.kind == "group":
        members = len(sub.member_pids)
        return Text(f"group {sub.queue} ({plural(members, 'member', 'members')})",
                    style="" if members else "red")
    if sub.kind == "durable":
        if sub.alive:
            return Text(f"durable {sub.queue}")
        # Only one without an owner expires: "expires" says both, in few columns.
        expiry = (f"expires in {sub.expires_in:.0f} s" if sub.expires_in is not None
                  else "no owner")
        return Text(f"durable {sub.queue} ({expiry})", style="yellow")
    return Text(f"sub {sub.id}" if sub.alive else f"sub {sub.id} (dead)",
                style="" if sub.alive else "red")


def _subscriber_cells(sub: shmbus.SubscriberStats, old: shmbus.SubscriberStats | None,
                      elapsed: float | None, rates: bool) -> list[RenderableType]:
    cells: list[RenderableType] = [
        "",
        subscriber_label(sub),
        _pid(sub.pid),
        fill_bar(sub.fill, sub.capacity),
        f"{sub.delivered:,}",
    ]
    return cells + _counter_cells(sub.delivered, old.delivered if old else None,
                                  sub.blocked_seconds, old.blocked_seconds if old else None,
                                  elapsed, rates)


def _counter_cells(events: int, old_events: int | None, blocked: float,
                   old_blocked: float | None, elapsed: float | None,
                   rates: bool) -> list[RenderableType]:
    """The columns after the events of an emitter's or a subscriber's row: events/s
    (with `rates`), the time the emitter was blocked, and (with `rates`) the share of the
    last interval it was blocked."""
    cells: list[RenderableType] = []
    if rates:
        cells.append(_rate(events, old_events, elapsed))
    cells.append(f"{blocked:.2f} s")
    if rates:
        cells.append(_share(blocked, old_blocked, elapsed))
    return cells


def fill_bar(fill: int, capacity: int) -> Text:
    """`███░░░ 12/256`: block characters, so the bar reads without colour too."""
    share = min(1.0, fill / capacity) if capacity > 0 else 0.0
    filled = round(share * FILL_BAR_WIDTH)
    if fill and not filled:
        filled = 1  # a ring with anything in it never looks empty
    if fill < capacity:
        filled = min(filled, FILL_BAR_WIDTH - 1)  # nor does one with room look full
    bar = Text()
    bar.append("█" * filled, style=_fill_style(fill, capacity))
    bar.append("░" * (FILL_BAR_WIDTH - filled), style="dim")
    bar.append(f" {fill:,}/{capacity:,}")
    return bar


def _fill_style(fill: int, capacity: int) -> str:
    share = fill / capacity if capacity > 0 else 0.0
    return "red" if share >= 1.0 else "yellow" if share >= 0.5 else "green"


SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: int) -> str:
    """`4 MiB`, `1.5 KiB`, `512 B`: binary units, as the README writes sizes."""
    size = float(count)
    for unit in SIZE_UNITS:
        if size < 1024 or unit == SIZE_UNITS[-1]:
            break
        size /= 1024
    return f"{size:.1f}".removesuffix(".0") + f" {unit}"


def _emitter_state(bus: shmbus.BusStats) -> Text:
    if bus.closed:
        return Text("emitter (closed)", style="yellow")
    if not bus.emitter_alive:
        return Text("emitter (dead)", style="red")
    return Text("emitter")


def _pid(pid: int | None) -> str:
    return str(pid) if pid is not None else "?"


def _rate(now: int, before: int | None, elapsed: float | None) -> str:
    if before is None or not elapsed:
        return "–"
    return f"{max(0, now - before) / elapsed:,.0f}"


def _share(now: float, before: float | None, elapsed: float | None) -> str:
    if before is None or not elapsed:
        return "–"
    return f"{min(1.0, max(0.0, now - before) / elapsed):.0%}"


def _culprit(bus: shmbus.BusStats, previous: list[shmbus.BusStats],
             elapsed: float | None) -> Text | None:
    """A line naming the subscriber that holds the emitter of `bus` back, if one does."""
    old = next((b for b in previous if b.token == bus.token), None)
    before = {s.id: s for s in old.subscribers} if old is not None else {}
    # A durable subscription without an owner holds the emitter back too, until it expires.
    full = [s for s in bus.subscribers if (s.alive or s.kind == "durable")
            and s.capacity and s.fill >= s.capacity]
    if full:
        return Text(_full_ring_verdict(bus.name, full, before, elapsed), style="bold red")
    if not before or not elapsed:
        return None
    waits = {s.id: s.blocked_seconds - before[s.id].blocked_seconds
             for s in bus.subscribers if s.id in before}
    total = sum(w for w in waits.values() if w > 0)
    if total <= 0.01 * elapsed:
        return None
    worst = max(waits, key=lambda sub_id: waits[sub_id])
    pid = next(_pid(s.pid) for s in bus.subscribers if s.id == worst)
    return Text(
        f"{bus.name}: emit spent {min(1.0, total / elapsed):.0%} of the last "
        f"{elapsed:.1f} s waiting, {waits[worst] / total:.0%} of it on sub {worst} "
        f"(pid {pid})",
        style="yellow",
    )


def _full_ring_verdict(bus_name: str, full: list[shmbus.SubscriberStats],
                       before: dict[int, shmbus.SubscriberStats],
                       elapsed: float | None) -> str:
    sub = full[0]
    who = subscriber_label(sub).plain if sub.kind != "subscriber" else f"sub {sub.id}"
    verdict = f"{bus_name}: {who} (pid {_pid(sub.pid)}) has a full ring: emit waits for it"
    old = before.get(sub.id)
    if old is not None and elapsed:
        read = sub.delivered - old.delivered
        verdict += (f", and it read nothing in the last {elapsed:.1f} s" if read <= 0
                    else f", which reads {read / elapsed:,.0f} events/s")
    if len(full) > 1:
        more = len(full) - 1
        verdict += f" (and {more} more {'is' if more == 1 else 'are'} full)"
    return verdict
