"""Which core runs (`_core`), and processes running different cores on one bus.

Every process picks its core when it imports shmbus (`SHMBUS_CORE`, or the compiled one
when it was built), so these tests start fresh interpreters: an emitter on one core and
subscribers on the other, in both directions, through full rings, sleeping subscribers,
batches and a large event.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import shmbus
from shmbus import _core

BUILT = importlib.util.find_spec("shmbus._ringcore") is not None
NEEDS_C = pytest.mark.skipif(not BUILT, reason="shmbus._ringcore was not built")
RUN_TIMEOUT = 60
HIDE_RINGCORE = "import sys; sys.modules['shmbus._ringcore'] = None  # as if never built\n"


def run_python(code: str, core: str | None, hide: bool = False
               ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != _core.CORE_ENV}
    if core is not None:
        env[_core.CORE_ENV] = core
    return subprocess.run([sys.executable, "-c", (HIDE_RINGCORE if hide else "") + code],
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_the_core_in_use_is_public_and_one_of_two() -> None:
    assert shmbus.CORE == _core.NAME and shmbus.CORE in ("c", "python")
    assert "CORE" in shmbus.__all__


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("wanted", [pytest.param("c", marks=NEEDS_C), "python"])
def test_shmbus_core_picks_the_core(wanted: str) -> None:
    done = run_python(
        "import shmbus\n"
        "with shmbus.EventEmitter() as em, em.subscribe() as sub:\n"
        "    print(shmbus.CORE, type(em._fanout).__module__, type(sub._reader).__module__)",
        wanted)
    assert done.returncode == 0, done.stderr
    module = "shmbus._ringcore" if wanted == "c" else "shmbus._protocol"
    assert done.stdout.split() == [wanted, module, module]


@NEEDS_C
def test_use_switches_the_core_of_what_is_opened_next() -> None:
    before = _core.NAME
    try:
        for name in ("python", "c"):
            _core.use(name)
            with shmbus.EventEmitter() as em, em.subscribe() as sub:
                assert shmbus.CORE == name and type(em._fanout) is _core.Fanout
                assert type(sub._reader) is _core.Reader
                em.emit(name)
                assert sub.recv(timeout=1) == name
    finally:
        _core.use(before)


@pytest.mark.timeout(RUN_TIMEOUT)
def test_without_the_compiled_core_the_python_one_runs_unasked() -> None:
    done = run_python("import shmbus; print(shmbus.CORE)", None, hide=True)
    assert (done.returncode, done.stdout.strip()) == (0, "python"), done.stderr


@pytest.mark.timeout(RUN_TIMEOUT)
def test_asking_for_the_compiled_core_where_it_was_not_built_says_how_to_fix_it() -> None:
    done = run_python("import shmbus", "c", hide=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: SHMBUS_CORE=c, but the compiled core"), last
    assert "reinstall shmbus where a C compiler is found" in last
    assert "unset SHMBUS_CORE to run the pure-Python one" in last


@pytest.mark.timeout(RUN_TIMEOUT)
def test_an_unknown_core_is_refused_by_name() -> None:
    done = run_python("import shmbus", "fortran")
    assert done.returncode == 1
    assert "SHMBUS_CORE='fortran' is not a core; use 'c' or 'python'" in done.stderr


# -- one bus, two cores ----------------------------------------------------------------

EMITTER = textwrap.dedent("""
    import json, sys, time
    import shmbus
    name, subscribers = sys.argv[1], int(sys.argv[2])
    with shmbus.EventEmitter(name, capacity=16) as em:
        em.wait_for_subscribers(subscribers, timeout=30)
        n = 0
        for i in range(600):                     # one by one, through full rings
            em.emit({"n": n, "pad": "x" * (i % 300)}, timeout=30)
            n += 1
            if i % 150 == 0:
                time.sleep(0.05)                 # the subscribers fall asleep meanwhile
        em.emit_many(({"n": n + i} for i in range(500)), timeout=30)  # in batches
        n += 500
        em.emit({"n": n, "blob": bytes(200_000)}, timeout=30)  # a large event
        n += 1
        print(json.dumps({"core": shmbus.CORE, "sent": n}), flush=True)
""")

SUBSCRIBER = textwrap.dedent("""
    import json, sys, time
    import shmbus
    sub = shmbus.subscribe(sys.argv[1], wait=30, capacity=16)
    got, ok = 0, True
    try:
        while True:
            events = sub.recv_many(7, timeout=30) if got % 3 else [sub.recv(timeout=30)]
            for event in events:
                ok = ok and event["n"] == got and ("blob" not in event or
                                                   event["blob"] == bytes(200_000))
                got += 1
            if got % 200 < 7:
                time.sleep(0.02)                 # a slow moment: the emitter sleeps
    except shmbus.Closed as end:
        ok = ok and not isinstance(end, shmbus.EmitterDied)
    sub.close()
    print(json.dumps({"core": shmbus.CORE, "got": got, "ok": ok}), flush=True)
""")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts: killed and reaped at the end, pass or fail."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    shmbus.cleanup()  # what a killed one left behind, so that the leak check is exact


def start(procs: list[subprocess.Popen[str]], script: str, core: str, *args: str
          ) -> subprocess.Popen[str]:
    env = {**os.environ, _core.CORE_ENV: core}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def finished(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    report: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return report


@NEEDS_C
@pytest.mark.timeout(2 * RUN_TIMEOUT)
@pytest.mark.parametrize("emitter_core,subscriber_core", [("c", "python"), ("python", "c")])
def test_an_emitter_and_subscribers_on_different_cores_share_a_bus(
        started: list[subprocess.Popen[str]], emitter_core: str, subscriber_core: str,
        wait_mode: str) -> None:
    name = f"mixed-{emitter_core}"
    emitter = start(started, EMITTER, emitter_core, name, "2")
    subscribers = [start(started, SUBSCRIBER, subscriber_core, name) for _ in range(2)]
    sent = finished(emitter)
    assert sent == {"core": emitter_core, "sent": 1101}
    for sub in subscribers:
        assert finished(sub) == {"core": subscriber_core, "got": 1101, "ok": True}
