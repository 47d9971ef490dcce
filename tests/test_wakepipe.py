"""asyncio: aemit, arecv and `async for`, which wait on wake pipes instead of semaphores.

Each test runs its coroutine with `asyncio.run`, against real processes on the other side
where it matters, and checks the loop kept running (a ticker task) while a call waited.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from typing import Any

import pytest

import shmbus
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode"), pytest.mark.timeout(60)]


class Ticker:
    """A task that counts event-loop turns of 1 ms while it runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self._task.cancel()


def _read_slowly(name: str, count: int, out: Any, ready: Any) -> None:
    with shmbus.subscribe(name) as sub:
        ready.put(sub.id)
        got = []
        for _ in range(count):
            got.append(sub.recv(timeout=10))
            time.sleep(0.001)
        out.put(got)


def _emit_from_another_process(name: str, count: int, ready: Any, pause: float = 0) -> None:
    with shmbus.EventEmitter(name, capacity=8) as em:
        ready.put("created")
        while em.subscriber_count == 0:
            time.sleep(0.01)
        for i in range(count):
            em.emit({"i": i})
            if pause and i % 10 == 0:
                time.sleep(pause)


def test_aemit_waits_for_a_slow_subscriber_without_blocking_the_loop(procs):
    async def main() -> None:
        with shmbus.EventEmitter("aemit", capacity=4) as em:
            out, ready = helpers.context().Queue(), helpers.context().Queue()
            procs(_read_slowly, "aemit", 200, out, ready)
            ready.get(timeout=10)
            ticker = Ticker()
            threads = threading.active_count()
            started = time.monotonic()
            for i in range(200):
                assert await em.aemit(i) == 1
                assert threading.active_count() == threads  # no thread per call
            ticker.stop()
            # The reader wakes aemit's pipe as soon as there is room (about 0.25 s in
            # all); were aemit left to its 0.1 s slices, its 50 waits would take 5 s.
            assert time.monotonic() - started < 2.5
            # 200 events at 1 ms each, at most 4 ahead: the loop turned all along.
            assert ticker.ticks >= 50
            assert out.get(timeout=10) == list(range(200))

    asyncio.run(main())


def test_async_for_reads_a_bus_of_another_process_to_its_end(procs):
    async def main() -> None:
        ready = helpers.context().Queue()
        emitter = procs(_emit_from_another_process, "afor", 500, ready)
        ready.get(timeout=10)
        sub = shmbus.subscribe("afor")
        ticker = Ticker()
        got = [event["i"] async for event in sub]
        ticker.stop()
        emitter.join(10)  # it still removes its bus after the end: not killed doing so
        assert emitter.exitcode == 0
        assert got == list(range(500))
        assert sub.end_reason is shmbus.EndReason.CLOSED
        assert ticker.ticks >= 1
        sub.close()

    asyncio.run(main())


def test_a_waiting_arecv_costs_no_cpu_and_wakes_at_once():
    async def main() -> None:
        with shmbus.EventEmitter("idle") as em, em.subscribe() as sub:
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            sent_at: list[float] = []

            def emit_later() -> None:
                sent_at.append(time.monotonic())
                em.emit("wake")

            loop.call_later(0.55, emit_later)  # between two of its 0.1 s slices
            cpu = time.process_time()
            assert await sub.arecv(timeout=5) == "wake"
            woke_after = time.monotonic() - sent_at[0]
            spent = time.process_time() - cpu
            assert spent < 0.1, f"arecv used {spent:.3f} s of CPU in 0.5 s of waiting"
            assert woke_after < 0.03, f"arecv woke {woke_after * 1000:.0f} ms after emit"

    asyncio.run(main())


def test_cancelling_aemit_sends_nothing_and_cancelling_arecv_consumes_nothing():
    async def main() -> None:
        with shmbus.EventEmitter("cancel", capacity=2) as em, em.subscribe() as sub:
            await em.aemit(1)
            await em.aemit(2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(em.aemit("never"), 0.2)  # the ring is full
            assert await sub.arecv_many(10, timeout=1) == [1, 2]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.arecv(), 0.2)  # nothing to read
            await em.aemit(3)
            assert await sub.arecv(timeout=1) == 3

    asyncio.run(main())


def test_random_cancellations_lose_and_duplicate_nothing(procs):
    async def main() -> None:
        ready = helpers.context().Queue()
        emitter = procs(_emit_from_another_process, "storm", 2000, ready, 0.002)
        ready.get(timeout=10)
        sub = shmbus.subscribe("storm")
        rng = random.Random(7)
        got: list[int] = []
        cancelled = 0
        while True:
            task = asyncio.ensure_future(sub.arecv())
            done, _ = await asyncio.wait({task}, timeout=rng.choice([0, 0.0001, 0.001, 0.01]))
            if not done:
                task.cancel()
                cancelled += 1
            try:
                got.append((await task)["i"])
            except asyncio.CancelledError:
                pass
            except shmbus.Closed:
                break
        sub.close()
        assert got == list(range(2000))
        assert cancelled >= 20
        emitter.join(10)  # it still removes its bus after the end: not killed doing so
        assert emitter.exitcode == 0

    asyncio.run(main())


