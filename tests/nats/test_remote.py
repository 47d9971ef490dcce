"""`RemoteSubscription` (`shmbus/nats/_remote.py`), against a real nats-server.

The asyncio half, the lifecycle it shares with every handle, thread safety (close from
another thread, two receiving threads), `wait=`, and durable consumers re-attached.
The close-while-waiting stress runs in a child process, so that a crash shows as its
exit status rather than taking the test run down.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import shmbus
from shmbus.nats import RemoteSubscription, subscribe_remote
from tests import helpers
from tests.nats_server import NatsServer, free_port


def remote_loops(bus: str) -> list[str]:
    """The event-loop threads of remote subscriptions to `bus` alive in this process."""
    return [t.name for t in threading.enumerate() if t.name == f"shmbus-remote-{bus}"]


def emit_then_die(name: str, created: Any, go: Any, n: int) -> None:
    import signal

    emitter = shmbus.EventEmitter(name)
    created.put(name)
    go.wait(10)
    for i in range(n):
        emitter.emit(i)
    os.kill(os.getpid(), signal.SIGKILL)


# -- the Subscription protocol ------------------------------------------------------------


def test_a_remote_subscription_is_a_subscription(bridged: Any) -> None:
    bus = bridged("proto")
    with shmbus.subscribe(bus.url()) as sub:
        assert isinstance(sub, RemoteSubscription)
        assert isinstance(sub, shmbus.Subscription)
        assert not sub.closed
    assert sub.closed


def test_arecv_arecv_many_and_async_for(bridged: Any) -> None:
    bus = bridged("async")

    async def main() -> tuple[Any, list[Any], list[Any], Any]:
        async with shmbus.subscribe(bus.url()) as sub:
            for i in range(50):
                bus.emitter.emit(i)
            bus.emitter.close()
            first = await sub.arecv(timeout=5)
            batch: list[Any] = []
            while len(batch) < 9:
                batch += await sub.arecv_many(9 - len(batch), timeout=5)
            rest = [event async for event in sub]  # ends quietly: the bus was closed
            return first, batch, rest, sub.end_reason

    first, batch, rest, reason = asyncio.run(main())
    assert first == 0 and batch == list(range(1, 10)) and rest == list(range(10, 50))
    assert reason is shmbus.EndReason.CLOSED


def test_arecv_lets_the_event_loop_run_while_it_waits(bridged: Any) -> None:
    bus = bridged("idle")

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        with shmbus.subscribe(bus.url()) as sub:
            with pytest.raises(shmbus.Timeout):
                await sub.arecv(timeout=0.5)
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) >= 20


def test_a_cancelled_arecv_consumes_nothing(bridged: Any) -> None:
    bus = bridged("cancel")
    count = 400

    async def main() -> list[Any]:
        received: list[Any] = []
        with shmbus.subscribe(bus.url(), capacity=16) as sub:
            waiting = asyncio.ensure_future(sub.arecv())
            await asyncio.sleep(0.2)
            waiting.cancel()
            feeder = threading.Thread(target=feed)
            feeder.start()
            # Cut off at random moments, waiting or not: every event still comes once.
            while len(received) < count:
                try:
                    received.append(await asyncio.wait_for(sub.arecv(),
                                                           random.uniform(0, 0.003)))
                except asyncio.TimeoutError:
                    pass
            feeder.join()
        return received

    def feed() -> None:
        for i in range(count):
            bus.emitter.emit(i)
            if i % 50 == 0:
                time.sleep(0.01)

    assert asyncio.run(main()) == list(range(count))


def test_iteration_raises_emitter_died_when_the_emitter_died(nats_server: NatsServer,
                                                             procs: Any) -> None:
    name = "died"
    ctx = helpers.context()
    created, go = ctx.Queue(), ctx.Event()
    procs(emit_then_die, name, created, go, 30)
    created.get(timeout=15)
    with shmbus.nats.Bridge(name, nats_server.url) as bridge:
        assert bridge.wait_ready(5)
        sync_sub = shmbus.subscribe(f"{nats_server.url}/{name}")
        async_sub = shmbus.subscribe(f"{nats_server.url}/{name}")
        go.set()
        received: list[Any] = []
        with sync_sub, pytest.raises(shmbus.EmitterDied):
            for event in sync_sub:
                received.append(event)
        assert received == list(range(30))
        assert sync_sub.end_reason is shmbus.EndReason.EMITTER_DIED

        async def main() -> list[Any]:
            events: list[Any] = []
            async with async_sub:
                with pytest.raises(shmbus.EmitterDied):
                    async for event in async_sub:
                        events.append(event)
            return events

        assert asyncio.run(main()) == list(range(30))
        assert async_sub.end_reason is shmbus.EndReason.EMITTER_DIED


# -- the lifecycle of a handle ------------------------------------------------------------


def test_a_remote_subscription_inherited_through_fork_is_the_parents(
        bridged: Any, procs: Any) -> None:
    bus = bridged("forked")
    sub = shmbus.subscribe(bus.url())

    def child(out: Any) -> None:
        try:
            sub.recv(timeout=1)
            out.put("received")
        except shmbus.Closed:
            out.put("closed")
        except shmbus.ShmBusError as exc:
            sub.close()  # lets go only: the parent's connection and consumer stay
            out.put("inherited" if "fork" in str(exc) else repr(exc))

    out = helpers.context().Queue()
    proc = procs(child, out)
    assert out.get(timeout=15) == "inherited"
    proc.join(10)
    bus.emitter.emit("after the child")
    assert sub.recv(timeout=5) == "after the child"
    sub.close()
    assert not remote_loops(bus.name)


def test_a_remote_subscription_left_open_is_closed_at_exit(bridged: Any) -> None:
    bus = bridged("atexit")
    url = bus.url(durable="left")
    # The child takes 5 events and exits without close(): the exit hook must send their
    # acknowledgements, or they would come again below.
    script = textwrap.dedent(f"""
        import shmbus
        sub = shmbus.subscribe({url!r})
        print("ready", flush=True)
        assert [sub.recv(timeout=10) for _ in range(5)] == list(range(5))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for i in range(10):
            bus.emitter.emit(i)
        assert child.wait(30) == 0
    finally:
        child.kill()
        child.wait()
    with shmbus.subscribe(url) as again:
        assert again.recv(timeout=5) == 5
        again.forget()


