"""The bridge to NATS JetStream and remote subscriptions, against a real nats-server.

Emitters and bridges run in their own processes where a death or a restart is what is
tested; every test gets a fresh server (`tests/nats_server.py`) on a free port with its
own store, stopped after the test.
"""

from __future__ import annotations

import importlib
import os
import queue
import signal
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmbus
from shmbus._errors import EventsLost, NatsUnavailable
from shmbus.nats import Bridge, RemoteSubscription, run_bridge
from tests import helpers
from tests.nats_server import NatsServer, free_port


# -- workers (forked) ---------------------------------------------------------------------


def bridge_worker(name: str, url: str, ready: Any, options: dict[str, Any]) -> None:
    run_bridge(name, url, on_ready=lambda: ready.put(os.getpid()), **options)


def remote_collector(url: str, ready: Any, out: Any) -> None:
    """Subscribe remotely; record events and lost ranges, in order, until the end."""
    seen: list[Any] = []
    with shmbus.subscribe(url) as sub:
        ready.put(url)
        while True:
            try:
                seen.append(sub.recv(timeout=30))
            except EventsLost as lost:
                seen.append(("lost", lost.first, lost.last))
            except shmbus.Closed:
                break
        reason = sub.end_reason.value if sub.end_reason else None
    out.put((seen, reason))