def test_timeouts_raise_timeout():
    async def main() -> None:
        with shmbus.EventEmitter("atimeout", capacity=1) as em, em.subscribe() as sub:
            with pytest.raises(shmbus.Timeout):
                await sub.arecv(timeout=0.1)
            await em.aemit("fills the ring")
            started = time.monotonic()
            with pytest.raises(shmbus.Timeout, match="subscriber"):
                await em.aemit("no room", timeout=0.2)
            assert 0.15 < time.monotonic() - started < 1.0
            assert await sub.arecv(timeout=1) == "fills the ring"
            with pytest.raises(shmbus.Timeout):
                await sub.arecv(timeout=0)

    asyncio.run(main())


def test_an_async_subscriber_hears_of_the_emitters_death_within_a_second(procs):
    def emit_then_wait(name: str, ready: Any) -> None:
        em = shmbus.EventEmitter(name)
        ready.put("created")
        while em.subscriber_count == 0:
            time.sleep(0.01)
        em.emit("last words")
        time.sleep(60)

    async def main() -> None:
        ready = helpers.context().Queue()
        proc = procs(emit_then_wait, "adies", ready)
        ready.get(timeout=10)
        with shmbus.subscribe("adies") as sub:
            assert await sub.arecv(timeout=5) == "last words"
            waiting = asyncio.ensure_future(sub.arecv())
            await asyncio.sleep(0.2)
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            with pytest.raises(shmbus.EmitterDied):
                await waiting
            assert time.monotonic() - killed < 1.0

    asyncio.run(main())
    shmbus.cleanup()  # the dead emitter's bus


def test_many_subscriptions_wait_in_one_loop(procs):
    async def main() -> None:
        with shmbus.EventEmitter("crowd", capacity=4) as em:
            subs = [em.subscribe() for _ in range(20)]
            readers = [asyncio.ensure_future(_read_all(sub, 100)) for sub in subs]
            await asyncio.sleep(0.05)  # every reader is now waiting on its wake pipe
            for i in range(100):
                await em.aemit(i)
            results = await asyncio.gather(*readers)
            assert results == [list(range(100))] * 20
            for sub in subs:
                sub.close()

    async def _read_all(sub: shmbus.Subscription, count: int) -> list[int]:
        return [await sub.arecv(timeout=10) for _ in range(count)]

    asyncio.run(main())


def test_wake_pipes_are_removed_with_their_owners(registry_dir):
    async def main() -> None:
        em = shmbus.EventEmitter("wakepipes", capacity=1)
        sub = em.subscribe()
        with pytest.raises(shmbus.Timeout):
            await sub.arecv(timeout=0.05)  # creates the subscriber's wake pipe
        await em.aemit(1)
        with pytest.raises(shmbus.Timeout):
            await em.aemit(2, timeout=0.05)  # creates the emitter's wake pipe
        bus_dir = os.path.join(registry_dir, "buses", helpers.token_of(em))
        # "bell.": the pipes' on-disk names (`Registry.wake_pipe_path`).
        assert sorted(n for n in os.listdir(bus_dir) if n.startswith("bell.")) == [
            f"bell.{sub.id}", "bell.emitter"]
        sub.close()
        assert [n for n in os.listdir(bus_dir) if n.startswith("bell.")] == ["bell.emitter"]
        em.close()
        assert not os.path.exists(bus_dir)

    asyncio.run(main())


def test_closing_while_async_calls_wait_ends_them_and_leaves_the_loop_sound():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        em = shmbus.EventEmitter("closewait", capacity=1)
        sub = em.subscribe()

        async def consume() -> list[Any]:
            return [event async for event in sub]

        reading = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)  # waiting on its wake pipe
        sub.close()
        assert await asyncio.wait_for(reading, 2) == []

        other = em.subscribe()
        await em.aemit("fills the ring")
        emitting = asyncio.ensure_future(em.aemit("waits for room"))
        await asyncio.sleep(0.05)
        em.close()
        with pytest.raises(shmbus.Closed):
            await asyncio.wait_for(emitting, 2)
        other.close()

        # No reader was left registered on a closed descriptor: a new pipe still works.
        read_end, write_end = os.pipe()
        fired = loop.create_future()
        loop.add_reader(read_end, lambda: fired.done() or fired.set_result(None))
        os.write(write_end, b"x")
        await asyncio.wait_for(fired, 1)
        loop.remove_reader(read_end)
        os.close(read_end)
        os.close(write_end)

    asyncio.run(main())


def test_waking_a_pipe_never_raises(tmp_path):
    from shmbus._wakepipe import Waker

    waker = Waker()
    waker.wake(str(tmp_path))  # a directory: cannot be opened for writing
    waker.wake(str(tmp_path / "nobody"))  # no such pipe
    waker.close()


