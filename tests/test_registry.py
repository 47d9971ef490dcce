"""The registry: names, cleanup after crashes, privacy, and bad input."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import pytest

import shmbus
from shmbus import _control, _registry
from tests import helpers

pytestmark = pytest.mark.timeout(60)


def _hold_a_bus(name: str, ready) -> None:
    em = shmbus.EventEmitter(name)
    sub = em.subscribe(capacity=4)
    em.emit("pending")
    ready.put(helpers.token_of(em))
    while sub:
        pass


def test_a_clean_shutdown_leaves_nothing_behind(registry_dir):
    with shmbus.EventEmitter("tidy") as em:
        token = helpers.token_of(em)
        sub = em.subscribe()
        em.emit(b"x" * 100_000)  # a large-event segment too
        assert helpers.objects_of(token)
    assert sub.recv(timeout=1) == b"x" * 100_000  # still readable after the emitter left
    assert helpers.objects_of(token)  # the draining subscriber keeps the bus alive
    sub.close()
    assert helpers.objects_of(token) == []
    assert os.listdir(os.path.join(registry_dir, "buses")) == []
    assert os.listdir(os.path.join(registry_dir, "names")) == []


@pytest.mark.parametrize("who_cleans", ["next emitter", "next subscriber", "cleanup()"])
def test_orphans_of_killed_processes_are_removed(procs, registry_dir, who_cleans):
    ready = helpers.context().Queue()
    holder = procs(_hold_a_bus, "crashed", ready)
    token = ready.get(timeout=10)
    assert len(helpers.objects_of(token)) >= 4  # control block, ring, 2 semaphores
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(5)
    assert helpers.objects_of(token)  # SIGKILL removes nothing by itself
    if who_cleans == "next emitter":
        shmbus.EventEmitter("crashed").close()
    elif who_cleans == "next subscriber":
        with pytest.raises(shmbus.BusNotFound):
            shmbus.subscribe("crashed")
    else:
        cleaned = shmbus.cleanup()
        assert cleaned.buses == [token] and cleaned.names == ["crashed"]
    assert helpers.objects_of(token) == []
    assert os.listdir(os.path.join(registry_dir, "buses")) == []


def test_a_live_name_cannot_be_taken_but_a_closed_one_can():
    with shmbus.EventEmitter("taken"):
        with pytest.raises(shmbus.BusExists) as info:
            shmbus.EventEmitter("taken")
        assert isinstance(info.value, FileExistsError)
    shmbus.EventEmitter("taken").close()


def test_subscribing_to_an_unknown_name_is_bus_not_found():
    with pytest.raises(shmbus.BusNotFound, match="no bus named 'nobody'") as info:
        shmbus.subscribe("nobody")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["", ".hidden", "-dash", "a/b", "../up", "x" * 129, "sp ace"])
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(ValueError, match="use 1 to 128 characters"):
        shmbus.EventEmitter(name)
    with pytest.raises(ValueError, match="use 1 to 128 characters"):
        shmbus.subscribe(name)


def test_a_name_that_is_not_a_string_is_a_type_error():
    with pytest.raises(TypeError):
        shmbus.EventEmitter(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("capacity", [0, -1, 10**9])
def test_out_of_range_capacities_are_refused(capacity):
    with pytest.raises(ValueError, match="capacity must be between 1 and"):
        shmbus.EventEmitter(capacity=capacity)
    with shmbus.EventEmitter("cap") as em:
        with pytest.raises(ValueError, match="capacity must be between 1 and"):
            em.subscribe(capacity=capacity)


@pytest.mark.parametrize("capacity", [True, 2.5, "8"])
def test_capacities_that_are_not_ints_are_refused(capacity):
    with pytest.raises(TypeError, match="capacity must be an int"):
        shmbus.EventEmitter(capacity=capacity)


def test_generated_names_are_unique_and_valid():
    with shmbus.EventEmitter() as a, shmbus.EventEmitter() as b:
        assert a.name != b.name
        with shmbus.subscribe(a.name):
            pass


def test_everything_is_private_to_the_user(registry_dir):
    with shmbus.EventEmitter("private") as em, em.subscribe():
        em.emit(b"y" * 10_000)
        token = helpers.token_of(em)
        objects = helpers.objects_of(token)
        assert len(objects) >= 5
        for name in objects:
            mode = os.stat(os.path.join(helpers.SHM_DIR, name)).st_mode
            assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))
            posix_name = "/" + name.removeprefix("sem.")
            assert len(posix_name) <= 31  # macOS's limit
        for directory, _, files in os.walk(registry_dir):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
            for f in files:
                path = os.path.join(directory, f)
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_two_buses_never_share_an_object():
    with shmbus.EventEmitter("same") as a, a.subscribe(), \
            shmbus.EventEmitter("same2") as b, b.subscribe():
        assert helpers.token_of(a) != helpers.token_of(b)
        assert not set(helpers.objects_of(helpers.token_of(a))) & set(
            helpers.objects_of(helpers.token_of(b)))


def test_a_registry_directory_others_can_read_is_refused(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    monkeypatch.setenv("SHMBUS_DIR", str(loose))
    with pytest.raises(shmbus.ShmBusError, match="chmod 700"):
        shmbus.EventEmitter("x")


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o703])
def test_a_shared_directory_as_registry_is_refused_without_advice_to_chmod_it(
        tmp_path, monkeypatch, mode):
    """Like /tmp or /dev/shm for their owner (root): `chmod 700` would break the machine."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("SHMBUS_DIR", str(shared))
    with pytest.raises(shmbus.ShmBusError, match="shared by everyone") as refused:
        shmbus.EventEmitter("x")
    assert "SHMBUS_DIR" in str(refused.value) and "chmod" not in str(refused.value)
    assert shared.stat().st_mode & 0o7777 == mode


