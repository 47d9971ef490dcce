"""`shmbus ls` and `shmbus top`: the stats the library reads, as tables and JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmbus
from shmbus.cli._stats import human_bytes
from tests.cli.command import assert_one_error_line, row, run_cli


# -- ls -------------------------------------------------------------------------------


StuckBus = tuple[shmbus.Subscription, shmbus.Subscription]


@pytest.fixture
def stuck_bus() -> Iterator[StuckBus]:
    """Bus 'figs', emitter and two subscribers in this process, stats known exactly.

    `reader` (capacity 8) read 3 of the 4 events; `stuck` (capacity 4) read none, and
    a 5th emit waited 0.3 s for room in its full ring before timing out.
    """
    with contextlib.ExitStack() as stack:
        em = stack.enter_context(shmbus.EventEmitter("figs", capacity=8))
        reader = stack.enter_context(shmbus.subscribe("figs"))
        stuck = stack.enter_context(shmbus.subscribe("figs", capacity=4))
        for seq in range(4):
            em.emit({"seq": seq})
        for _ in range(3):
            reader.recv(timeout=5)
        with pytest.raises(shmbus.Timeout):
            em.emit({"seq": 4}, timeout=0.3)
        yield reader, stuck


@pytest.mark.timeout(60)
def test_ls_on_an_empty_registry_says_there_are_no_buses(registry: Path) -> None:
    plain = run_cli(registry, "ls")
    as_json = run_cli(registry, "ls", "--json")

    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == f"no buses (registry {registry}; core: {shmbus.CORE})"
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"registry": str(registry), "core": shmbus.CORE,
                                          "buses": []}


@pytest.mark.timeout(60)
def test_ls_json_gives_the_real_stats(registry: Path, stuck_bus: StuckBus) -> None:
    reader, stuck = stuck_bus

    result = run_cli(registry, "ls", "--json")

    assert result.returncode == 0, result.stderr
    [bus] = json.loads(result.stdout)["buses"]
    me = os.getpid()
    assert (bus["name"], bus["emitter_pid"], bus["emitter_alive"], bus["closed"]) == (
        "figs", me, True, False)
    assert (bus["capacity"], bus["emitted"]) == (8, 4)
    subs = {s["id"]: s for s in bus["subscribers"]}
    assert set(subs) == {reader.id, stuck.id}
    got = [(subs[s.id]["pid"], subs[s.id]["alive"], subs[s.id]["capacity"],
            subs[s.id]["fill"], subs[s.id]["delivered"]) for s in (reader, stuck)]
    assert got == [(me, True, 8, 1, 3), (me, True, 4, 4, 0)]
    assert subs[reader.id]["blocked_seconds"] == 0
    assert 0.25 < subs[stuck.id]["blocked_seconds"] < 10
    assert bus["blocked_seconds"] == subs[stuck.id]["blocked_seconds"]
    # Nothing moved since: the command read exactly what the library reads here.
    here = shmbus.stats("figs")
    expected = {**dataclasses.asdict(here), "blocked_seconds": here.blocked_seconds}
    assert bus == json.loads(json.dumps(expected))


@pytest.mark.timeout(60)
def test_ls_shows_each_subscriber_with_pid_fill_delivered_and_blocked(
        registry: Path, stuck_bus: StuckBus) -> None:
    reader, stuck = stuck_bus
    blocked = {s.id: s.blocked_seconds for s in shmbus.stats("figs").subscribers}
    me = str(os.getpid())

    result = run_cli(registry, "ls")
    one = run_cli(registry, "ls", "figs")

    assert result.returncode == 0, result.stderr
    assert row(result.stdout, "figs") == ["figs", "emitter", me, "4",
                                          f"{sum(blocked.values()):.2f}", "s"]
    reader_row = row(result.stdout, "sub", str(reader.id))
    assert reader_row[2] == me and reader_row[4:] == ["1/8", "3", "0.00", "s"]
    assert set(reader_row[3]) == {"█", "░"}
    assert row(result.stdout, "sub", str(stuck.id)) == [
        "sub", str(stuck.id), me, "█" * 12, "4/4", "0", f"{blocked[stuck.id]:.2f}", "s"]
    assert f"1 bus, 2 subscribers (registry {registry}; core: {shmbus.CORE})" in result.stdout
    assert one.returncode == 0 and one.stdout == result.stdout


@pytest.mark.timeout(60)
def test_ls_of_a_bus_that_does_not_exist_is_one_error_line(registry: Path) -> None:
    assert_one_error_line(run_cli(registry, "ls", "nope"), "no bus named 'nope'")


# -- top ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_top_once_names_the_subscriber_holding_the_emitter_back(
        registry: Path, stuck_bus: StuckBus) -> None:
    reader, stuck = stuck_bus

    result = run_cli(registry, "top", "--once", "--interval", "0.2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("shmbus top: 1 bus, 2 subscribers") == 1, result.stdout
    stuck_row = row(result.stdout, "sub", str(stuck.id))
    # sub, id, pid, bar, fill, delivered, events/s, blocked, s, blocked now
    assert stuck_row[2:3] + stuck_row[4:7] + stuck_row[9:] == [
        str(os.getpid()), "4/4", "0", "0", "0%"]
    assert re.search(
        rf"figs: sub {stuck.id} \(pid {os.getpid()}\) has a full ring: emit waits for "
        r"it, and it read nothing in the last [0-9.]+ s", result.stdout), result.stdout
    assert f"sub {reader.id} (pid" not in result.stdout


def _emit_until(em: shmbus.EventEmitter, stop: threading.Event) -> None:
    seq = 0
    while not stop.is_set():
        em.emit(seq)
        seq += 1
        time.sleep(0.001)


def _drain(sub: shmbus.Subscription) -> None:
    for _ in sub:  # until the bus closes
        pass


@pytest.mark.timeout(60)
def test_top_iterations_prints_each_refresh_with_the_rates_since_the_last(
        registry: Path) -> None:
    stop = threading.Event()
    with shmbus.EventEmitter("moving") as em, shmbus.subscribe("moving") as sub:
        emitting = threading.Thread(target=_emit_until, args=(em, stop), daemon=True)
        draining = threading.Thread(target=_drain, args=(sub,), daemon=True)
        emitting.start()
        draining.start()
        try:
            result = run_cli(registry, "top", "--iterations", "2", "--interval", "0.3")
        finally:
            stop.set()
            emitting.join(10)
            em.close()
            draining.join(10)

    assert result.returncode == 0, result.stderr
    frames = result.stdout.split("shmbus top: ")[1:]
    assert len(frames) == 2, result.stdout
    for frame in frames:
        emitter_row = row(frame, "moving", "emitter")
        sub_row = row(frame, "sub", str(sub.id))
        emitted_per_s = int(emitter_row[4].replace(",", ""))
        delivered_per_s = int(sub_row[6].replace(",", ""))
        assert emitted_per_s > 50 and delivered_per_s > 50, frame
        assert sub_row[2] == str(os.getpid())


@pytest.mark.timeout(60)
def test_top_on_an_empty_registry_says_so(registry: Path) -> None:
    result = run_cli(registry, "top", "--once", "--interval", "0.05")

    assert result.returncode == 0, result.stderr
    assert "shmbus top: 0 buses, 0 subscribers" in result.stdout
    assert "no buses" in result.stdout


# -- large events' memory ---------------------------------------------------------------


@pytest.fixture
def held_large_event() -> Iterator[shmbus.BusStats]:
    """Bus 'big' with a 1 MiB event that its one subscriber has not read; its stats."""
    with shmbus.EventEmitter("big", large_bytes=32 * 2**20) as em, \
            shmbus.subscribe("big"):
        em.emit(bytes(2**20))
        stats = shmbus.stats("big")
        assert stats.large_bytes_held > 0, stats
        yield stats


@pytest.mark.timeout(60)
def test_ls_and_top_show_what_large_events_hold_against_their_bound(
        registry: Path, held_large_event: shmbus.BusStats) -> None:
    shown = (f"{human_bytes(held_large_event.large_bytes_held)}/"
             f"{human_bytes(held_large_event.large_bytes)}")
    assert shown.endswith("/32 MiB") and not shown.startswith("0 B")

    for command in (["ls"], ["ls", "big"], ["top", "--once", "--interval", "0.1"]):
        result = run_cli(registry, *command)

        assert result.returncode == 0, result.stderr
        assert " ".join(row(result.stdout, "large")[1:]) == shown, result.stdout


@pytest.mark.timeout(60)
def test_ls_json_gives_the_large_events_stats_in_bytes(
        registry: Path, held_large_event: shmbus.BusStats) -> None:
    result = run_cli(registry, "ls", "--json")

    assert result.returncode == 0, result.stderr
    [bus] = json.loads(result.stdout)["buses"]
    assert bus["large_bytes"] == 32 * 2**20
    assert bus["large_bytes_held"] == held_large_event.large_bytes_held > 0


@pytest.mark.parametrize("count, shown", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
    (64 * 2**20, "64 MiB"), (46_137_369, "44 MiB"), (3 * 2**40, "3 TiB"), (2**50, "1024 TiB"),
])
def test_sizes_are_shown_in_binary_units(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


# -- groups, durable subscriptions, history --------------------------------------------


@pytest.mark.timeout(60)
def test_ls_shows_groups_durable_subscriptions_and_the_history(registry: Path) -> None:
    with shmbus.EventEmitter("queues", history=5) as em, \
            em.subscribe(group="workers") as one, em.subscribe(group="workers"), \
            em.subscribe(durable="kept") as kept:
        shmbus.subscribe("queues", durable="orphan", expire_after=300).close()
        for seq in range(7):
            em.emit(seq)
        assert one.recv_many(2, timeout=1) == [0, 1]  # taken, not finished
        assert kept.recv(timeout=1) == 0

        table = run_cli(registry, "ls", "queues")
        as_json = run_cli(registry, "ls", "--json")

    assert table.returncode == 0, table.stderr
    assert row(table.stdout, "history")[:2] == ["history", "5/5"]
    me = str(os.getpid())
    workers = row(table.stdout, "group", "workers")
    assert workers[:5] == ["group", "workers", "(2", "members)", me]
    assert row(table.stdout, "durable", "kept")[:3] == ["durable", "kept", me]
    orphan = row(table.stdout, "durable", "orphan")
    assert orphan[:4] == ["durable", "orphan", "(expires", "in"]
    assert 290 <= int(orphan[4]) <= 300 and orphan[5:7] == ["s)", "?"]
    [bus] = json.loads(as_json.stdout)["buses"]
    assert (bus["history"], bus["history_held"]) == (5, 5)
    subs = {s["queue"]: s for s in bus["subscribers"]}
    assert subs["workers"]["kind"] == "group" and subs["workers"]["in_flight"] == 2
    assert subs["workers"]["member_pids"] == [os.getpid()] * 2
    assert subs["kept"]["alive"] and subs["kept"]["expires_in"] is None
    assert not subs["orphan"]["alive"] and subs["orphan"]["member_pids"] == []
    assert 290 <= subs["orphan"]["expires_in"] <= 300


@pytest.mark.timeout(60)
def test_top_names_an_ownerless_durable_subscription_that_holds_the_emitter_back(
        registry: Path) -> None:
    with shmbus.EventEmitter("held", capacity=4) as em:
        shmbus.subscribe("held", durable="gone").close()
        for seq in range(4):
            em.emit(seq)
        result = run_cli(registry, "top", "--once", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert re.search(r"held: durable gone \(expires in \d+ s\) \(pid \?\) has a "
                     r"full ring: emit waits for it", result.stdout), result.stdout
