"""Shared-memory segments: running out of room, and the names they get.

Out of room: each scenario runs a child Python in a mount namespace of its own, with a
private 1 MiB tmpfs on /dev/shm (`unshare -m` as root, else `unshare --map-root-user -m`
in an unprivileged user namespace; the tests skip when neither is permitted). The child
prints what it saw as JSON: the error of each failure, `os.listdir('/dev/shm')` before
and after it, and the registry. A failure must be a clear `OutOfSharedMemory`, leave
nothing half-created, and leave the bus working; once everything is closed the private
/dev/shm is empty and all its space free.

Names: every object is named from the 8-hex-digit token and a number, so the longest
names (largest subscriber id and large-event index) must still fit macOS's limit.

The macOS rules mode (`SHMBUS_PLATFORM=macos-rules`): a child tries each thing macOS
refuses, in the mode and on plain Linux; each must fail in the mode (the stand-in bites)
and, but for a mapping of no bytes, succeed on Linux (it is the mode that refuses it).
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

import shmbus
from shmbus import _control, _names, _platform, _registry, _ring
from tests import helpers

SHM_SIZE = "1m"


# -- leak check ------------------------------------------------------------------------


# -- a private, small /dev/shm ---------------------------------------------------------


@pytest.fixture
def small_shm(private_shm):
    def run(scenario: str) -> dict[str, Any]:
        seen = private_shm(SHM_SIZE, CHILD_SCRIPT, scenario)
        assert seen["initial"] == [], f"the private /dev/shm was not empty: {seen['initial']}"
        return seen
    return run


CHILD_SCRIPT = r'''
import json, os, sys
import shmbus

scenario = sys.argv[1]
root = os.environ["SHMBUS_DIR"]
seen = {"initial": sorted(os.listdir("/dev/shm"))}

def shm():
    return sorted(os.listdir("/dev/shm"))

def registry(*parts):
    try:
        return sorted(os.listdir(os.path.join(root, *parts)))
    except FileNotFoundError:
        return None

def attempt(fn):
    try:
        value = fn()
    except BaseException as exc:
        return {"ok": False,
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "bases": [c.__name__ for c in type(exc).__mro__],
                "msg": str(exc)}
    return {"ok": True, "value": repr(value)[:200]}

def fill(leave_pages):
    """Take all of /dev/shm but `leave_pages` pages, with a file of our own."""
    st = os.statvfs("/dev/shm")
    fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, (st.f_bavail - leave_pages) * st.f_frsize)
    finally:
        os.close(fd)

def round_trip(em, capacity=8):
    sub = shmbus.subscribe(em.name, capacity=capacity)
    try:
        em.emit({"round": "trip"}, timeout=5)
        return sub.recv(timeout=5)
    finally:
        sub.close()

def finish():
    st = os.statvfs("/dev/shm")
    seen["final"] = shm()
    seen["final_free_blocks"] = [st.f_bfree, st.f_blocks]
    seen["final_registry"] = [registry("buses"), registry("names")]

if scenario == "ring_and_large_event":
    em = shmbus.EventEmitter("oom")
    small = em.subscribe(capacity=4)
    seen["token"] = em._token

    seen["before_sub"] = shm()
    seen["big_sub"] = attempt(lambda: shmbus.subscribe("oom", capacity=10000))
    seen["after_sub"] = shm()
    seen["bus_records_after_sub"] = registry("buses", em._token)

    seen["before_emit"] = shm()
    seen["big_emit"] = attempt(lambda: em.emit(b"x" * (4 << 20), timeout=10))
    seen["after_emit"] = shm()

    em.emit({"after": "failure"}, timeout=5)
    em.emit(b"y" * 100_000, timeout=5)  # a large event that fits still works
    first, second = small.recv(timeout=5), small.recv(timeout=5)
    seen["received"] = [first, len(second), second == b"y" * 100_000]
    # Larger than the room left, with nothing in flight to wait for.
    seen["big_emit_later"] = attempt(lambda: em.emit(b"z" * (3 << 19), timeout=3))
    seen["round_trip"] = round_trip(em)
    small.close()
    em.close()
    finish()

elif scenario == "full_at_bus_creation":
    fill(0)
    seen["create"] = attempt(lambda: shmbus.EventEmitter("full"))
    seen["after_create"] = shm()
    seen["registry_after_create"] = [registry("buses"), registry("names")]
    os.unlink("/dev/shm/filler")
    with shmbus.EventEmitter("full") as em:
        seen["round_trip"] = round_trip(em)
    finish()

elif scenario == "no_room_for_semaphores":
    em = shmbus.EventEmitter("semfull")
    seen["token"] = em._token
    fill(1)  # room for a one-page ring, none for its semaphores
    seen["before_sub"] = shm()
    seen["sub"] = attempt(lambda: shmbus.subscribe("semfull", capacity=1))
    seen["after_sub"] = shm()
    seen["bus_records_after_sub"] = registry("buses", em._token)
    os.unlink("/dev/shm/filler")
    seen["round_trip"] = round_trip(em, capacity=1)
    em.close()
    finish()

print(json.dumps(seen))
'''


def _needs(message: str) -> int:
    found = re.search(r"needs (\d+) bytes", message)
    assert found, f"the message does not say how many bytes were needed: {message!r}"
    return int(found.group(1))


def assert_out_of_shared_memory(result: dict[str, Any]) -> int:
    """A clear OutOfSharedMemory; the number of bytes it says were needed."""
    assert not result["ok"], f"expected OutOfSharedMemory, it succeeded: {result}"
    assert result["type"] == "shmbus._errors.OutOfSharedMemory", result
    assert {"ShmBusError", "MemoryError"} <= set(result["bases"]), result
    msg = result["msg"]
    assert "/dev/shm" in msg and "--shm-size" in msg, f"unhelpful message: {msg!r}"
    return _needs(msg)


def assert_all_gone(seen: dict[str, Any]) -> None:
    assert seen["final"] == [], f"objects left in the private /dev/shm: {seen['final']}"
    free, total = seen["final_free_blocks"]
    assert free == total, f"/dev/shm space still held after closing: {free}/{total} free"
    assert seen["final_registry"] == [[], []], seen["final_registry"]


# -- out of shared memory ---------------------------------------------------------------


reserves_memory = pytest.mark.skipif(
    not _platform.PLATFORM.reserves_memory,
    reason=f"{_platform.PLATFORM.name} has no posix_fallocate: a full shared memory shows "
           "only when a page is touched")


@reserves_memory
@pytest.mark.timeout(60)
def test_ring_or_large_event_that_does_not_fit_is_a_clear_error_and_harmless(
        small_shm) -> None:
    seen = small_shm("ring_and_large_event")
    token = seen["token"]
    assert sorted(seen["before_sub"]) == sorted(
        [f"sb_{token}", f"sb_{token}_r0", f"sem.sb_{token}_r0d", f"sem.sb_{token}_r0s"])

    # A 10000-slot ring (~5 MB) in a 1 MiB /dev/shm.
    ring_bytes = _ring.HEADER_SIZE + 10000 * _ring.SLOT_SIZE
    assert assert_out_of_shared_memory(seen["big_sub"]) == ring_bytes
    assert "_r1 needs" in seen["big_sub"]["msg"], seen["big_sub"]["msg"]
    assert seen["after_sub"] == seen["before_sub"], "the failed subscribe left objects"
    assert seen["bus_records_after_sub"] == ["emitter", "sub.0"], (
        f"the failed subscribe left a registry record: {seen['bus_records_after_sub']}")

    # A 4 MiB event to a small subscription.
    assert assert_out_of_shared_memory(seen["big_emit"]) >= 4 << 20
    assert seen["after_emit"] == seen["before_emit"], "the failed emit left objects"

    # The bus goes on: the failed event was never delivered, the next ones are, and a
    # new subscription works.
    assert seen["received"] == [{"after": "failure"}, 100_000, True]
    assert assert_out_of_shared_memory(seen["big_emit_later"]) >= 3 << 19
    assert seen["round_trip"] == {"round": "trip"}
    assert_all_gone(seen)


@reserves_memory
@pytest.mark.timeout(60)
def test_full_dev_shm_at_bus_creation_is_a_clear_error_and_harmless(small_shm) -> None:
    seen = small_shm("full_at_bus_creation")
    assert assert_out_of_shared_memory(seen["create"]) == _control.SIZE
    assert seen["after_create"] == ["filler"], "the failed EventEmitter left objects"
    assert seen["registry_after_create"] == [[], []], (
        f"the failed EventEmitter left registry entries: {seen['registry_after_create']}")
    assert seen["round_trip"] == {"round": "trip"}
    assert_all_gone(seen)


@pytest.mark.timeout(60)
def test_no_room_for_ring_semaphores_leaves_nothing_half_created(small_shm) -> None:
    """On Linux a named semaphore is a file in /dev/shm too (one page of tmpfs)."""
    seen = small_shm("no_room_for_semaphores")
    token = seen["token"]
    assert not seen["sub"]["ok"], f"subscribe fitted after all: {seen['sub']}"
    assert seen["after_sub"] == seen["before_sub"] == ["filler", f"sb_{token}"], (
        f"the failed subscribe left objects: {seen['after_sub']}")
    assert seen["bus_records_after_sub"] == ["emitter"], seen["bus_records_after_sub"]
    assert seen["round_trip"] == {"round": "trip"}
    assert_all_gone(seen)


@pytest.mark.timeout(60)
def test_no_room_for_ring_semaphores_is_out_of_shared_memory(small_shm) -> None:
    seen = small_shm("no_room_for_semaphores")
    assert_out_of_shared_memory(seen["sub"])


# -- the ledger -------------------------------------------------------------------------


def _another_program(registry: str, ready, stop) -> None:
    """A bus of someone else's, in a registry of its own and with no ledger, that keeps
    creating objects (subscribers joining) while the test runs."""
    os.environ.pop(_platform.LEDGER_ENV, None)
    os.environ["SHMBUS_DIR"] = registry
    with shmbus.EventEmitter("theirs") as em:
        subs = [em.subscribe()]
        ready.put(helpers.token_of(em))
        while not stop.is_set():
            subs.append(em.subscribe())  # new objects, mid-test
            em.emit("still theirs", timeout=5)
            time.sleep(0.01)
        for sub in subs:
            assert sub.recv(timeout=5) == "still theirs"
            sub.close()


def test_the_ledger_names_only_what_this_test_created(procs, tmp_path) -> None:
    ledger = os.environ[_platform.LEDGER_ENV]
    ready, stop = helpers.context().Queue(), helpers.context().Event()
    other = procs(_another_program, str(tmp_path / "their-registry"), ready, stop)
    their_token = ready.get(timeout=10)
    with shmbus.EventEmitter("ours") as em:
        our_token = helpers.token_of(em)
        with em.subscribe() as sub:
            em.emit(b"x" * 100_000, timeout=5)  # a large-event segment too
            assert sub.recv(timeout=5) == b"x" * 100_000
            recorded = _platform.ledger_leftovers(ledger)
            assert recorded and all(our_token in name for _, name in recorded)
    time.sleep(0.1)  # the other program keeps creating objects meanwhile
    assert _platform.ledger_leftovers(ledger) == []  # what a leak check would remove
    assert len(helpers.objects_of(their_token)) > 4  # theirs: never named, untouched
    stop.set()
    other.join(10)
    assert other.exitcode == 0, "the other program's bus was disturbed"


def test_the_ledger_finds_what_was_left_behind() -> None:
    ledger = os.environ[_platform.LEDGER_ENV]
    em = shmbus.EventEmitter("left")
    sub = em.subscribe()
    token = helpers.token_of(em)
    names = {name for _, name in _platform.ledger_leftovers(ledger)}
    assert names == {_names.control_name(token), _names.ring_name(token, sub.id),
                     _names.data_sem_name(token, sub.id), _names.space_sem_name(token, sub.id)}
    sub.close()
    em.close()
    assert _platform.ledger_leftovers(ledger) == []


# -- file descriptors -----------------------------------------------------------------

LOW_LIMIT = 64


def _emit_under_a_low_file_limit(subscribers: int, count: int, out) -> None:
    import resource

    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (LOW_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with shmbus.EventEmitter("lowlimit") as em:
        out.put(("ready", open_now))
        helpers.wait_until(lambda: em.subscriber_count == subscribers, timeout=30)
        for i in range(count):
            em.emit({"i": i, "pad": b"x" * (i % 3) * 1000}, timeout=30)  # some large
        out.put(("sent", len(os.listdir("/proc/self/fd"))))


def _many_subscriptions(name: str, how_many: int, count: int, out) -> None:
    helpers.wait_until(lambda: _registry.Registry().resolve(name), timeout=10)
    subs = [shmbus.subscribe(name) for _ in range(how_many)]
    got = [[sub.recv(timeout=30) for _ in range(count)] for sub in subs]
    for sub in subs:
        sub.close()
    out.put(("received", got))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@pytest.mark.timeout(120)
def test_an_emitter_at_a_low_file_limit_serves_more_subscribers_than_the_limit(procs):
    out = helpers.context("spawn").Queue()
    count, groups, per_group = 50, 4, 20
    # Spawned: a fork would inherit whatever this test process has open.
    procs(_emit_under_a_low_file_limit, groups * per_group, count, out, ctx="spawn")
    kind, open_at_start = out.get(timeout=30)
    assert kind == "ready" and open_at_start < LOW_LIMIT - 16, open_at_start
    for _ in range(groups):
        procs(_many_subscriptions, "lowlimit", per_group, count, out)
    messages = [out.get(timeout=90) for _ in range(groups + 1)]
    sent = [m for m in messages if m[0] == "sent"]
    received = [m[1] for m in messages if m[0] == "received"]
    assert sent, f"the emitter did not get through: {messages}"
    assert sent[0][1] <= open_at_start + 4  # a descriptor per subscriber: none
    want = [{"i": i, "pad": b"x" * (i % 3) * 1000} for i in range(count)]
    assert len(received) == groups
    assert all(events == want for got in received for events in got)


_AT_THE_LIMIT = r'''
import json, os, resource, sys
import shmbus

seen = {}
with shmbus.EventEmitter("full", large_bytes=1 << 20) as em:
    sub = em.subscribe()
    big = os.urandom(600_000)  # more than half the bound: a segment of its own
    em.emit(big, timeout=10)  # (a bound of their own: a regression fails, not hangs)
    em.emit(big[:300_000][::-1], timeout=10)  # in the arena
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, limit[1]))
    hogs = []
    try:
        while True:
            hogs.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    def attempt(fn):
        try:
            return {"ok": repr(fn())[:60]}
        except Exception as exc:
            return {"type": type(exc).__name__, "shmbus": isinstance(exc, shmbus.ShmBusError),
                    "msg": str(exc)}
    seen["recv"] = attempt(sub.recv)
    seen["subscribe"] = attempt(lambda: shmbus.subscribe("full"))
    seen["emitter"] = attempt(lambda: shmbus.EventEmitter("another"))
    seen["count"] = attempt(lambda: em.subscriber_count)
    seen["emit"] = attempt(lambda: em.emit("small"))  # needs no descriptor, or says so
    for fd in hogs[:4]:
        os.close(fd)
    seen["then"] = [sub.recv(timeout=5) == big, sub.recv(timeout=5) == big[:300_000][::-1]]
    for fd in hogs[4:]:
        os.close(fd)
    sub.close()
print(json.dumps(seen))
'''


def test_running_out_of_descriptors_is_a_clear_error_and_loses_nothing():
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", _AT_THE_LIMIT], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for call in ("recv", "subscribe", "emitter", "count"):
        assert seen[call]["shmbus"], (call, seen[call])
        assert "limit of" in seen[call]["msg"] and "open files" in seen[call]["msg"], seen
    assert "ok" in seen["emit"] or seen["emit"]["shmbus"], seen["emit"]
    assert seen["then"] == [True, True]  # the event that could not be read was not lost


# -- the macOS rules mode ----------------------------------------------------------------
#
# A child Python tries each thing macOS refuses, once with SHMBUS_PLATFORM=macos-rules and
# once without (plain Linux), and prints what happened as JSON. In the mode each must fail
# with PlatformRuleBroken, which proves the stand-in bites; on Linux most succeed, which
# proves it is the mode that refuses them and not Linux. Its objects have names of its
# own and a ledger of their own, checked empty afterwards.

_RULES_PROBE = r'''
import atexit, ctypes, json, os, signal, subprocess, sys
import posix_ipc
from shmbus import _platform, _wait
from shmbus._errors import PlatformRuleBroken

ledger = os.environ[_platform.LEDGER_ENV]

@atexit.register
def remove_what_is_left():  # even after a failure: checked by the same rules that made it
    for kind, name in _platform.ledger_leftovers(ledger):
        _platform.remove(kind, name)

out = {"platform": _platform.PLATFORM.name, "page_size": _platform.page_size(),
       "timed_wait": _platform.TIMED_WAIT, "waiter": _wait.waiter_from_env().name,
       "start_method": _platform.DEFAULT_START_METHOD,
       "needs_fences": _platform.NEEDS_FENCES}
tag = f"/sbt{os.getpid():x}"

def attempt(fn):
    try:
        return {"ok": repr(fn())}
    except BaseException as exc:
        return {"error": type(exc).__name__, "rule": isinstance(exc, PlatformRuleBroken),
                "attribute_error": isinstance(exc, AttributeError), "msg": str(exc)}

def named(length, kind):
    return (tag + kind + "n" * 40)[:length]

def segment_round_trip(name):
    _platform.create_segment(name, 100).close()
    return _platform.unlink_segment(name)

def semaphore_round_trip(name):
    _platform.create_semaphore(name, 0).close()
    return _platform.unlink_semaphore(name)

for length in (30, 31, 32):
    out[f"segment_name_{length}"] = attempt(lambda: segment_round_trip(named(length, "m")))
    out[f"semaphore_name_{length}"] = attempt(
        lambda: semaphore_round_trip(named(length, "s")))

# Sizing: once, in whole pages; mapping: never zero bytes.
segment = tag + "z"
_platform.create_segment(segment, 1000).close()
opened = _platform._shared_memory(segment, 0, 0)
out["size_seen_by_an_opener"] = opened.size
out["second_ftruncate"] = attempt(lambda: _platform._set_size(opened.fd, 5000, segment))
out["zero_length_mapping"] = attempt(lambda: _platform.Mapping(opened.fd, 0))
opened.close_fd()
_platform.unlink_segment(segment)

# Semaphores: no value, no timed wait (a try without waiting is fine).
sem = _platform.create_semaphore(tag + "v", 0)
out["value"] = attempt(lambda: sem.value)
out["has_value"] = hasattr(sem, "value")
out["timed_acquire"] = attempt(lambda: sem.acquire(0.01))
out["try_acquire"] = attempt(lambda: sem.acquire(0))
out["is_a_posix_ipc_semaphore"] = isinstance(sem, posix_ipc.Semaphore)
sem.close()
_platform.unlink_semaphore(tag + "v")

# The package's own code (code compiled under a file name in its directory) may not
# list /dev/shm, open what is there, or look up prctl; other code may.
as_package = os.path.join(os.path.dirname(_platform.__file__), "_rules_probe.py")

def package_runs(source):
    exec(compile("import ctypes, glob, os\n" + source, as_package, "exec"), {})

out["package_lists"] = attempt(lambda: package_runs("os.listdir('/dev/shm')"))
out["package_scans"] = attempt(lambda: package_runs("list(os.scandir('/dev/shm/'))"))
out["package_globs"] = attempt(lambda: package_runs("glob.glob('/dev/shm/sb_*')"))
out["package_opens"] = attempt(lambda: package_runs(f"open('/dev/shm{tag}-none')"))
out["package_prctl"] = attempt(lambda: package_runs("ctypes.CDLL(None).prctl"))
out["others_list"] = attempt(lambda: type(os.listdir("/dev/shm")).__name__)

out["asked_for_parent_death_signal"] = _platform.ask_for_signal_on_parent_death(
    signal.SIGHUP)
got = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(got))  # PR_GET_PDEATHSIG: what the kernel has
out["parent_death_signal_set"] = got.value

out["child_platform"] = subprocess.run(
    [sys.executable, "-c", "from shmbus import _platform; print(_platform.PLATFORM.name)"],
    capture_output=True, text=True, timeout=30).stdout.strip()
out["left_behind"] = _platform.ledger_leftovers(ledger)
print(json.dumps(out))
'''


def _probe(mode: str, ledger: str) -> dict[str, Any]:
    env = {**os.environ, _platform.LEDGER_ENV: ledger, _platform.PLATFORM_ENV: mode}
    env.pop("SHMBUS_WAIT", None)  # the platform's own choice of waiter
    done = subprocess.run([sys.executable, "-c", _RULES_PROBE], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """What the probe saw in the macOS rules mode ("macos") and on plain Linux."""
    directory = tmp_path_factory.mktemp("rules")
    # A ledger each, read by the probe itself: this process may be in the mode, where
    # the long names the Linux probe made cannot even be asked about.
    seen = {"macos": _probe(_platform.MACOS_RULES, str(directory / "macos.ledger")),
            "linux": _probe("", str(directory / "linux.ledger"))}
    for platform, what in seen.items():
        assert what["left_behind"] == [], f"the {platform} probe left objects behind"
    return seen


def refused(result: dict[str, Any]) -> bool:
    return bool(result.get("rule"))


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="compares the mode with plain Linux")

@pytest.mark.timeout(120)
@linux_only
def test_the_switch_is_read_once_and_inherited_by_child_processes(probed) -> None:
    assert probed["macos"]["platform"] == "macos-rules"
    assert probed["macos"]["child_platform"] == "macos-rules"
    assert probed["linux"]["platform"] == probed["linux"]["child_platform"] == "linux"
    assert probed["macos"]["start_method"] == "spawn"
    assert probed["macos"]["needs_fences"] is True  # Apple silicon's memory order


def test_an_unknown_platform_mode_is_refused_at_import() -> None:
    done = subprocess.run([sys.executable, "-c", "import shmbus"], capture_output=True,
                          text=True, timeout=30,
                          env={**os.environ, _platform.PLATFORM_ENV: "windows"})
    assert done.returncode != 0
    assert "SHMBUS_PLATFORM='windows' is not a platform mode" in done.stderr


@pytest.mark.timeout(120)
@linux_only
def test_names_longer_than_macos_takes_fail_in_the_mode(probed) -> None:
    macos, linux = probed["macos"], probed["linux"]
    for kind in ("segment", "semaphore"):
        assert macos[f"{kind}_name_30"] == {"ok": "True"}, macos[f"{kind}_name_30"]
        for length in (31, 32):  # 31: xnu counts the NUL against its 31
            result = macos[f"{kind}_name_{length}"]
            assert refused(result) and f"has {length} characters" in result["msg"], result
            assert linux[f"{kind}_name_{length}"] == {"ok": "True"}  # Linux takes them


@pytest.mark.timeout(120)
@linux_only
def test_a_segment_is_sized_once_in_the_mode(probed) -> None:
    result = probed["macos"]["second_ftruncate"]
    assert refused(result) and "sized already" in result["msg"], result
    assert probed["linux"]["second_ftruncate"] == {"ok": "None"}  # Linux resizes


def test_a_view_only_garbage_holds_does_not_keep_a_mapping_from_closing() -> None:
    """As an interrupted frame's view does, in a cycle with the exception it caught."""
    name = f"/sb_test_cycle{os.getpid()}"
    mapping = _platform.create_segment(name, 4096)
    try:
        cycle: list[object] = [mapping.view[:16]]
        cycle.append(cycle)
        del cycle
        mapping.close()
        assert mapping.closed
        held = _platform.create_segment(name + "b", 4096)
        view = held.view[:16]
        with pytest.raises(BufferError):
            held.close()  # a view in use still refuses
        view.release()
        held.close()
        assert held.closed
    finally:
        for created in (name, name + "b"):
            _platform.unlink_segment(created)