def test_a_corrupt_subscriber_record_is_reported_clearly(registry_dir):
    with shmbus.EventEmitter("records") as em, em.subscribe() as sub:
        path = em._registry.sub_path(helpers.token_of(em), sub.id)
        with pytest.raises(shmbus.IncompatibleBus, match="not valid JSON"):
            _write_and_read(path, b"\x00garbage")
        with pytest.raises(shmbus.IncompatibleBus, match="another shmbus version"):
            _write_and_read(path, json.dumps({"version": 99}).encode())


def _write_and_read(path: str, content: bytes):
    with open(path, "r+b") as f:
        f.truncate()
        f.write(content)
    return _registry.Registry.read_record(path)


@pytest.mark.parametrize("damage", [b"NOTSHMBUS", b"shmbusCB\x09\x00\x00\x00"])
def test_a_corrupt_or_foreign_control_block_is_refused_on_subscribe(damage):
    with shmbus.EventEmitter("damaged") as em:
        em._control.buf[: len(damage)] = damage
        with pytest.raises(shmbus.IncompatibleBus, match="shmbus"):
            shmbus.subscribe("damaged")
        from shmbus import _control
        em._control.buf[:12] = _control._HEAD.pack(_control.MAGIC, _control.LAYOUT_VERSION, 0)[:12]


def test_a_corrupt_ring_header_is_refused_by_the_emitter_not_misread():
    with shmbus.EventEmitter("badring") as em, em.subscribe() as good:
        bad = em.subscribe()
        bad._ring.buf[:8] = b"XXXXXXXX"
        assert em.emit("hello") == 1  # delivered to the readable ring only
        assert good.recv(timeout=1) == "hello"
        bad.close()