def test_close_is_idempotent_and_safe_from_two_threads_at_once(bridged: Any) -> None:
    bus = bridged("twice")
    for _ in range(5):
        sub = shmbus.subscribe(bus.url())
        closers = [threading.Thread(target=sub.close) for _ in range(2)]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(10)
        sub.close()
        assert sub.closed and sub.end_reason is shmbus.EndReason.UNSUBSCRIBED
        with pytest.raises(shmbus.Closed):
            sub.recv(timeout=0)
    assert not remote_loops(bus.name)


def test_close_from_the_same_event_loop_ends_a_waiting_arecv(bridged: Any) -> None:
    bus = bridged("sameloop")

    async def main() -> BaseException | None:
        sub = shmbus.subscribe(bus.url())
        waiting = asyncio.ensure_future(sub.arecv())
        await asyncio.sleep(0.2)
        sub.close()
        done, _ = await asyncio.wait({waiting}, timeout=1)
        return waiting.exception() if done else None

    assert isinstance(asyncio.run(main()), shmbus.Closed)
    assert not remote_loops(bus.name)


# -- thread safety ------------------------------------------------------------------------


def close_while_waiting(url: str, bus: str, mode: str, rounds: int, out: Any) -> None:
    """Child: receive on one thread (`recv` or `arecv`), close() from this one; report."""
    import shmbus as bus_lib

    failures: list[str] = []
    received = 0
    for round_ in range(rounds):
        sub = bus_lib.subscribe(url)
        ended: queue.Queue[tuple[BaseException | None, float]] = queue.Queue()
        tally = [0]  # events received this round

        def receive() -> None:
            try:
                if mode == "arecv":
                    asyncio.run(_areceive_forever(sub, tally))
                else:
                    while True:
                        sub.recv(timeout=30)
                        tally[0] += 1
            except BaseException as exc:
                ended.put((exc, time.monotonic()))

        receiver = threading.Thread(target=receive)
        receiver.start()
        time.sleep(random.uniform(0, 0.1))
        closing = time.monotonic()
        sub.close()
        try:
            error, at = ended.get(timeout=5)
        except queue.Empty:
            failures.append(f"round {round_}: {mode} still waits 5 s after close()")
            break
        receiver.join(5)
        if type(error) is not bus_lib.Closed:
            failures.append(f"round {round_}: {mode} ended with {error!r}, not Closed")
        if at - closing > 1.0:
            failures.append(f"round {round_}: {mode} ended {at - closing:.2f} s after close()")
        if remote_loops(bus):
            failures.append(f"round {round_}: loop threads left: {remote_loops(bus)}")
        received += tally[0]
    out.put((failures, received))