@pytest.mark.timeout(120)
@linux_only
def test_a_mapping_of_no_bytes_fails(probed) -> None:
    for platform in ("macos", "linux"):  # Linux's mmap refuses it too
        result = probed[platform]["zero_length_mapping"]
        assert refused(result) and "cannot map 0 bytes" in result["msg"], result


@pytest.mark.timeout(120)
@linux_only
def test_semaphores_have_no_value_in_the_mode(probed) -> None:
    macos = probed["macos"]
    assert refused(macos["value"]) and macos["value"]["attribute_error"], macos["value"]
    assert macos["has_value"] is False  # hasattr() says so, as on macOS
    assert macos["is_a_posix_ipc_semaphore"] is True  # compiled code takes it as one
    assert probed["linux"]["value"] == {"ok": "0"}


@pytest.mark.timeout(120)
@linux_only
def test_there_is_no_timed_wait_in_the_mode(probed) -> None:
    macos, linux = probed["macos"], probed["linux"]
    timed = macos["timed_acquire"]
    assert refused(timed) and "sem_timedwait" in timed["msg"], timed
    assert macos["try_acquire"]["error"] == linux["try_acquire"]["error"] == "BusyError"
    assert (macos["timed_wait"], macos["waiter"]) == (False, "poll")
    assert linux["timed_acquire"]["error"] == "BusyError"  # it waited, and timed out
    assert (linux["timed_wait"], linux["waiter"]) == (True, "timed")