def test_a_token_whose_segment_name_is_taken_is_drawn_again(monkeypatch):
    from shmbus import _names, _platform

    foreign = _platform.create_segment(_names.control_name("deadbeef"), 128)
    try:
        tokens = iter(["deadbeef", "cafef00d"])
        monkeypatch.setattr(_registry.secrets, "token_hex", lambda n: next(tokens))
        with shmbus.EventEmitter("clash") as em:
            assert helpers.token_of(em) == "cafef00d"
        assert helpers.objects_of("deadbeef") == ["sb_deadbeef"]  # not ours: untouched
    finally:
        foreign.close()
        _platform.unlink_segment(_names.control_name("deadbeef"))


def test_a_squatted_ring_name_is_skipped_and_left_alone():
    from shmbus import _names, _platform

    with shmbus.EventEmitter("squat") as em:
        token = helpers.token_of(em)
        squatter = _platform.create_semaphore(_names.data_sem_name(token, 0), 0)
        try:
            with em.subscribe() as sub:
                assert sub.id == 1
                em.emit("through")
                assert sub.recv(timeout=1) == "through"
            assert f"sem.sb_{token}_r0d" in helpers.our_shm_objects()  # not ours to remove
        finally:
            squatter.close()
            _platform.unlink_semaphore(_names.data_sem_name(token, 0))


def test_a_live_name_with_a_corrupt_record_is_still_bus_exists():
    with shmbus.EventEmitter("scrawled") as em:
        with open(em._registry.emitter_path(helpers.token_of(em)), "r+b") as f:
            f.write(b"\xff\xfe garbage")
        with pytest.raises(shmbus.BusExists, match="unreadable"):
            shmbus.EventEmitter("scrawled")


def _hold_buses(names: list[str], ready) -> None:
    emitters = [shmbus.EventEmitter(name) for name in names]
    ready.put([helpers.token_of(em) for em in emitters])
    while emitters:
        time.sleep(1)


def _count_bus_sweeps(monkeypatch) -> list[str]:
    swept: list[str] = []
    original = _registry.Registry._sweep_bus

    def counting(self, token, cleaned):
        swept.append(token)
        return original(self, token, cleaned)

    monkeypatch.setattr(_registry.Registry, "_sweep_bus", counting)
    return swept


def _sweep_is_due(registry_dir: str) -> None:
    stamp = os.path.join(registry_dir, "swept")
    if os.path.exists(stamp):
        os.utime(stamp, (0, 0))


def test_creating_or_joining_a_bus_sweeps_a_bounded_sample(monkeypatch, registry_dir):
    emitters = [shmbus.EventEmitter(f"live{i}") for i in range(3 * _registry.SWEEP_SAMPLE)]
    try:
        swept = _count_bus_sweeps(monkeypatch)
        _sweep_is_due(registry_dir)
        shmbus.EventEmitter("one-more").close()
        assert 0 < len(swept) <= _registry.SWEEP_SAMPLE, swept
        swept.clear()
        shmbus.EventEmitter("and-another").close()  # within SWEEP_PERIOD: no sweep at all
        with shmbus.subscribe("live0"):
            pass
        assert swept == []
        _sweep_is_due(registry_dir)
        with shmbus.subscribe("live1"):
            pass
        assert 0 < len(swept) <= _registry.SWEEP_SAMPLE, swept
    finally:
        for em in emitters:
            em.close()


