"""Another user on the same machine can neither join a bus nor touch its shared objects.

The bus below is created by the test process. A throwaway system user (made by a
session fixture, removed afterwards; as root these tests must run, wherever the checkout
lives: the user imports a world-readable copy of shmbus that the fixture makes) then runs
a script that knows every name there is to know (the bus name, the registry path, the
token, the subscriber id) and tries, in turn, to subscribe, to take the bus's name, to
sweep its registry, to read the registry files, to open the control block, ring and
large-event segments and the ring semaphores (through posix_ipc and straight through
/dev/shm), and to unlink them. The script prints one JSON outcome per attempt; every
attempt must be refused, and the bus must go on working untouched.

Squatting: the other user creates, first, the names a bus is about to use (the rings and
semaphores of the next subscriber ids, with valid headers and mode 0666; large-event
segments). The bus must never write into them, never post them, never remove them, and
go on working.

The intruder's own bus, in its own registry, works: the refusals come from ownership,
not from a broken environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest

import shmbus
from shmbus import _arena, _liveness, _names, _registry, _ring
from tests import helpers

BUS = "secbus"
INTRUDER_TIMEOUT = 30.0


# -- leak check ------------------------------------------------------------------------


# -- the other user ------------------------------------------------------------------


@dataclass
class Intruder:
    name: str
    uid: int
    gid: int
    python: str = sys.executable
    pythonpath: str = ""
    """A world-readable copy of shmbus and what it imports, made for this user."""

    def command(self, argv: list[str]) -> list[str]:
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                    "--clear-groups", *argv]
        return ["runuser", "-u", self.name, "--", *argv]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": self.pythonpath,
                **(extra or {})}

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            timeout: float = INTRUDER_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), env=self.env(env), cwd="/",
                              capture_output=True, text=True, timeout=timeout)

    def python_script(self, script: str, *args: str, env: dict[str, str] | None = None
                      ) -> subprocess.CompletedProcess[str]:
        return self.run([self.python, "-c", script, *args], env=env)

    def start(self, script: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command([self.python, "-c", script, *args]),
                                env=self.env(), cwd="/", stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _importable_copy(into: str) -> str:
    """Copy shmbus and every third-party module it imports into `into`, readable by all.

    The checkout and the virtualenv may sit in a directory other users cannot enter (a
    root home, a CI workspace): the other user imports this copy instead.
    """
    import shmbus  # noqa: F401  (what it imports is what the copy needs)

    for top in sorted({name.split(".")[0] for name in list(sys.modules)}):
        module = sys.modules.get(top)
        path = getattr(module, "__file__", None)
        if top in sys.stdlib_module_names or path is None or top in ("tests", "pytest"):
            continue
        if top.startswith(("_pytest", "pluggy", "hypothesis", "_hypothesis")):
            continue
        if os.path.basename(path) == "__init__.py":
            shutil.copytree(os.path.dirname(path), os.path.join(into, top),
                            ignore=shutil.ignore_patterns("__pycache__"))
        elif "site-packages" in path or top == "shmbus":
            shutil.copy(path, into)
    for root, dirs, files in os.walk(into):
        os.chmod(root, 0o755)
        for entry in files:
            os.chmod(os.path.join(root, entry), 0o644)
    return into


def _interpreters() -> list[str]:
    """Pythons of our version that another user may be able to run, best first."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  getattr(sys, "_base_executable", ""), f"/usr/bin/python{version}",
                  f"/usr/local/bin/python{version}", shutil.which(f"python{version}") or ""]
    return [c for c in dict.fromkeys(candidates) if c and os.path.exists(c)]


