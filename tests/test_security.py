"""Another user on the same machine can neither join a bus nor touch its shared objects.

The bus below is created by the test process. A throwaway system user (made by a
session fixture, removed afterwards; those tests skip unless we are root) then runs a
script that knows every name there is to know (the bus name, the registry path, the
token, the subscriber id) and tries, in turn, to subscribe, to take the bus's name, to
sweep its registry, to read the registry files, to open the control block, ring and
large-event segments and the ring semaphores (through posix_ipc and straight through
/dev/shm), and to unlink them. The script prints one JSON outcome per attempt; every
attempt must be refused, and the bus must go on working untouched.

The intruder's own bus, in its own registry, works: the refusals come from ownership,
not from a broken environment.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

import shmbus
from shmbus import _names
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

    def command(self, argv: list[str]) -> list[str]:
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                    "--clear-groups", *argv]
        return ["runuser", "-u", self.name, "--", *argv]

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            timeout: float = INTRUDER_TIMEOUT) -> subprocess.CompletedProcess[str]:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get("PYTHONPATH"):
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return subprocess.run(self.command(argv), env={**base, **(env or {})}, cwd="/",
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def intruder():
    """A system user that is not us, for the whole session; deleted at the end."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux (useradd, setpriv/runuser, /dev/shm)")
    if os.geteuid() != 0:
        pytest.skip("needs root, to create a throwaway user and run code as it")
    for tool in ("useradd", "userdel"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed: cannot make a throwaway user")
    if shutil.which("setpriv") is None and shutil.which("runuser") is None:
        pytest.skip("neither `setpriv` nor `runuser` is installed: cannot switch user")
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
                  if os.path.exists(s)), "/bin/false")
    name = f"shmbus-intruder-{secrets.token_hex(4)}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", shell, name],
        capture_output=True, text=True, timeout=60,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd {name} failed ({made.returncode}): {made.stderr.strip()}")
    try:
        entry = pwd.getpwnam(name)
        user = Intruder(name, entry.pw_uid, entry.pw_gid)
        probe = user.run([sys.executable, "-c",
                          "import sys, posix_ipc, shmbus; print(*sys.version_info[:2])"])
        if probe.returncode != 0:
            pytest.skip(
                f"user {name} cannot run {sys.executable} with shmbus importable "
                f"(is the interpreter or the checkout readable by others?): "
                f"{probe.stderr.strip()[-500:]}"
            )
        theirs = tuple(int(x) for x in probe.stdout.split())
        if theirs != sys.version_info[:2]:
            pytest.skip(f"user {name} gets Python {theirs} from {sys.executable}, not "
                        f"{sys.version_info[:2]} (is the interpreter readable by others?)")
        yield user
    finally:
        gone = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=60)
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
            "blob": _names.blob_name(token, 0),
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

    done = intruder.run([sys.executable, "-c", INTRUDER_SCRIPT, json.dumps(info)],
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

    for kind in ("control", "ring", "blob"):
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
    assert {f"sb_{token}", f"sb_{token}_r{sub.id:x}", f"sb_{token}_b0",
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