def test_a_sample_sweep_still_removes_what_killed_processes_left(procs, registry_dir):
    ready = helpers.context().Queue()
    holder = procs(_hold_buses, ["dead1", "dead2", "dead3"], ready)
    tokens = ready.get(timeout=10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(5)
    assert all(helpers.objects_of(token) for token in tokens)
    _sweep_is_due(registry_dir)
    shmbus.EventEmitter("newcomer").close()  # fewer buses than a sample: all looked at
    assert [helpers.objects_of(token) for token in tokens] == [[], [], []]
    assert os.listdir(os.path.join(registry_dir, "names")) == []


# -- every mistake a caller can make is a ShmBusError ------------------------------------


@pytest.mark.parametrize("call", [
    lambda: shmbus.EventEmitter("x" * 300),
    lambda: shmbus.EventEmitter(42),  # type: ignore[arg-type]
    lambda: shmbus.EventEmitter("ok", capacity=0),
    lambda: shmbus.EventEmitter("ok", capacity="8"),  # type: ignore[arg-type]
    lambda: shmbus.EventEmitter("ok", large_bytes=10),
    lambda: shmbus.subscribe(42),  # type: ignore[arg-type]
    lambda: shmbus.subscribe("no spaces please"),
    lambda: shmbus.stats("bad/name"),
])
def test_bad_arguments_are_invalid_argument_errors_with_short_messages(call):
    with pytest.raises(shmbus.InvalidArgument) as info:
        call()
    assert isinstance(info.value, shmbus.ShmBusError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert len(str(info.value)) < 200, str(info.value)
    assert "x" * 60 not in str(info.value)  # a long bad value is quoted in part only


def test_bad_arguments_to_calls_are_invalid_argument_errors():
    with shmbus.EventEmitter("calls") as em, em.subscribe() as sub:
        for call in (lambda: em.emit(1, timeout=-1), lambda: em.emit(1, timeout="soon"),
                     lambda: em.emit_many(None), lambda: sub.recv(timeout=float("nan")),
                     lambda: sub.recv_many(0), lambda: sub.recv_many(2.5)):
            with pytest.raises(shmbus.InvalidArgument):
                call()


def test_a_relative_registry_directory_means_one_directory_for_every_process(
        monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(_registry.DIR_ENV, "relative/registry")
    with shmbus.EventEmitter("rel"):
        assert os.environ[_registry.DIR_ENV] == str(tmp_path / "relative" / "registry")
        monkeypatch.chdir("/")  # a child that runs elsewhere still finds the bus
        with shmbus.subscribe("rel"):
            pass


def test_a_registry_directory_whose_parents_are_missing_is_made(monkeypatch, tmp_path):
    monkeypatch.setenv(_registry.DIR_ENV, str(tmp_path / "a" / "b" / "registry"))
    with shmbus.EventEmitter("deep"), shmbus.subscribe("deep"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b" / "registry").st_mode) == 0o700


def test_a_symlinked_registry_directory_of_our_own_is_followed(monkeypatch, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv(_registry.DIR_ENV, str(tmp_path / "link"))
    with shmbus.EventEmitter("linked"), shmbus.subscribe("linked"):
        assert os.listdir(real / "names") == ["linked"]


def test_a_symlink_to_a_directory_others_may_read_is_refused(monkeypatch, tmp_path):
    real = tmp_path / "open"
    real.mkdir(mode=0o755)
    os.chmod(real, 0o755)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv(_registry.DIR_ENV, str(tmp_path / "link"))
    with pytest.raises(shmbus.ShmBusError, match="must be private"):
        shmbus.EventEmitter("linked")


def test_an_emitter_that_fails_halfway_leaves_nothing(monkeypatch):
    # The leak check after the test sees any control block left behind.
    with pytest.raises(shmbus.InvalidArgument, match="large_bytes"):
        shmbus.EventEmitter("toolarge", large_bytes=2**70)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_control.ControlBlock, "initialize", fail)
    with pytest.raises(KeyboardInterrupt):
        shmbus.EventEmitter("interrupted")
    assert shmbus.buses() == []


def test_a_registry_directory_that_cannot_be_made_is_a_shmbus_error(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for where, says in ((tmp_path / "a-file" / "reg", "cannot be used: Not a directory"),
                        (tmp_path / "loop", "loop of symlinks")):
        monkeypatch.setenv("SHMBUS_DIR", str(where))
        with pytest.raises(shmbus.ShmBusError, match=says):
            shmbus.EventEmitter("nowhere")
    for call in (lambda: shmbus.buses(root=5), lambda: shmbus.stats("x", root=5),
                 lambda: shmbus.cleanup(5)):
        with pytest.raises(shmbus.InvalidArgument, match="root must be"):
            call()
