"""The `shmbus` command, run the way a user runs it: `python -m shmbus ...` in a subprocess.

Every test has its own registry (the suite's SHMBUS_DIR, which the commands inherit), so
these tests neither see nor disturb buses of other tests or of the user; a bus the test
process creates is the bus the command sees, and each test can check that the command
left nothing behind in its registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmbus
from tests.nats_server import NatsServer, free_port

RUN_TIMEOUT = 50
REPO_ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _env(registry: Path) -> dict[str, str]:
    # COLUMNS: a summary line that rich wrapped would no longer match as one string.
    env = {**os.environ, "SHMBUS_DIR": str(registry), "COLUMNS": "200"}
    for forcing in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(forcing, None)  # plain text, as any pipe gets
    return env


def run_cli(registry: Path, *args: str, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmbus", *args], cwd=cwd,
        env=_env(registry), capture_output=True, encoding="utf-8", timeout=RUN_TIMEOUT,
    )


@contextlib.contextmanager
def cli_process(registry: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`shmbus ARGS` running in the background; killed (and swept up after) if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", *args], env=_env(registry),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            shmbus.cleanup()  # its subscription, so the leak check blames this test only


@pytest.fixture
def registry(registry_dir: str) -> Path:
    return Path(registry_dir)


def assert_registry_empty(registry: Path) -> None:
    """Nothing the command created is still registered (so nothing is left in /dev/shm)."""
    for sub in ("buses", "names"):
        directory = registry / sub
        assert not directory.exists() or os.listdir(directory) == [], os.listdir(directory)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def assert_one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("shmbus: error: "), result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr, result.stderr
    assert_no_traceback(result)


def wait_for_subscribers(em: shmbus.EventEmitter, count: int,
                         proc: subprocess.Popen[str]) -> None:
    """Return once `count` processes subscribed to `em`; fail if `proc` exits first."""
    deadline = time.monotonic() + 20
    while em.subscriber_count < count:
        if proc.poll() is not None:
            pytest.fail(f"the command exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {em.subscriber_count} of {count} subscribers after 20 s")
        time.sleep(0.02)


def row(output: str, *first_words: str) -> list[str]:
    """The words of the one table line whose words begin with `first_words`."""
    rows = [line.split() for line in output.splitlines()
            if line.split()[:len(first_words)] == list(first_words)]
    assert len(rows) == 1, (first_words, output)
    return rows[0]


@pytest.mark.timeout(60)
def test_demo_delivers_every_event_in_order_to_every_subscriber(registry: Path) -> None:
    result = run_cli(registry, "demo", "--subscribers", "2", "--events", "300")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("received 300 of 300, in order") == 2, result.stdout
    assert "events/s" in result.stdout
    assert_no_traceback(result)
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_demo_works_with_spawned_workers(registry: Path) -> None:
    result = run_cli(registry, "demo", "--subscribers", "2", "--events", "200",
                     "--start-method", "spawn")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("received 200 of 200, in order") == 2, result.stdout
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_gc_on_a_clean_registry_has_nothing_to_remove(registry: Path) -> None:
    result = run_cli(registry, "gc")

    assert result.returncode == 0, result.stderr
    assert "nothing to remove" in result.stdout


@pytest.mark.timeout(60)
def test_gc_removes_what_a_killed_process_left(registry: Path) -> None:
    crash = (
        "import os, signal, shmbus\n"
        "em = shmbus.EventEmitter('leaky')\n"
        "sub = shmbus.subscribe('leaky')\n"
        "em.emit({'seq': 0})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    crashed = subprocess.run([sys.executable, "-c", crash], env=_env(registry),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert os.listdir(registry / "buses"), "the killed process should have left its bus"

    result = run_cli(registry, "gc")

    assert result.returncode == 0, result.stderr
    assert "removed 1 bus, 1 subscriber and 1 stale name" in result.stdout, result.stdout
    assert "leaky" in result.stdout
    assert_registry_empty(registry)
    assert "nothing to remove" in run_cli(registry, "gc").stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["demo", "--bogus"],
    ["demo", "--subscribers", "many"],
    ["gc", "--events", "3"],
    ["ls", "--bogus"],
    ["tail"],
    ["tail", "news", "-n", "many"],
    ["top", "--once", "--iterations", "2"],
    ["top", "--interval", "soon"],
    ["bench", "--runs", "three"],
    ["bridge", "news"],
])
def test_usage_errors_exit_nonzero_without_traceback(registry: Path, args: list[str]) -> None:
    result = run_cli(registry, *args)

    assert result.returncode != 0
    assert "usage:" in result.stderr
    assert_no_traceback(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["demo", "--subscribers", "0"], "--subscribers must be between"),
    (["demo", "--events", "-5"], "--events must be 0 or more"),
    (["demo", "--slow-ms", "-1"], "--slow-ms must be"),
    (["demo", "--capacity", "0"], "capacity must be between"),
    (["tail", "news", "-n", "0"], "--count must be 1 or more"),
    (["tail", "../news"], "invalid bus name '../news'"),
    (["top", "--interval", "0"], "--interval must be a number of seconds above 0"),
    (["top", "--iterations", "0"], "--iterations must be 1 or more"),
    (["bench", "--runs", "0"], "--runs must be 1 or more"),
])
def test_bad_values_print_one_error_line_and_exit_1(registry: Path, args: list[str],
                                                     message: str) -> None:
    result = run_cli(registry, *args)

    assert_one_error_line(result, message)
    assert_registry_empty(registry)


def _session_members(session: int) -> list[str]:
    """Live (non-zombie) processes of a session; zombies are dead already."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            members.append(entry)
    return members


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to list processes")
def test_ctrl_c_exits_130_quietly_and_leaves_nothing_behind(registry: Path) -> None:
    # Its own session, so that SIGINT to the group is what a terminal's Ctrl-C does and
    # every worker can be found afterwards by its session id.
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmbus", "demo", "--subscribers", "2", "--events", "1000000",
         "--slow-ms", "5"],
        env=_env(registry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        _wait_for_subscribers(registry, 2, proc)
        time.sleep(0.5)  # well into emitting, blocked on the slow subscriber
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 5
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_members(proc.pid) == []
    assert_registry_empty(registry)


def _wait_for_subscribers(registry: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        buses = registry / "buses"
        for bus in (os.listdir(buses) if buses.exists() else []):
            subs = [e for e in os.listdir(buses / bus) if e.startswith("sub.")
                    and not e.endswith(".tmp")]
            if len(subs) >= count:
                return
        time.sleep(0.05)
    pytest.fail("the demo's workers never subscribed")


# -- ls -------------------------------------------------------------------------------


StuckBus = tuple[shmbus.Subscription, shmbus.Subscription]


@pytest.fixture
def stuck_bus() -> Iterator[StuckBus]:
    """Bus 'figs', emitter and two subscribers in this process, figures known exactly.

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
    assert plain.stdout.strip() == f"no buses (registry {registry})"
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"registry": str(registry), "buses": []}


@pytest.mark.timeout(60)
def test_ls_json_gives_the_real_figures(registry: Path, stuck_bus: StuckBus) -> None:
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
    assert f"1 bus, 2 subscribers (registry {registry})" in result.stdout
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


# -- tail -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_tail_prints_every_event_in_order_and_exits_0_when_the_bus_closes(
        registry: Path) -> None:
    events: list[object] = ["plain text", (1, "two"), None, {"nested": [1.5, True]}]
    events += [{"seq": seq} for seq in range(300)]
    with shmbus.EventEmitter("news") as em, cli_process(registry, "tail", "news") as proc:
        wait_for_subscribers(em, 1, proc)
        for event in events:
            em.emit(event)
        em.close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)

    assert proc.returncode == 0, err
    assert out.splitlines() == ["plain text"] + [repr(e) for e in events[1:]]
    assert err.strip() == "shmbus: bus 'news' closed after 304 events"
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
    emitter = subprocess.Popen([sys.executable, "-c", doomed], env=_env(registry),
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


# -- a registry you may not use ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["ls"], ["tail", "news"], ["top", "--once"], ["gc"]])
def test_a_registry_of_another_user_is_refused_in_one_line(tmp_path: Path,
                                                           command: list[str]) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, NOBODY, NOBODY)
        owner = NOBODY
    else:
        theirs, owner = Path("/"), 0  # root's, and not ours

    result = run_cli(theirs, *command)

    assert_one_error_line(result, f"registry directory {theirs} belongs to uid {owner}")
    assert "SHMBUS_DIR" in result.stderr


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@pytest.mark.timeout(60)
def test_a_registry_you_cannot_create_is_a_permission_error_in_one_line(
        tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    registry = locked / "registry"
    argv = [sys.executable, "-m", "shmbus", "ls"]
    if os.geteuid() == 0:
        # Root may write anywhere; nobody may not even enter the test's private tmp_path.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot run as another user")
        probe = subprocess.run(_as_nobody([sys.executable, "-c", "import shmbus"]),
                               cwd="/", capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot import shmbus here: {probe.stderr[-300:]}")
        argv = _as_nobody(argv)
    else:
        locked.chmod(0o500)
    try:
        result = subprocess.run(argv, cwd="/", env=_env(registry), capture_output=True,
                                encoding="utf-8", timeout=RUN_TIMEOUT)
    finally:
        locked.chmod(0o700)

    assert_one_error_line(result, "Permission denied")
    assert f"{registry}" in result.stderr and "SHMBUS_DIR" in result.stderr
    assert not registry.exists()


# -- bench ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bench_outside_a_source_checkout_says_it_needs_one(tmp_path: Path,
                                                          registry: Path) -> None:
    # An installed copy of the package: nothing next to it but itself.
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "shmbus", site / "shmbus",
                    ignore=shutil.ignore_patterns("__pycache__"))

    result = run_cli(registry, "bench", "--quick", cwd=site)

    assert_one_error_line(result, "shmbus bench needs a source checkout")
    assert str(site / "benchmarks" / "run.py") in result.stderr


BENCH_SMOKE = ["bench", "--quick", "--systems", "shmbus", "--workloads", "small",
               "--subscribers", "1", "--no-latency", "--no-growth"]


@pytest.mark.timeout(60)
def test_bench_runs_the_checkouts_suite_with_a_progress_bar(tmp_path: Path,
                                                            registry: Path) -> None:
    saved = tmp_path / "results.json"

    result = run_cli(registry, *BENCH_SMOKE, "--json", str(saved), cwd=REPO_ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done" in result.stdout and "1/1" in result.stdout  # the bar, finished
    assert "Throughput, small" in result.stdout
    [throughput] = json.loads(saved.read_text())["throughput"]
    assert (throughput["system"], throughput["subscribers"]) == ("shmbus", 1)
    assert throughput["events_per_s"]["median"] > 0
    assert_registry_empty(registry)


@pytest.mark.timeout(60)
def test_bench_with_an_unknown_system_is_one_error_line(registry: Path) -> None:
    result = run_cli(registry, "bench", "--systems", "carrier-pigeon", cwd=REPO_ROOT)

    assert_one_error_line(result, "unknown system(s) ['carrier-pigeon']")


# -- bridge ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bridge_publishes_the_bus_to_nats_and_sums_up_when_the_bus_closes(
        registry: Path, nats_server: NatsServer) -> None:
    with shmbus.EventEmitter("news") as em, \
            cli_process(registry, "bridge", "news", "--nats", nats_server.url) as proc:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready == (f"bridging bus 'news' to {nats_server.url} (stream SHMBUS_news); "
                         "Ctrl-C to stop\n"), proc.communicate()
        with shmbus.subscribe(f"{nats_server.url}/news") as remote:
            for seq in range(5):
                em.emit({"seq": seq})
            em.close()
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            received = [remote.recv(timeout=10) for _ in range(5)]
            with pytest.raises(shmbus.Closed):
                remote.recv(timeout=10)

    assert proc.returncode == 0, err
    assert out == (f"bus 'news' ended: published 5 events to {nats_server.url} "
                   "(stream SHMBUS_news)\n")
    assert received == [{"seq": seq} for seq in range(5)]


@pytest.mark.timeout(60)
def test_bridge_ctrl_c_exits_130_quietly_and_unsubscribes(
        registry: Path, nats_server: NatsServer) -> None:
    with shmbus.EventEmitter("news") as em, cli_process(
            registry, "bridge", "news", "--nats", nats_server.url, "--stream", "NEWS") as proc:
        assert proc.stdout is not None
        assert "(stream NEWS)" in proc.stdout.readline()
        em.emit("one")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        left = shmbus.stats("news").subscribers

    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert err.startswith("shmbus: stopped: published ")
    assert left == ()


@pytest.mark.timeout(60)
def test_bridge_to_an_unreachable_server_is_one_error_line(registry: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    with shmbus.EventEmitter("news"):
        result = run_cli(registry, "bridge", "news", "--nats", url)

    assert_one_error_line(result, f"no NATS server answers at {url}")
    assert result.stdout == ""