# -- close() from another thread, and loops that die with a call waiting ----------------

_CLOSE_WHILE_WAITING = r'''
import asyncio, os, random, sys, tempfile, threading, time
os.environ["SHMBUS_DIR"] = tempfile.mkdtemp()
import shmbus

side, trials = sys.argv[1], int(sys.argv[2])
unexpected = []

def in_a_loop_thread(coroutine):
    def run():
        try:
            asyncio.run(coroutine())
        except BaseException as exc:
            unexpected.append(repr(exc))
    thread = threading.Thread(target=run)
    thread.start()
    return thread

def subscriber_side(em, trial):
    sub = em.subscribe()
    async def receive_until_closed():
        try:
            while True:
                await sub.arecv()
        except shmbus.Closed:
            pass
    thread = in_a_loop_thread(receive_until_closed)
    for _ in range(random.randint(0, 30)):
        em.emit(trial)
    time.sleep(random.uniform(0, 0.003))
    sub.close()
    return thread

def emitter_side(trial):
    em = shmbus.EventEmitter(f"full{trial}")
    sub = em.subscribe(capacity=2)
    async def emit_until_closed():
        try:
            while True:
                await em.aemit(trial)
        except shmbus.Closed:
            pass
    thread = in_a_loop_thread(emit_until_closed)
    for _ in range(random.randint(0, 5)):
        sub.recv(timeout=5)
    time.sleep(random.uniform(0, 0.003))
    em.close()
    thread.join(5)
    sub.close()
    return thread

em = shmbus.EventEmitter("bus") if side == "subscription" else None
for trial in range(trials):
    thread = subscriber_side(em, trial) if em is not None else emitter_side(trial)
    thread.join(5)
    assert not thread.is_alive(), "an async call outlived close() by 5 s"
if em is not None:
    em.close()
print("unexpected:", unexpected)
sys.exit(1 if unexpected else 0)
'''


@pytest.mark.parametrize("side", ["subscription", "emitter"])
def test_close_from_another_thread_while_a_loop_awaits_never_crashes(side):
    # In a child process: a crash there is an exit status here, not the end of pytest.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_WAITING, side, "200"],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, (
        f"exit {done.returncode} ({'SIGSEGV' if done.returncode == -11 else 'failure'}):"
        f"\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def test_a_loop_closed_with_arecv_waiting_leaves_later_loops_fast():
    with shmbus.EventEmitter("abandoned") as em, em.subscribe() as sub:
        loop = asyncio.new_event_loop()
        task = loop.create_task(sub.arecv())
        loop.run_until_complete(asyncio.sleep(0.05))  # the task is waiting on the wake pipe
        assert not task.done()
        loop.close()  # with the task still waiting: its cleanup never runs

        async def woken_after() -> float:
            threading.Timer(0.02, em.emit, args=("wake",)).start()
            began = time.monotonic()
            assert await sub.arecv(timeout=5) == "wake"
            return time.monotonic() - began - 0.02

        late = [asyncio.run(woken_after()) for _ in range(5)]
        # A wake pipe that never listens again wakes only at each 0.1 s slice.
        assert max(late) < 0.05, f"arecv woke {late} s after the emit"


def test_aemit_waiting_for_large_event_memory_lets_the_loop_run():
    # The arena full, not the ring: the wait is for the subscriber to read, in this loop.
    async def main() -> None:
        with shmbus.EventEmitter("bigwait", large_bytes=1 << 20, warn_after=None) as em, \
                em.subscribe() as sub:
            ticker = Ticker()

            async def consume() -> list[int]:
                await asyncio.sleep(0.5)
                return [len(await sub.arecv(timeout=5)) for _ in range(3)]

            consumer = asyncio.ensure_future(consume())
            cpu = time.process_time()
            for _ in range(3):
                await em.aemit(bytes(400_000), timeout=5)
            assert await consumer == [400_000] * 3
            ticker.stop()
            assert ticker.ticks >= 50  # the loop ran while aemit waited (0.5 s of 1 ms ticks)
            assert time.process_time() - cpu < 0.4  # and aemit did not spin

    asyncio.run(main())


def test_a_blocked_aemit_says_so_in_the_log_naming_the_pid(caplog):
    async def main() -> None:
        with shmbus.EventEmitter("astuck", capacity=1, warn_after=0.3) as em, \
                em.subscribe():
            await em.aemit("fills the ring")
            with caplog.at_level("WARNING", logger="shmbus"), \
                    pytest.raises(shmbus.Timeout):
                await em.aemit("one more", timeout=1.5)

    asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.name == "shmbus"]
    assert 2 <= len(warnings) <= 3, warnings  # at 0.3 s and 0.6 s (and 1.2 s): not more
    assert all(f"pid {os.getpid()}" in warning for warning in warnings), warnings