def remote_recorder(url: str, path: str, ready: Any) -> None:
    """Subscribe remotely and append each event's number to `path` as it is returned."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with shmbus.subscribe(url) as sub:
        ready.put(url)
        for event in sub:
            os.write(fd, b"%d\n" % event)  # unbuffered: a SIGKILL loses nothing written
    os.write(fd, b"end\n")


def paced_emitter(name: str, created: Any, go: Any, stop: Any, count: Any, out: Any) -> None:
    """Create the bus, then emit 0, 1, 2, ... (about 4 per ms) until told to stop."""
    emitter = shmbus.EventEmitter(name, capacity=64)
    created.put(name)
    go.wait(10)
    emitted = 0
    while not stop.is_set():
        emitter.emit(emitted)
        emitted += 1
        count.value = emitted
        if emitted % 4 == 0:
            time.sleep(0.001)
    emitter.close()
    out.put(emitted)


def emit_then_die(name: str, created: Any, go: Any, n: int) -> None:
    emitter = shmbus.EventEmitter(name)
    created.put(name)
    go.wait(10)
    for i in range(n):
        emitter.emit(i)
    os.kill(os.getpid(), signal.SIGKILL)


# -- helpers ------------------------------------------------------------------------------


def get(q: Any, what: str, timeout: float = 15.0) -> Any:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout} s") from None


def kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(5)


class Stream:
    """A paced emitter process and the knobs to drive it."""

    def __init__(self, name: str, procs: Any) -> None:
        ctx = helpers.context()
        self.created, self.go, self.stop = ctx.Queue(), ctx.Event(), ctx.Event()
        self.count, self.out = ctx.Value("q", 0), ctx.Queue()
        self.proc = procs(paced_emitter, name, self.created, self.go, self.stop, self.count,
                          self.out)
        get(self.created, "bus")

    def advance(self, events: int, timeout: float = 15.0) -> None:
        target = self.count.value + events
        helpers.wait_until(lambda: self.count.value >= target, timeout)

    def finish(self) -> int:
        self.stop.set()
        return int(get(self.out, "emitted count"))


_bridges: list[Any] = []


@pytest.fixture(autouse=True)
def bridges_finish(procs: Any, nats_server: NatsServer) -> Any:
    """Let the bridges a test started finish before `procs` kills what is left: a bridge
    still removing an ended bus when it is SIGKILLed leaves part of it to the next sweep,
    which the leak check would blame on the test.

    It holds `nats_server` too, so the server is stopped after this wait, not before it:
    a bridge finishing an ended bus stores its end marker first, and with its server
    gone it would retry until killed (2 runs in 12 failed that way)."""
    yield
    deadline = time.monotonic() + 15
    for proc in _bridges:
        proc.join(max(0.0, deadline - time.monotonic()))
    _bridges.clear()


def start_bridge(procs: Any, ready: Any, name: str, url: str, **options: Any) -> Any:
    proc = procs(bridge_worker, name, url, ready, options)
    _bridges.append(proc)
    return proc


def start_collectors(procs: Any, urls: list[str]) -> Any:
    ctx = helpers.context()
    ready, out = ctx.Queue(), ctx.Queue()
    for url in urls:
        procs(remote_collector, url, ready, out)
    for _ in urls:
        get(ready, "remote subscription")
    return out


# -- delivery -----------------------------------------------------------------------------


def test_two_remote_subscribers_get_every_event_in_order(nats_server: NatsServer,
                                                         procs: Any) -> None:
    name = "e2e"
    ready = helpers.context().Queue()
    with shmbus.EventEmitter(name) as emitter:
        bridge = start_bridge(procs, ready, name, nats_server.url)
        get(ready, "bridge")
        out = start_collectors(procs, [f"{nats_server.url}/{name}?durable=a",
                                       f"{nats_server.url}/{name}?durable=b"])
        events: list[Any] = [{"n": i, "pad": "x" * (i % 700)} for i in range(3000)]
        events.insert(1000, b"large" * 40_000)  # a shared-segment event on the bus
        for event in events:
            emitter.emit(event)
        emitter.emit(b"too large for NATS" * 100_000)  # over the server's 1 MB max_payload
        emitter.emit("after")
    expected = events + [("lost", len(events), len(events)), "after"]
    for _ in range(2):
        seen, reason = get(out, "remote results", 30)
        assert reason == "closed"
        assert len(seen) == len(expected)
        assert seen == expected
    bridge.join(10)
    assert bridge.exitcode == 0


def test_remote_subscription_interface(nats_server: NatsServer) -> None:
    name = "iface"
    url = f"{nats_server.url}/{name}?durable=w"
    with shmbus.EventEmitter(name) as emitter, Bridge(name, nats_server.url) as bridge:
        assert bridge.wait_ready(5)
        sub = shmbus.subscribe(url, capacity=8)
        assert isinstance(sub, RemoteSubscription)
        assert sub.name == url and sub.durable == "w" and sub.end_reason is None
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0.2)
        for i in range(100):
            emitter.emit(i)
        assert [sub.recv(timeout=5) for _ in range(10)] == list(range(10))
        batch: list[Any] = []
        while len(batch) < 5:
            batch += sub.recv_many(5 - len(batch), timeout=5)  # what is ready, at least 1
        assert batch == list(range(10, 15))
        sub.close()
        sub.close()
        with pytest.raises(shmbus.Closed):
            sub.recv(timeout=1)
        # A clean restart of the subscriber resumes after the last event it returned.
        with shmbus.subscribe(url) as again:
            assert [again.recv(timeout=5) for _ in range(85)] == list(range(15, 100))
            raised = helpers.closed_while_blocked(again.recv, again.close)
            assert raised and again.end_reason is shmbus.EndReason.UNSUBSCRIBED
        with shmbus.subscribe(url) as third:
            assert isinstance(third, RemoteSubscription)
            emitter.emit("last")
            emitter.close()
            assert list(third) == ["last"]
            assert third.end_reason is shmbus.EndReason.CLOSED
            with pytest.raises(shmbus.Closed):
                third.recv()
            third.forget()
    assert bridge.published == 101


def test_the_emitters_death_ends_remote_subscriptions_with_emitter_died(
        nats_server: NatsServer, procs: Any) -> None:
    name = "dies"
    ctx = helpers.context()
    created, go = ctx.Queue(), ctx.Event()
    procs(emit_then_die, name, created, go, 50)
    get(created, "bus")
    with Bridge(name, nats_server.url) as bridge:
        assert bridge.wait_ready(5)
        with shmbus.subscribe(f"{nats_server.url}/{name}") as sub:
            go.set()
            assert [sub.recv(timeout=10) for _ in range(50)] == list(range(50))
            with pytest.raises(shmbus.EmitterDied):
                sub.recv(timeout=10)
            assert sub.end_reason is shmbus.EndReason.EMITTER_DIED


def test_the_bridge_carries_events_as_they_lay_in_shared_memory(
        nats_server: NatsServer, procs: Any, tmp_path: Any, monkeypatch: Any) -> None:
    name = "opaque"
    (tmp_path / "only_here.py").write_text(textwrap.dedent("""
        class Point:
            def __init__(self, x):
                self.x = x

            def __eq__(self, other):
                return isinstance(other, Point) and other.x == self.x
    """))
    ready = helpers.context().Queue()
    with shmbus.EventEmitter(name) as emitter:
        start_bridge(procs, ready, name, nats_server.url)  # forked before only_here exists
        get(ready, "bridge")
        monkeypatch.syspath_prepend(str(tmp_path))
        point = importlib.import_module("only_here").Point
        with shmbus.subscribe(f"{nats_server.url}/{name}") as sub:
            events = [point(1), np.arange(100_000), point(2)]  # the array is laid out
            for event in events:
                emitter.emit(event)
            # The bridge could not have unpickled the points: it forwards the bytes.
            received = [sub.recv(timeout=5) for _ in events]
            assert received[0] == point(1) and received[2] == point(2)
            assert np.array_equal(received[1], events[1])


# -- backpressure -------------------------------------------------------------------------


def test_a_stalled_remote_subscriber_blocks_the_local_emitter(nats_server: NatsServer,
                                                              procs: Any) -> None:
    name = "slow"
    ready = helpers.context().Queue()
    with shmbus.EventEmitter(name, capacity=8) as emitter:
        start_bridge(procs, ready, name, nats_server.url, max_msgs=32, capacity=8)
        get(ready, "bridge")
        with shmbus.subscribe(f"{nats_server.url}/{name}?durable=slow", capacity=4) as sub:
            emitted = 0
            with pytest.raises(shmbus.Timeout):
                while emitted < 2000:
                    emitter.emit(emitted, timeout=1.0)
                    emitted += 1
            # The stream (32), the subscriber's prefetch, the bridge's ring and batch and
            # the emitter's ring: a few dozen events, then the emitter waits.
            assert 32 <= emitted < 200
            # Once it reads, everything arrives, and the emitter runs again.
            received: list[Any] = []
            reader = threading.Thread(target=lambda: received.extend(sub))
            reader.start()
            for i in range(emitted, emitted + 300):
                emitter.emit(i, timeout=10)
            emitter.close()
            reader.join(20)
            assert received == list(range(emitted + 300))


# -- failures -----------------------------------------------------------------------------


def test_killing_the_publishing_bridge_loses_nothing_with_a_standby(
        nats_server: NatsServer, procs: Any) -> None:
    name = "ha"
    stream = Stream(name, procs)
    ready = helpers.context().Queue()
    first = start_bridge(procs, ready, name, nats_server.url)
    assert get(ready, "leader") == first.pid
    second = start_bridge(procs, ready, name, nats_server.url)
    out = start_collectors(procs, [f"{nats_server.url}/{name}?durable=ha"])
    stream.go.set()
    assert get(ready, "standby") == second.pid  # it covers everything the leader lacks
    stream.advance(1000)
    kill(first)  # mid-stream: the emitter keeps emitting
    third = start_bridge(procs, ready, name, nats_server.url)
    assert get(ready, "new standby") == third.pid
    stream.advance(1000)
    kill(second)
    stream.advance(1000)
    emitted = stream.finish()
    seen, reason = get(out, "remote results", 30)
    assert reason == "closed"
    assert len(seen) == emitted
    assert seen == list(range(emitted))


def test_a_lone_durable_bridge_killed_and_restarted_loses_nothing(
        nats_server: NatsServer, procs: Any) -> None:
    name = "lone"
    stream = Stream(name, procs)
    ready = helpers.context().Queue()
    # A ring that holds a whole burst and more: the bridge may be a burst behind when it
    # is killed, and the 30 events emitted while none runs must still find room.
    bridge = start_bridge(procs, ready, name, nats_server.url, capacity=2048)
    get(ready, "bridge")
    out = start_collectors(procs, [f"{nats_server.url}/{name}?durable=lone"])
    stream.go.set()
    for restart in range(5):
        stream.advance(500)
        kill(bridge)  # mid-stream, with events taken and not yet stored
        stream.advance(30)  # emitted with no bridge: its durable subscription keeps them
        bridge = start_bridge(procs, ready, name, nats_server.url, capacity=2048)
        get(ready, f"restarted bridge {restart}")
    stream.advance(500)
    emitted = stream.finish()
    seen, reason = get(out, "remote results", 30)
    assert reason == "closed"
    assert seen == list(range(emitted))  # no gap, no repeat, nothing reported lost
    bridge.join(10)
    assert bridge.exitcode == 0


def test_a_lone_bridge_that_is_not_durable_reports_exactly_what_it_missed(
        nats_server: NatsServer, procs: Any) -> None:
    name = "lone"
    stream = Stream(name, procs)
    ready = helpers.context().Queue()
    first = start_bridge(procs, ready, name, nats_server.url, durable=False)
    get(ready, "bridge")
    out = start_collectors(procs, [f"{nats_server.url}/{name}?durable=lone"])
    stream.go.set()
    stream.advance(1000)
    kill(first)
    stream.advance(500)  # emitted with no bridge subscribed: the bus cannot keep them
    start_bridge(procs, ready, name, nats_server.url, durable=False)
    get(ready, "restarted bridge")
    stream.advance(1000)
    emitted = stream.finish()
    seen, reason = get(out, "remote results", 30)
    assert reason == "closed"
    received = [event for event in seen if not isinstance(event, tuple)]
    gaps = [event for event in seen if isinstance(event, tuple)]
    assert len(gaps) == 1, gaps
    _, first_lost, last_lost = gaps[0]
    assert last_lost - first_lost + 1 >= 500
    # Nothing repeated, nothing out of order, and every event either arrived or was
    # reported lost, once.
    assert received == sorted(set(received))
    assert received[0] == 0
    assert sorted(received + list(range(first_lost, last_lost + 1))) == list(range(emitted))


def test_a_remote_subscriber_killed_and_restarted_resumes_where_it_was(
        nats_server: NatsServer, procs: Any, tmp_path: Any) -> None:
    name = "resume"
    stream = Stream(name, procs)
    ready = helpers.context().Queue()
    start_bridge(procs, ready, name, nats_server.url)
    get(ready, "bridge")
    url = f"{nats_server.url}/{name}?durable=resume"
    before, after = str(tmp_path / "before"), str(tmp_path / "after")
    first = procs(remote_recorder, url, before, ready)
    get(ready, "remote subscription")
    stream.go.set()
    helpers.wait_until(lambda: len(lines(before)) >= 1000, 15)
    kill(first)  # mid-stream, its last acknowledgements possibly in flight
    stream.advance(500)
    procs(remote_recorder, url, after, ready)
    get(ready, "restarted remote subscription")
    stream.advance(500)
    emitted = stream.finish()
    helpers.wait_until(lambda: lines(after)[-1:] == ["end"], 15)
    seen_before = [int(line) for line in lines(before)]
    seen_after = [int(line) for line in lines(after)[:-1]]
    assert seen_before == list(range(len(seen_before)))
    # It resumes after the last acknowledgement the server got, so nothing is skipped
    # but the one event the recorder may have been handed and killed before writing down
    # (as with a local subscriber killed right after recv), and only events whose
    # acknowledgement the killed process had not yet sent come again: at most the
    # consumer's max_ack_pending (twice a remote subscription's capacity of 256).
    assert seen_after == list(range(seen_after[0], emitted))
    assert len(seen_before) - 512 <= seen_after[0] <= len(seen_before) + 1, (
        len(seen_before), seen_after[0])


def lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return []


def test_nats_server_restarts_mid_stream_lose_nothing(nats_server: NatsServer,
                                                        procs: Any) -> None:
    name = "restart"
    stream = Stream(name, procs)
    ready = helpers.context().Queue()
    start_bridge(procs, ready, name, nats_server.url)
    get(ready, "bridge")
    out = start_collectors(procs, [f"{nats_server.url}/{name}?durable=r1",
                                   f"{nats_server.url}/{name}?durable=r2"])
    stream.go.set()
    stream.advance(1000)
    nats_server.restart()  # a clean shutdown; the stream and its consumers are on disk
    stream.advance(1000)
    nats_server.kill()  # and a crash of the server process
    nats_server.start()
    stream.advance(1000)
    emitted = stream.finish()
    for _ in range(2):
        seen, reason = get(out, "remote results", 30)
        assert reason == "closed"
        assert len(seen) == emitted
        assert seen == list(range(emitted))


def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with shmbus.EventEmitter("nowhere"):
        started = time.monotonic()
        with pytest.raises(NatsUnavailable) as bridge_error:
            run_bridge("nowhere", url)
        with pytest.raises(NatsUnavailable) as remote_error:
            shmbus.subscribe(f"{url}/nowhere")
        assert time.monotonic() - started < 10
    for error in (bridge_error.value, remote_error.value):
        assert url in str(error) and "nats-server -js" in str(error)
    secret = url.replace("nats://", "nats://me:s3cret@")
    with pytest.raises(NatsUnavailable) as with_password:
        shmbus.subscribe(f"{secret}/nowhere")
    assert "me:***@" in str(with_password.value) and "s3cret" not in str(with_password.value)


def test_a_bridge_to_a_bus_that_does_not_exist_says_so(nats_server: NatsServer) -> None:
    with pytest.raises(shmbus.BusNotFound):
        run_bridge("absent", nats_server.url)


def test_a_bridge_stopped_from_python_lets_a_new_one_carry_on(nats_server: NatsServer) -> None:
    name = "handover"
    with shmbus.EventEmitter(name) as emitter:
        with shmbus.subscribe(f"{nats_server.url}/{name}") as sub:
            with Bridge(name, nats_server.url) as bridge:
                assert bridge.wait_ready(5)
                for i in range(100):
                    emitter.emit(i)
                assert [sub.recv(timeout=5) for _ in range(100)] == list(range(100))
            assert bridge.published == 100
            with Bridge(name, nats_server.url) as again:
                assert again.wait_ready(5)
                emitter.emit(100)
                assert sub.recv(timeout=5) == 100
                emitter.close()
                with pytest.raises(shmbus.Closed):
                    sub.recv(timeout=10)
            assert again.published == 1