async def _areceive_forever(sub: Any, tally: list[int]) -> None:
    while True:
        await sub.arecv(timeout=30)
        tally[0] += 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["recv", "arecv"])
def test_close_from_another_thread_ends_a_waiting_call_at_once(
        bridged: Any, procs: Any, mode: str) -> None:
    bus = bridged(f"close-{mode}")
    stop = threading.Event()

    def feed() -> None:  # events flowing while subscriptions come and go, with pauses
        emitted = 0
        while not stop.is_set():
            bus.emitter.emit(emitted, timeout=10)
            emitted += 1
            if emitted % 20 == 0:
                time.sleep(random.choice([0.001, 0.05]))

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        out = helpers.context("spawn").Queue()
        child = procs(close_while_waiting, bus.url(), bus.name, mode, 25, out, ctx="spawn")
        child.join(100)
        assert child.exitcode == 0, f"the child ended with {child.exitcode}"
        failures, received = out.get(timeout=5)
        assert failures == []
        assert received > 100  # it was closed while events flowed, not only while idle
    finally:
        stop.set()
        feeder.join(15)


@pytest.mark.timeout(120)
def test_threads_receiving_at_once_get_every_event_once(bridged: Any) -> None:
    bus = bridged("shared", capacity=64)
    count = 6000
    sub = shmbus.subscribe(bus.url(), capacity=32)
    results: dict[str, list[Any]] = {}
    errors: list[BaseException] = []

    def with_recv() -> list[Any]:
        return list(sub)

    def with_recv_many() -> list[Any]:
        got: list[Any] = []
        while True:
            try:
                got += sub.recv_many(7, timeout=30)
            except shmbus.Closed:
                return got

    def with_arecv_many() -> list[Any]:
        async def main() -> list[Any]:
            got: list[Any] = []
            while True:
                try:
                    got += await sub.arecv_many(5, timeout=30)
                except shmbus.Closed:
                    return got
        return asyncio.run(main())

    def run(name: str, body: Any) -> None:
        try:
            results[name] = body()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(body.__name__, body))
               for body in (with_recv, with_recv_many, with_arecv_many)]
    for thread in threads:
        thread.start()
    for i in range(count):
        bus.emitter.emit(i, timeout=10)
    bus.finish()
    for thread in threads:
        thread.join(60)
    sub.close()
    assert not errors, errors
    everything = [event for got in results.values() for event in got]
    assert sorted(everything) == list(range(count))  # none twice, none lost
    for name, got in results.items():
        assert got == sorted(got), f"{name} received out of order"
    assert sum(1 for got in results.values() if got) >= 2, {
        name: len(got) for name, got in results.items()}  # they did take turns


# -- waiting for the server ---------------------------------------------------------------


