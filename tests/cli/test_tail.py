"""`shmbus tail`: every event printed in order, and every way the stream can end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import shmbus
from tests.cli.command import (
    RUN_TIMEOUT,
    assert_one_error_line,
    assert_registry_empty,
    cli_env,
    cli_process,
    run_cli,
    wait_for_subscribers,
)


@pytest.mark.timeout(60)
def test_tail_prints_every_event_in_order_and_exits_0_when_the_bus_closes(
        registry: Path) -> None:
    events: list[object] = ["plain text", (1, "two"), None, {"nested": [1.5, True]},
                            "\x1b[2Jcleared?", "two\nlines"]
    events += [{"seq": seq} for seq in range(300)]
    with shmbus.EventEmitter("news") as em, cli_process(registry, "tail", "news") as proc:
        wait_for_subscribers(em, 1, proc)
        for event in events:
            em.emit(event)
        em.close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)

    assert proc.returncode == 0, err
    assert out.splitlines() == ["plain text"] + [repr(e) for e in events[1:]]
    assert err.strip() == "shmbus: bus 'news' closed after 306 events"
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_tail_json_prints_one_json_line_per_event_and_a_repr_when_it_must(
        registry: Path) -> None:
    events = [{"seq": 1, "name": "über"}, [1, 2], "text", None, {1, 2}, float("nan"),
              {(1, 2): "tuple key"}]
    expected = [{"seq": 1, "name": "über"}, [1, 2], "text", None, "{1, 2}", "nan",
                "{(1, 2): 'tuple key'}"]
    with shmbus.EventEmitter("news") as em, \
            cli_process(registry, "tail", "news", "--json") as proc:
        wait_for_subscribers(em, 1, proc)
        for event in events:
            em.emit(event)
        em.close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)

    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == expected


@pytest.mark.timeout(60)
def test_tail_count_stops_after_n_events_and_leaves_the_bus(registry: Path) -> None:
    with shmbus.EventEmitter("news") as em, \
            cli_process(registry, "tail", "news", "-n", "2") as proc:
        wait_for_subscribers(em, 1, proc)
        for seq in range(5):
            em.emit(seq)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 0, err
    assert out.splitlines() == ["0", "1"]
    assert err == ""
    assert left == ()  # it closed its subscription: nothing for the emitter to reap


@pytest.mark.timeout(60)
def test_tail_says_when_the_emitter_died_and_exits_1(registry: Path) -> None:
    doomed = (
        "import os, signal, time, shmbus\n"
        "em = shmbus.EventEmitter('doomed')\n"
        "print('ready', flush=True)\n"
        "while em.subscriber_count < 1: time.sleep(0.01)\n"
        "for seq in range(3): em.emit(seq)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    emitter = subprocess.Popen([sys.executable, "-c", doomed], env=cli_env(registry),
                               stdout=subprocess.PIPE, encoding="utf-8")
    try:
        assert emitter.stdout is not None and emitter.stdout.readline() == "ready\n"
        result = run_cli(registry, "tail", "doomed")
        emitter.wait(RUN_TIMEOUT)
    finally:
        if emitter.poll() is None:
            emitter.kill()
        emitter.communicate()
        shmbus.cleanup()  # what the killed emitter left

    assert emitter.returncode == -signal.SIGKILL
    assert result.stdout.splitlines() == ["0", "1", "2"]
    assert_one_error_line(result, "the emitter of bus 'doomed' died after 3 events")


@pytest.mark.timeout(60)
def test_tail_ctrl_c_exits_130_quietly_and_unsubscribes(registry: Path) -> None:
    with shmbus.EventEmitter("news") as em, cli_process(registry, "tail", "news") as proc:
        wait_for_subscribers(em, 1, proc)
        em.emit("one")
        assert proc.stdout is not None and proc.stdout.readline() == "one\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 130
    assert err == ""
    assert left == ()


@pytest.mark.timeout(60)
def test_tail_into_a_closed_pipe_exits_quietly_and_unsubscribes(registry: Path) -> None:
    with shmbus.EventEmitter("news") as em, cli_process(registry, "tail", "news") as proc:
        wait_for_subscribers(em, 1, proc)
        em.emit("one")
        assert proc.stdout is not None and proc.stdout.readline() == "one\n"
        proc.stdout.close()  # what `shmbus tail news | head -n 1` does next
        for seq in range(3):
            em.emit(seq)
        proc.wait(RUN_TIMEOUT)
        assert proc.stderr is not None
        err = proc.stderr.read()
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 141, err
    assert err == ""
    assert left == ()


@pytest.mark.timeout(60)
def test_tail_of_a_bus_that_does_not_exist_is_one_error_line(registry: Path) -> None:
    result = run_cli(registry, "tail", "nope")

    assert_one_error_line(result, "no bus named 'nope'")
    assert result.stdout == ""


@pytest.mark.timeout(60)
def test_tail_history_prints_the_kept_events_first_then_the_stream(registry: Path) -> None:
    with shmbus.EventEmitter("news", history=3) as em:
        for seq in range(10):
            em.emit(seq)
        with cli_process(registry, "tail", "news", "--history") as proc:
            wait_for_subscribers(em, 1, proc)
            em.emit(10)
            em.close()
            out, err = proc.communicate(timeout=RUN_TIMEOUT)

    assert proc.returncode == 0, err
    assert out.splitlines() == ["7", "8", "9", "10"]
    assert err.strip() == "shmbus: bus 'news' closed after 4 events"


@pytest.mark.timeout(60)
def test_tail_history_on_a_bus_without_one_is_one_error_line(registry: Path) -> None:
    with shmbus.EventEmitter("news"):
        assert_one_error_line(run_cli(registry, "tail", "news", "--history"),
                              "bus 'news' keeps no history for late joiners")