@pytest.mark.timeout(120)
@linux_only
def test_the_package_cannot_list_shared_memory_in_the_mode(probed) -> None:
    macos, linux = probed["macos"], probed["linux"]
    for attempt in ("package_lists", "package_scans", "package_globs", "package_opens"):
        assert refused(macos[attempt]) and "/dev/shm" in macos[attempt]["msg"], (
            attempt, macos[attempt])
        assert not refused(linux[attempt]), (attempt, linux[attempt])
    assert macos["others_list"] == {"ok": "'list'"}  # tests may look; the package may not
    assert linux["package_lists"] == {"ok": "None"}


@pytest.mark.timeout(120)
@linux_only
def test_pages_are_16_kib_in_the_mode_and_sizes_whole_pages(probed) -> None:
    assert probed["macos"]["page_size"] == 16384
    assert probed["macos"]["size_seen_by_an_opener"] == 16384  # 1000 bytes asked for
    assert probed["linux"]["page_size"] == mmap.PAGESIZE
    assert probed["linux"]["size_seen_by_an_opener"] == 1000


@pytest.mark.timeout(120)
@linux_only
def test_there_is_no_prctl_in_the_mode(probed) -> None:
    macos, linux = probed["macos"], probed["linux"]
    assert refused(macos["package_prctl"]) and "prctl" in macos["package_prctl"]["msg"]
    assert macos["asked_for_parent_death_signal"] is False
    assert macos["parent_death_signal_set"] == 0  # nothing was asked of the kernel
    assert not refused(linux["package_prctl"])
    assert linux["asked_for_parent_death_signal"] is True
    assert linux["parent_death_signal_set"] == signal.SIGHUP


def test_arena_sizes_are_whole_pages_of_this_platform() -> None:
    """Sizes derived from the page size are computed from it, whatever it is (16 KiB in
    the mode), never assumed to be 4 KiB."""
    with shmbus.EventEmitter("pages") as em:
        with em.subscribe() as sub:
            em.emit(b"p" * 100_000, timeout=5)
            assert sub.recv(timeout=5) == b"p" * 100_000
            control = _control.ControlBlock.attach(
                _platform.open_segment(_names.control_name(helpers.token_of(em))), "pages")
            try:
                sizes = [size for _, size in control.arena_entries()]
            finally:
                control.close()
    assert sizes and all(size % _platform.page_size() == 0 for size in sizes), sizes