def test_wait_lets_a_subscriber_start_before_the_server_and_its_bridge(
        nats_server: NatsServer) -> None:
    nats_server.stop()
    name = "early"
    url = f"{nats_server.url}/{name}?durable=early"
    subscribed: queue.Queue[Any] = queue.Queue()

    def subscriber() -> None:
        try:
            subscribed.put(shmbus.subscribe(url, wait=30))
        except BaseException as exc:
            subscribed.put(exc)

    thread = threading.Thread(target=subscriber)
    thread.start()
    time.sleep(1.0)
    assert subscribed.empty(), "it should still be waiting for the server"
    nats_server.start()
    thread.join(15)
    sub = subscribed.get(timeout=1)
    assert isinstance(sub, RemoteSubscription), sub
    with sub, shmbus.EventEmitter(name) as emitter, \
            shmbus.nats.Bridge(name, nats_server.url) as bridge:
        assert bridge.wait_ready(5)
        for i in range(20):
            emitter.emit(i)
        assert [sub.recv(timeout=5) for _ in range(20)] == list(range(20))
        sub.forget()


def test_wait_gives_up_with_the_usual_error() -> None:
    url = f"nats://me:s3cret@127.0.0.1:{free_port()}/nowhere"
    started = time.monotonic()
    with pytest.raises(shmbus.NatsUnavailable) as raised:
        subscribe_remote(url, wait=0.6)
    assert 0.6 <= time.monotonic() - started < 5
    message = str(raised.value)
    assert "waited 0.6 s" in message and "nats-server -js" in message
    assert "s3cret" not in message and "me:***@" in message
    for wrong in (-1, "1", None, float("nan")):
        with pytest.raises(shmbus.InvalidArgument):
            subscribe_remote(url, wait=wrong)  # type: ignore[arg-type]


# -- durable consumers --------------------------------------------------------------------


def read_until(sub: Any, count: int, max_n: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < count:
        got += sub.recv_many(min(max_n, count - len(got)), timeout=5)
    return got


@pytest.mark.parametrize("ending", ["closed", "emitter died"])
@pytest.mark.parametrize("first_reads", ["part", "every event, looking ahead"])
def test_a_durable_subscriber_reattached_after_the_end_marker_ends_at_once(
        nats_server: NatsServer, procs: Any, ending: str, first_reads: str) -> None:
    name = "reattach"
    url = f"{nats_server.url}/{name}?durable=again"
    ctx = helpers.context()
    created, go = ctx.Queue(), ctx.Event()
    if ending == "emitter died":
        procs(emit_then_die, name, created, go, 200)
        created.get(timeout=15)
        emitter = None
    else:
        emitter = shmbus.EventEmitter(name)
    bridge = shmbus.nats.Bridge(name, nats_server.url)
    runner = threading.Thread(target=bridge.run)
    runner.start()
    try:
        assert bridge.wait_ready(10)
        first = shmbus.subscribe(url)
        if emitter is not None:
            for i in range(200):
                emitter.emit(i)
            emitter.close()
        go.set()
        runner.join(15)  # the bus ended, and the bridge stored its end marker
        assert not runner.is_alive()
        if first_reads == "part":
            got = read_until(first, 120, 10)
        else:
            got = read_until(first, 150, 10)
            time.sleep(0.5)  # everything, end marker included, is fetched by now
            got += first.recv_many(1000, timeout=5)  # looks ahead at the end marker
        first.close()
        with shmbus.subscribe(url) as second:
            got += read_until(second, 200 - len(got), 1000)
            assert got == list(range(200))
            started = time.monotonic()
            expected = shmbus.EmitterDied if ending == "emitter died" else shmbus.Closed
            with pytest.raises(expected):
                second.recv(timeout=10)
            assert time.monotonic() - started < 1.0
            assert second.end_reason is not None and second.end_reason.value == ending
            second.forget()
    finally:
        bridge.stop(5)
        runner.join(5)
        if emitter is not None:
            emitter.close()