@pytest.fixture(scope="session")
def intruder():
    """A system user that is not us, for the whole session; deleted at the end."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux (useradd, setpriv/runuser, /dev/shm)")
    if os.geteuid() != 0:
        pytest.skip("needs root, to create a throwaway user and run code as it")
    # As root these tests must run, wherever the checkout is: from here on a missing
    # piece fails them instead of skipping them.
    for tool in ("useradd", "userdel"):
        assert shutil.which(tool), f"`{tool}` is not installed: cannot make a throwaway user"
    assert shutil.which("setpriv") or shutil.which("runuser"), (
        "neither `setpriv` nor `runuser` is installed: cannot switch user")
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
                  if os.path.exists(s)), "/bin/false")
    name = f"shmbus-intruder-{secrets.token_hex(4)}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", shell, name],
        capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, f"useradd {name} failed: {made.stderr.strip()}"
    copy = tempfile.mkdtemp(prefix="shmbus-intruder-")  # not pytest's: its root is 0700
    try:
        entry = pwd.getpwnam(name)
        user = Intruder(name, entry.pw_uid, entry.pw_gid)
        parent = copy
        while parent != os.path.dirname(parent):  # the copy's parents must let them in
            parent = os.path.dirname(parent)
            assert os.stat(parent).st_mode & stat.S_IXOTH, f"{parent} is not traversable"
        os.chmod(copy, 0o755)
        user.pythonpath = _importable_copy(copy)
        tried = []
        for python in _interpreters():
            user.python = python
            probe = user.python_script("import sys, posix_ipc, shmbus; "
                                       "print(*sys.version_info[:2], shmbus.__file__)")
            fields = probe.stdout.split()
            if (probe.returncode == 0 and tuple(map(int, fields[:2])) == sys.version_info[:2]
                    and fields[2].startswith(copy)):
                break
            tried.append(f"{python}: {(probe.stderr.strip() or probe.stdout.strip())[-300:]}")
        else:
            pytest.fail(f"user {name} can run no Python {sys.version_info[:2]} that imports "
                        f"the copy of shmbus in {copy}; tried:\n" + "\n".join(tried))
        yield user
    finally:
        gone = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=60)
        shutil.rmtree(copy, ignore_errors=True)
        assert gone.returncode == 0, f"userdel {name} failed: {gone.stderr.strip()}"


# -- what the intruder runs ------------------------------------------------------------

INTRUDER_SCRIPT = r'''
import json, os, sys, tempfile, shutil
import posix_ipc
import shmbus

info = json.loads(sys.argv[1])
attempts = {}

def outcome(fn):
    try:
        value = fn()
    except BaseException as exc:
        return {"ok": False,
                "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "bases": [c.__name__ for c in type(exc).__mro__],
                "errno": getattr(exc, "errno", None),
                "msg": str(exc)}
    return {"ok": True, "value": repr(value)[:200]}

def attempt(key, fn):
    attempts[key] = outcome(fn)

def opened_shm(name, read_only):
    shm = posix_ipc.SharedMemory(name, read_only=read_only)
    shm.close_fd()
    return shm.size

def opened_sem(name):
    sem = posix_ipc.Semaphore(name)
    value = sem.value
    sem.close()
    return value

def opened_file(path, flags):
    os.close(os.open(path, flags))

def read_file(path):
    with open(path, "rb") as f:
        return f.read()

def subscribed():
    sub = shmbus.subscribe(info["name"], capacity=4)
    sub.close()  # only reached if the library let us in
    return sub.id

def took_name():
    em = shmbus.EventEmitter(info["name"])
    em.close()  # only reached if the library let us in
    return "emitter created"

status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
whoami = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
          "cap_eff": status.get("CapEff", "").strip()}

# 1. Through the library, with SHMBUS_DIR at the bus's registry (set by the caller).
attempt("subscribe", subscribed)
attempt("take_name", took_name)
attempt("cleanup", shmbus.cleanup)

# 2. Through the library, with a registry of our own forged to point at the token.
own = tempfile.mkdtemp(prefix="sbintr-")
try:
    os.environ["SHMBUS_DIR"] = own
    shmbus.cleanup()  # creates names/ and buses/
    os.mkdir(os.path.join(own, "buses", info["token"]), 0o700)
    os.symlink(os.path.join("..", "buses", info["token"]),
               os.path.join(own, "names", info["name"]))
    attempt("subscribe_forged_registry", subscribed)
finally:
    shutil.rmtree(own, ignore_errors=True)

# 3. Straight at the shared objects, by name.
for kind, name in info["segments"].items():
    attempt(f"shm_open_rw:{kind}", lambda: opened_shm(name, False))
    attempt(f"shm_open_ro:{kind}", lambda: opened_shm(name, True))
    attempt(f"devshm_read:{kind}",
            lambda: opened_file("/dev/shm/" + name.lstrip("/"), os.O_RDONLY))
    attempt(f"devshm_write:{kind}",
            lambda: opened_file("/dev/shm/" + name.lstrip("/"), os.O_WRONLY))
for kind, name in info["semaphores"].items():
    attempt(f"sem_open:{kind}", lambda: opened_sem(name))
    attempt(f"devshm_read:sem_{kind}",
            lambda: opened_file("/dev/shm/sem." + name.lstrip("/"), os.O_RDONLY))
attempt("shm_unlink:control",
        lambda: posix_ipc.unlink_shared_memory(info["segments"]["control"]))
attempt("shm_unlink:ring", lambda: posix_ipc.unlink_shared_memory(info["segments"]["ring"]))
attempt("sem_unlink:data", lambda: posix_ipc.unlink_semaphore(info["semaphores"]["data"]))

# 4. The registry's files.
reg = info["registry"]
attempt("registry_listdir", lambda: os.listdir(reg))
attempt("registry_listdir_buses", lambda: os.listdir(os.path.join(reg, "buses")))
attempt("registry_readlink_name",
        lambda: os.readlink(os.path.join(reg, "names", info["name"])))
attempt("registry_read_emitter", lambda: read_file(info["emitter_record"]))
attempt("registry_read_sub", lambda: read_file(info["sub_record"]))

# Control: the library works for this user on a bus of its own.
def own_bus():
    mine = tempfile.mkdtemp(prefix="sbintr-")
    try:
        os.environ["SHMBUS_DIR"] = mine
        with shmbus.EventEmitter("own") as em:
            sub = em.subscribe()
            em.emit("hello", timeout=5)
            got = sub.recv(timeout=5)
            sub.close()
            token = em._token
        left = [n for n in os.listdir("/dev/shm") if f"sb_{token}" in n]
        if left:
            raise AssertionError(f"own bus left {left} in /dev/shm")
        return got
    finally:
        shutil.rmtree(mine, ignore_errors=True)

control = outcome(own_bus)
print(json.dumps({"whoami": whoami, "attempts": attempts, "control": control}))
'''


# -- the bus under attack ----------------------------------------------------------------


@pytest.fixture
def bus(registry_dir: str):
    """A live bus with one subscriber and one unread large event, as this user."""
    em = shmbus.EventEmitter(BUS)
    sub = em.subscribe()
    em.emit(b"x" * 100_000, timeout=5)  # too big for a slot: a large-event segment
    try:
        yield em, sub
    finally:
        sub.close()
        em.close()


def attack(intruder: Intruder, registry_dir: str, em: shmbus.EventEmitter,
           sub: shmbus.Subscription) -> dict[str, Any]:
    token = helpers.token_of(em)
    info: dict[str, Any] = {
        "name": BUS,
        "token": token,
        "registry": registry_dir,
        "emitter_record": os.path.join(registry_dir, "buses", token, "emitter"),
        "sub_record": os.path.join(registry_dir, "buses", token, f"sub.{sub.id}"),
        "segments": {
            "control": _names.control_name(token),
            "ring": _names.ring_name(token, sub.id),
            "arena": _arena_of(em),
        },
        "semaphores": {
            "data": _names.data_sem_name(token, sub.id),
            "space": _names.space_sem_name(token, sub.id),
        },
    }
    # Every object we attack exists, so a refusal cannot be a mere "not found".
    present = set(helpers.objects_of(token))
    for name in info["segments"].values():
        assert name.lstrip("/") in present, (name, present)
    for name in info["semaphores"].values():
        assert "sem." + name.lstrip("/") in present, (name, present)
    # The registry's parents are open to everyone: only its own 0700 keeps others out.
    parent = os.path.dirname(os.path.abspath(registry_dir))
    assert os.stat(parent).st_mode & stat.S_IXOTH, f"{parent} is not traversable by others"

    done = intruder.python_script(INTRUDER_SCRIPT, json.dumps(info),
                                  env={"SHMBUS_DIR": registry_dir})
    assert done.returncode == 0, f"intruder script crashed:\n{done.stderr}"
    report = json.loads(done.stdout.strip().splitlines()[-1])

    who = report["whoami"]
    assert who["uid"] == intruder.uid and who["euid"] == intruder.uid, who
    assert who["euid"] != os.geteuid() and who["euid"] != 0, who
    assert who["groups"] in ([], [intruder.gid]), who
    assert int(who["cap_eff"] or "0", 16) == 0, f"intruder has capabilities: {who}"
    assert report["control"] == {"ok": True, "value": "'hello'"}, (
        f"shmbus does not work for the other user even on its own bus, so the refusals "
        f"prove nothing: {report['control']}"
    )
    return report["attempts"]


def assert_refused(attempts: dict[str, Any], key: str, *types: str) -> dict[str, Any]:
    result = attempts[key]
    assert not result["ok"], f"another user succeeded at {key}: {result}"
    if types:
        assert result["type"] in types, f"{key}: refused with {result}, expected {types}"
    return result


# -- tests ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_other_user_cannot_subscribe_take_the_name_or_read_the_registry(
        intruder: Intruder, registry_dir: str, bus) -> None:
    em, sub = bus
    attempts = attack(intruder, registry_dir, em, sub)

    # The library refuses at the registry, with a ShmBusError that says why.
    for key in ("subscribe", "take_name", "cleanup"):
        result = assert_refused(attempts, key)
        assert "ShmBusError" in result["bases"], f"{key}: not a ShmBusError: {result}"
        assert registry_dir in result["msg"], result
        assert f"belongs to uid {os.getuid()}" in result["msg"], result

    # A registry of its own pointing at our token gets no further than the kernel's
    # permission check on the control block (today a bare posix_ipc.PermissionsError).
    result = assert_refused(attempts, "subscribe_forged_registry")
    assert (result["type"] in ("posix_ipc.PermissionsError", "builtins.PermissionError")
            or "ShmBusError" in result["bases"]), result

    for key in ("registry_listdir", "registry_listdir_buses", "registry_readlink_name",
                "registry_read_emitter", "registry_read_sub"):
        result = assert_refused(attempts, key, "builtins.PermissionError")
        assert result["errno"] == 13, result  # EACCES

    # Nothing the intruder did disturbed the bus: the large event sent before the
    # attack and an event sent after it both arrive, and the name is still ours.
    assert sub.recv(timeout=5) == b"x" * 100_000
    em.emit({"after": "attack"}, timeout=5)
    assert sub.recv(timeout=5) == {"after": "attack"}
    late = shmbus.subscribe(BUS)
    try:
        em.emit(1, timeout=5)
        assert late.recv(timeout=5) == 1
    finally:
        late.close()


@pytest.mark.timeout(60)
def test_other_user_cannot_open_or_remove_the_shared_objects(
        intruder: Intruder, registry_dir: str, bus) -> None:
    em, sub = bus
    token = helpers.token_of(em)
    before = sorted(helpers.objects_of(token))
    attempts = attack(intruder, registry_dir, em, sub)

    for kind in ("control", "ring", "arena"):
        assert_refused(attempts, f"shm_open_rw:{kind}", "posix_ipc.PermissionsError")
        assert_refused(attempts, f"shm_open_ro:{kind}", "posix_ipc.PermissionsError")
        assert_refused(attempts, f"devshm_read:{kind}", "builtins.PermissionError")
        assert_refused(attempts, f"devshm_write:{kind}", "builtins.PermissionError")
    for kind in ("data", "space"):
        assert_refused(attempts, f"sem_open:{kind}", "posix_ipc.PermissionsError")
        assert_refused(attempts, f"devshm_read:sem_{kind}", "builtins.PermissionError")
    for key in ("shm_unlink:control", "shm_unlink:ring", "sem_unlink:data"):
        assert_refused(attempts, key, "posix_ipc.PermissionsError")

    assert sorted(helpers.objects_of(token)) == before
    assert sub.recv(timeout=5) == b"x" * 100_000
    em.emit("still here", timeout=5)
    assert sub.recv(timeout=5) == "still here"


def test_bus_objects_and_registry_are_private_to_their_owner(registry_dir: str,
                                                            bus) -> None:
    """What the refusals above rest on: modes 0600/0700 and our ownership."""
    em, sub = bus
    token = helpers.token_of(em)
    objects = helpers.objects_of(token)
    assert {f"sb_{token}", f"sb_{token}_r{sub.id:x}", _arena_of(em).lstrip("/"),
            f"sem.sb_{token}_r{sub.id:x}d", f"sem.sb_{token}_r{sub.id:x}s"} <= set(objects)
    for name in objects:
        st = os.stat(os.path.join(helpers.SHM_DIR, name))
        assert stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
        assert st.st_uid == os.getuid(), (name, st.st_uid)
    for path in (registry_dir, os.path.join(registry_dir, "names"),
                 os.path.join(registry_dir, "buses"),
                 os.path.join(registry_dir, "buses", token)):
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, (
            path, oct(st.st_mode))
        assert st.st_uid == os.getuid(), (path, st.st_uid)
    for record in ("emitter", f"sub.{sub.id}"):
        st = os.stat(os.path.join(registry_dir, "buses", token, record))
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (record, oct(st.st_mode))
        assert st.st_uid == os.getuid(), (record, st.st_uid)


# -- squatting: another user creates our names first ------------------------------------

SQUATTER_SCRIPT = r'''
import json, sys
import posix_ipc

plan = json.loads(sys.argv[1])
made = []
for name, header_hex, size in plan["segments"]:
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o666, size=size)
    import mmap
    buf = mmap.mmap(shm.fd, size)
    shm.close_fd()
    header = bytes.fromhex(header_hex)
    buf[:len(header)] = header
    made.append((name, buf, header))
sems = [posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o666, initial_value=0)
        for name in plan["semaphores"]]
print("ready", flush=True)
sys.stdin.read()  # until the test is done with its bus
report = {}
for name, buf, header in made:
    rest = bytes(buf[len(header):])
    report[name] = {"touched": bytes(buf[:len(header)]) != header or any(rest),
                    "nonzero_bytes": sum(1 for b in rest if b)}
    buf.close()
    posix_ipc.unlink_shared_memory(name)
report["sem_tokens"] = {}
for sem in sems:
    report["sem_tokens"][sem.name] = sem.value
    sem.unlink()
print(json.dumps(report), flush=True)
'''


class Squatter:
    """The other user's process holding squatted names until `report()`."""

    def __init__(self, intruder: Intruder, segments: list[tuple[str, bytes, int]],
                 semaphores: list[str]) -> None:
        plan = {"segments": [(name, header.hex(), size) for name, header, size in segments],
                "semaphores": semaphores}
        self.names = [name for name, _, _ in segments], semaphores
        self.uid = intruder.uid
        self.process = intruder.start(SQUATTER_SCRIPT, json.dumps(plan))
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"the squatter did not start: {line!r} {err}")

    def report(self) -> dict[str, Any]:
        out, err = self.process.communicate(input="", timeout=INTRUDER_TIMEOUT)
        assert self.process.returncode == 0, f"the squatter failed:\n{err}"
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def kill(self) -> None:
        """Stop the squatter and remove what it made, if it did not (a failed test)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        segments, semaphores = self.names
        for name in segments + [f"sem.{n.lstrip('/')}" for n in semaphores]:
            path = os.path.join(helpers.SHM_DIR, name.lstrip("/"))
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_uid == self.uid:  # the squatter's, made by this test
                    os.unlink(path)


def _ring_header(capacity: int) -> bytes:
    return _ring._HEAD.pack(_ring.MAGIC, _ring.LAYOUT_VERSION, capacity, _ring.SLOT_SIZE)


@pytest.mark.timeout(60)
def test_rings_squatted_by_another_user_are_never_written(intruder: Intruder,
                                                          registry_dir: str) -> None:
    """The squatter pre-creates, with mode 0666 and a valid ring header, the ring and both
    semaphores of the next subscriber ids; the registry then names one of them, as it does
    while a joiner whose creation failed moves on: the emitter must refuse to attach."""
    with shmbus.EventEmitter("squatted") as em, em.subscribe() as sub:
        token = helpers.token_of(em)
        # Ids that joiners took and gave up on, as they do when creation fails.
        squatted = [em._control.allocate_sub_id(), em._control.allocate_sub_id()]
        ring_size = _ring.HEADER_SIZE + 4 * _ring.SLOT_SIZE
        squatter = Squatter(
            intruder,
            [(_names.ring_name(token, i), _ring_header(4), ring_size) for i in squatted],
            [n for i in squatted for n in (_names.data_sem_name(token, i),
                                           _names.space_sem_name(token, i))],
        )
        try:
            # A live record for a squatted id: what the emitter sees in that window.
            record = {"pid": os.getpid(), "version": _registry.REGISTRY_VERSION,
                      "id": squatted[0], "capacity": 4}
            life = _liveness.LifeLock.create(em._registry.sub_path(token, squatted[0]),
                                             json.dumps(record).encode())
            em._control.bump_generation()
            try:
                for i in range(20):
                    assert em.emit({"secret": i}, timeout=5) == 1  # ours alone
                    assert sub.recv(timeout=5) == {"secret": i}
                # A joiner skips the squatted ids and works.
                with em.subscribe() as late:
                    assert late.id not in squatted
                    em.emit("late", timeout=5)
                    assert late.recv(timeout=5) == "late"
                    assert sub.recv(timeout=5) == "late"
            finally:
                os.unlink(em._registry.sub_path(token, squatted[0]))
                life.release()
            report = squatter.report()
        finally:
            squatter.kill()
    for i in squatted:
        assert report[_names.ring_name(token, i)]["touched"] is False, report
    assert set(report["sem_tokens"].values()) == {0}, report  # no doorbell posted either


@pytest.mark.timeout(60)
def test_large_event_names_squatted_by_another_user_are_skipped(intruder: Intruder,
                                                                registry_dir: str,
                                                                monkeypatch) -> None:
    """Large-event names carry a random nonce, so nobody can take one first by guessing;
    here the draws are made to land on names the other user holds, which must be
    skipped, never written, and never fatal."""
    with shmbus.EventEmitter("bigsquat") as em, em.subscribe() as sub:
        token = helpers.token_of(em)
        taken = list(range(1, 7))
        squatted = [_names.arena_name(token, n) for n in taken]
        squatted += [_names.oversized_name(token, n) for n in taken]
        draws = iter(taken + taken[:3] + list(range(100, 200)))
        monkeypatch.setattr(_arena.secrets, "randbits", lambda bits: next(draws))
        squatter = Squatter(intruder, [(name, b"", 1 << 20) for name in squatted], [])
        try:
            for i in range(30):
                event = bytes([i]) * 200_000
                em.emit(event, timeout=5)  # the arena, after 6 squatted names
                assert sub.recv(timeout=5) == event
            huge = bytes(40 << 20)  # more than half the arena: a segment of its own
            em.emit(huge, timeout=5)
            assert sub.recv(timeout=5) == huge
            report = squatter.report()
        finally:
            squatter.kill()
    for name in squatted:
        assert report[name]["touched"] is False, (name, report[name])


def _arena_of(em: shmbus.EventEmitter) -> str:
    [(nonce, _)] = em._control.arena_entries()
    return _names.arena_name(helpers.token_of(em), nonce)
