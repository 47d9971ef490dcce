"""The emitter: fan-out, order, backpressure, all-or-nothing emit, reaping."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import shmbus
from shmbus import _names, _platform, _ring
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode"), pytest.mark.timeout(60)]


def start_collectors(procs, name: str, count: int, **kwargs):
    out, ready = helpers.context().Queue(), helpers.context().Queue()
    for _ in range(count):
        procs(helpers.collect, name, out, ready, kwargs.get("capacity"), kwargs.get("delay", 0.0))
    for _ in range(count):
        ready.get(timeout=10)
    return out


def test_every_subscriber_gets_every_event_once_in_order(procs):
    with shmbus.EventEmitter("fanout") as em:
        out = start_collectors(procs, "fanout", 3, capacity=8)
        delivered = [em.emit({"seq": i}) for i in range(3000)]
    results = [out.get(timeout=30) for _ in range(3)]
    assert delivered == [3] * 3000
    for events, reason in results:
        assert events == [{"seq": i} for i in range(3000)]
        assert reason == "closed"


def test_a_slow_subscriber_blocks_emit_and_loses_nothing(procs):
    with shmbus.EventEmitter("slow", capacity=4) as em:
        out = start_collectors(procs, "slow", 1, delay=0.002)
        started = time.monotonic()
        for i in range(200):
            em.emit(i)
        elapsed = time.monotonic() - started
    events, _ = out.get(timeout=30)
    assert events == list(range(200))
    # With 4 slots the emitter cannot run more than 4 events ahead of a reader that
    # takes 2 ms per event, so 200 events take at least (200 - 4) * 2 ms.
    assert elapsed >= 0.39


def test_a_full_ring_blocks_until_its_subscriber_reads():
    with shmbus.EventEmitter("full", capacity=3) as em, em.subscribe() as sub:
        for i in range(3):
            em.emit(i, timeout=1)
        with pytest.raises(shmbus.Timeout):
            em.emit(3, timeout=0.2)
        assert sub.recv(timeout=1) == 0
        assert em.emit(3, timeout=1) == 1
        assert [sub.recv(timeout=1) for _ in range(3)] == [1, 2, 3]


def test_timeout_is_all_or_nothing():
    with shmbus.EventEmitter("aon") as em:
        stuck = em.subscribe(capacity=2)
        free = em.subscribe(capacity=100)
        em.emit("a")
        em.emit("b")
        with pytest.raises(shmbus.Timeout) as info:
            em.emit("never", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(shmbus.Timeout):
            em.emit("never", timeout=0)
        assert [stuck.recv(timeout=1), stuck.recv(timeout=1)] == ["a", "b"]
        em.emit("c", timeout=1)
        em.close()
        assert list(free) == ["a", "b", "c"]
        assert list(stuck) == ["c"]
        stuck.close()
        free.close()


def test_keyboard_interrupt_during_a_blocked_emit_delivers_nothing():
    with shmbus.EventEmitter("intr") as em:
        stuck = em.subscribe(capacity=1)
        free = em.subscribe(capacity=100)
        em.emit("first")
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            em.emit("interrupted")
        timer.join()
        assert stuck.recv(timeout=1) == "first"
        em.emit("second", timeout=1)
        em.close()
        assert list(free) == ["first", "second"]
        assert list(stuck) == ["second"]
        stuck.close()
        free.close()


def test_emit_from_many_threads_gives_every_subscriber_one_order(procs):
    with shmbus.EventEmitter("threads", capacity=16) as em:
        out = start_collectors(procs, "threads", 2)

        def produce(tid: int) -> None:
            for i in range(400):
                em.emit((tid, i))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (first, _), (second, _) = out.get(timeout=30), out.get(timeout=30)
    assert first == second
    assert len(first) == 1600
    for tid in range(4):
        assert [i for t, i in first if t == tid] == list(range(400))


def test_subscriber_count_follows_joins_closes_and_deaths_without_emits(procs):
    with shmbus.EventEmitter("count") as em:
        assert em.subscriber_count == 0
        ready = helpers.context().Queue()
        victim = procs(helpers.subscribe_and_hold, "count", ready)
        ready.get(timeout=10)
        local = em.subscribe()
        helpers.wait_until(lambda: em.subscriber_count == 2, timeout=1)
        local.close()
        helpers.wait_until(lambda: em.subscriber_count == 1, timeout=1)
        os.kill(victim.pid, signal.SIGKILL)
        helpers.wait_until(lambda: em.subscriber_count == 0, timeout=1)


def _mapped_here(name: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith("/dev/shm" + name) for line in maps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_an_idle_emitter_reaps_a_killed_subscriber_within_a_second(procs):
    with shmbus.EventEmitter("idle") as em:
        ready = helpers.context().Queue()
        victim = procs(helpers.subscribe_and_hold, "idle", ready)
        sub_id = ready.get(timeout=10)
        ring = _names.ring_name(helpers.token_of(em), sub_id)
        helpers.wait_until(lambda: _mapped_here(ring), timeout=2)  # adopted while idle
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        died = time.monotonic()
        # No emit from here on: the ring must go from /dev/shm and from this process.
        helpers.wait_until(lambda: not _mapped_here(ring) and not _platform.segment_exists(ring),
                           timeout=2, step=0.005)
        assert time.monotonic() - died < 1.0


def test_a_subscriber_killed_while_emit_is_blocked_is_reaped_within_a_second(procs):
    with shmbus.EventEmitter("reap") as em:
        ready = helpers.context().Queue()
        victim = procs(helpers.subscribe_and_hold, "reap", ready, 2)
        sub_id = ready.get(timeout=10)
        token = helpers.token_of(em)
        with em.subscribe() as healthy:
            em.emit(0)
            em.emit(1)
            timer = threading.Timer(0.3, os.kill, (victim.pid, signal.SIGKILL))
            killed_at = []
            timer.start()
            threading.Thread(target=lambda: (timer.join(), killed_at.append(time.monotonic()))).start()
            assert em.emit(2) == 1  # blocked on the victim's full ring until it is reaped
            unblocked_at = time.monotonic()
            helpers.wait_until(lambda: killed_at)
            assert unblocked_at - killed_at[0] < 1.0
            assert [healthy.recv(timeout=1) for _ in range(3)] == [0, 1, 2]
        assert not any(f"_r{sub_id:x}" in n for n in helpers.objects_of(token))
        assert not os.path.exists(em._registry.sub_path(token, sub_id))


def test_closing_a_subscription_releases_a_blocked_emit_at_once():
    with shmbus.EventEmitter("release") as em:
        sub = em.subscribe(capacity=1)
        em.emit("fills it")
        timer = threading.Timer(0.2, sub.close)
        timer.start()
        started = time.monotonic()
        assert em.emit("after", timeout=5) == 0
        assert time.monotonic() - started < 0.2 + 0.5
        timer.join()


def test_close_raises_closed_in_a_blocked_emit_and_later_emits():
    em = shmbus.EventEmitter("closing")
    sub = em.subscribe(capacity=1)
    em.emit(1)
    errors = helpers.closed_while_blocked(lambda: em.emit(2), em.close)
    assert len(errors) == 1
    with pytest.raises(shmbus.Closed):
        em.emit(3)
    em.close()  # idempotent
    assert list(sub) == [1]
    sub.close()


def test_large_events_cross_processes_whole(procs):
    with shmbus.EventEmitter("large2") as em:
        out = start_collectors(procs, "large2", 2, capacity=4)
        payloads = [os.urandom(n) for n in (0, 495, 496, 497, 70_000, 3 << 20)]
        for p in payloads:
            em.emit(p)
    for _ in range(2):
        events, _ = out.get(timeout=30)
        assert events == payloads


def test_events_are_pickled_once_per_emit_not_per_subscriber():
    calls = []

    class Counted:
        def __reduce__(self):
            calls.append(1)
            return (str, ("counted",))

    with shmbus.EventEmitter("once") as em:
        subs = [em.subscribe() for _ in range(3)]
        assert em.emit(Counted()) == 3
        assert len(calls) == 1
        assert [s.recv(timeout=1) for s in subs] == ["counted"] * 3
        for s in subs:
            s.close()


def test_an_unpicklable_event_raises_before_any_ring_is_touched():
    with shmbus.EventEmitter("unpicklable") as em, em.subscribe() as sub:
        em.emit("before")
        with pytest.raises(shmbus.SerializationError, match="lock"):
            em.emit({"lock": threading.Lock()})
        em.emit("after")
        em.close()
        assert list(sub) == ["before", "after"]


def test_emit_with_no_subscribers_delivers_to_none():
    with shmbus.EventEmitter("lonely") as em:
        assert em.emit("x") == 0
        assert em.subscriber_count == 0


def test_keyboard_interrupts_anywhere_in_emit_deliver_all_or_nothing():
    with shmbus.EventEmitter("eintr", capacity=1000) as em:
        subs = [em.subscribe(), em.subscribe()]
        returned: list[int] = []  # emits that completed normally
        received: list[list[int]] = [[], []]
        attempted = 0
        interrupted = 0
        for _ in range(400):  # rounds, until enough interrupts landed inside emit
            with helpers.interrupts_inside_shmbus(every=0.0002) as interrupts:
                for _ in range(500):
                    n = attempted
                    attempted += 1
                    try:
                        em.emit({"n": n, "pad": "x" * (n % 700)})  # inline and large
                        returned.append(n)
                    except KeyboardInterrupt:
                        pass
            interrupted += interrupts.count
            for sub, seen in zip(subs, received):
                seen += [sub.recv(timeout=5)["n"] for _ in range(_available(sub))]
            if interrupted >= 30:
                break
        assert interrupted >= 30
        em.close()
        for sub, seen in zip(subs, received):
            seen += [e["n"] for e in sub]
            sub.close()
        assert received[0] == received[1]  # all or nothing: the same events everywhere
        assert received[0] == sorted(set(received[0]))  # in order, none twice
        assert set(returned) <= set(received[0])  # every emit that returned arrived


def _available(sub) -> int:
    """Events committed for `sub` and not yet read."""
    start = sub._reader.start  # once the emitter adopted its ring
    return sub._reader.available() if start is not None else 0


def test_a_stopped_subscriber_is_alive_it_blocks_emit_and_then_gets_everything(procs):
    with shmbus.EventEmitter("stopped", capacity=4) as em:
        out = start_collectors(procs, "stopped", 1)
        victim = procs.started[-1]
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            for i in range(4):
                em.emit(i, timeout=1)
            with pytest.raises(shmbus.Timeout):
                em.emit(4, timeout=1.5)  # longer than any reap: a stopped process lives
            assert em.subscriber_count == 1
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        em.emit(4, timeout=5)
    events, reason = out.get(timeout=10)
    assert events == [0, 1, 2, 3, 4] and reason == "closed"


# -- emit_many ------------------------------------------------------------------------


def test_emit_many_delivers_every_event_in_order_through_small_rings(procs):
    with shmbus.EventEmitter("many", capacity=16) as em:
        out = start_collectors(procs, "many", 2, capacity=3)  # chunks of one event
        other = start_collectors(procs, "many", 1)  # 16 slots
        events = [{"seq": i, "pad": "x" * (i % 600)} for i in range(2000)]  # some large
        reached = {em.emit_many(events[i : i + 97]) for i in range(0, 2000, 97)}
    assert reached == {3}  # as emit: the subscribers reached
    for events_seen, reason in [out.get(timeout=30), out.get(timeout=30), other.get(timeout=30)]:
        assert events_seen == events
        assert reason == "closed"


def test_emit_many_mixes_with_emit_in_one_order(procs):
    with shmbus.EventEmitter("mixed", capacity=8) as em:
        out = start_collectors(procs, "mixed", 1)
        for i in range(0, 600, 6):
            em.emit(i)
            em.emit_many(range(i + 1, i + 6))
    assert out.get(timeout=30)[0] == list(range(600))


def test_emit_many_pickles_everything_before_sending_anything():
    with shmbus.EventEmitter("manybad") as em, em.subscribe() as sub:
        with pytest.raises(shmbus.SerializationError):
            em.emit_many([1, 2, threading.Lock(), 4])
        em.emit("after")
        assert sub.recv(timeout=1) == "after"


def test_emit_many_returns_what_emit_returns():
    with shmbus.EventEmitter("manycount") as em:
        assert em.emit_many(range(10)) == 0 == em.emit(10)  # nobody listens
        with em.subscribe() as a, em.subscribe() as b:
            assert em.emit_many(range(10)) == 2 == em.emit(10)
            assert a.recv_many(100, timeout=1) == b.recv_many(100, timeout=1) == [*range(10), 10]


def test_emit_many_streams_a_generator_chunk_by_chunk():
    with shmbus.EventEmitter("stream", capacity=8) as em, em.subscribe() as sub:
        taken = []

        def events():
            for i in range(7):
                taken.append(i)
                yield i
            yield threading.Lock()  # cannot be pickled: in the fourth chunk of two

        with pytest.raises(shmbus.SerializationError) as refused:
            em.emit_many(events())
        assert refused.value.emitted == 6  # three whole chunks went out before it
        assert sub.recv_many(100, timeout=1) == [0, 1, 2, 3, 4, 5]
        assert taken == list(range(7))


@pytest.mark.parametrize("bad", [None, 42, "text", {"a": 1}])
def test_emit_many_refuses_what_is_not_an_iterable_of_events(bad):
    with shmbus.EventEmitter("notmany") as em:
        with pytest.raises(shmbus.InvalidArgument, match="emit_many"):
            em.emit_many(bad)


def test_emit_many_timeout_says_how_many_chunks_went_out():
    with shmbus.EventEmitter("manyfull", capacity=8) as em, em.subscribe() as sub:
        # Chunks of 8 // 4 = 2 events: three fit in the ring, the fourth times out.
        with pytest.raises(shmbus.Timeout) as refused:
            em.emit_many(range(10), timeout=0.2)
        assert refused.value.emitted == 8 - 8 % 2
        assert sub.recv_many(100, timeout=1) == list(range(8))
        assert em.emit_many([]) == 0


def test_keyboard_interrupts_anywhere_in_emit_many_deliver_whole_chunks_in_order():
    with shmbus.EventEmitter("eintr-many", capacity=1024) as em:
        subs = [em.subscribe(), em.subscribe()]
        received: list[list[int]] = [[], []]
        returned: list[int] = []
        attempted = 0
        interrupted = 0
        # Rounds until enough interrupts landed inside emit_many: a chunk is one C call
        # to pickle it and one to publish it, so most signals find the test's own frames.
        for _ in range(2000):
            with helpers.interrupts_inside_shmbus(every=0.0002) as interrupts:
                for _ in range(50):
                    batch = [{"n": attempted + i, "pad": "x" * (i * 37 % 700)}
                             for i in range(20)]
                    attempted += 20
                    try:
                        em.emit_many(batch)
                        returned += [e["n"] for e in batch]
                    except KeyboardInterrupt:
                        pass
            interrupted += interrupts.count
            for sub, seen in zip(subs, received):
                while _available(sub):
                    seen += [e["n"] for e in sub.recv_many(1000, timeout=5)]
            if interrupted >= 30:
                break
        assert interrupted >= 30
        em.close()
        for sub, seen in zip(subs, received):
            seen += [e["n"] for e in sub]
            sub.close()
        assert received[0] == received[1]
        assert received[0] == sorted(set(received[0]))
        assert set(returned) <= set(received[0])


def test_a_child_forked_in_the_middle_of_upkeep_can_create_an_emitter():
    from shmbus import _emitter

    with shmbus.EventEmitter("parent"):
        for i in range(10):
            with _emitter._upkeep_guard:  # as the upkeep thread holds it, at the fork
                pid = os.fork()
                if pid == 0:
                    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's
                    signal.alarm(5)  # a child stuck on the guard dies of SIGALRM
                    try:
                        shmbus.EventEmitter(f"child{i}").close()
                    finally:
                        os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the child hung on a lock"


def test_the_upkeep_looking_never_makes_a_zero_timeout_emit_fail():
    with shmbus.EventEmitter("upkept") as em, em.subscribe() as sub:
        held, release = threading.Event(), threading.Event()

        def look_like_the_upkeep() -> None:
            with em._lock:
                em._upkeeping = True
                held.set()
                release.wait(0.01)
                em._upkeeping = False

        thread = threading.Thread(target=look_like_the_upkeep)
        thread.start()
        held.wait(5)
        assert em.emit("through", timeout=0) == 1
        thread.join(5)
        assert sub.recv(timeout=1) == "through"
        # Another emit holding the lock is another matter: that one times out.
        em._lock.acquire()
        try:
            blocked = []
            other = threading.Thread(target=lambda: blocked.append(
                pytest.raises(shmbus.Timeout, em.emit, "late", timeout=0)))
            other.start()
            other.join(5)
            assert blocked
        finally:
            em._lock.release()


def _subscribe_late_and_collect(name: str, delay: float, out) -> None:
    time.sleep(delay)
    with shmbus.subscribe(name, wait=10) as sub:  # the bus may not exist yet
        out.put([event for event in sub])


@pytest.mark.parametrize("emitter_first", [True, False])
def test_processes_started_in_any_order_get_every_event(procs, emitter_first):
    out = helpers.context().Queue()
    if not emitter_first:
        for _ in range(2):
            procs(_subscribe_late_and_collect, "anyorder", 0.0, out)
        time.sleep(0.3)  # they wait for a bus that is not there yet
    with shmbus.EventEmitter("anyorder") as em:
        if emitter_first:
            for _ in range(2):
                procs(_subscribe_late_and_collect, "anyorder", 0.3, out)
        assert em.wait_for_subscribers(2, timeout=10) == 2
        em.emit_many(range(100))
    assert out.get(timeout=10) == out.get(timeout=10) == list(range(100))
    for proc in procs.started:
        proc.join(10)  # each leaves the bus itself


def test_waiting_for_subscribers_or_a_bus_times_out_clearly():
    with shmbus.EventEmitter("lonely") as em:
        with pytest.raises(shmbus.Timeout, match="only 0 of 2 subscribers"):
            em.wait_for_subscribers(2, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(shmbus.BusNotFound, match="waited 0.3 s"):
        shmbus.subscribe("nobody-yet", wait=0.3)
    assert 0.3 <= time.monotonic() - began < 2


def test_a_blocked_emit_says_so_in_the_log_naming_the_pid(procs, caplog):
    ready = helpers.context().Queue()
    with shmbus.EventEmitter("stuck", warn_after=0.3) as em:
        holder = procs(helpers.subscribe_and_hold, "stuck", ready, 2)
        ready.get(timeout=10)
        em.emit_many(range(2))  # its ring of 2 is full from here on
        with caplog.at_level("WARNING", logger="shmbus"), \
                pytest.raises(shmbus.Timeout) as refused:
            em.emit("one more", timeout=1.5)
        os.kill(holder.pid, signal.SIGKILL)  # before the bus closes: reaped, not leaked
        holder.join(5)
    warnings = [r.getMessage() for r in caplog.records if r.name == "shmbus"]
    assert 2 <= len(warnings) <= 3, warnings  # at 0.3 s and 0.6 s (and 1.2 s): not more
    assert f"pid {holder.pid}" in warnings[0] and "2 of 2" in warnings[0], warnings
    assert f"pid {holder.pid}" in str(refused.value) and "2 of 2" in str(refused.value)


def test_raw_events_are_the_pickles_numbered_as_on_the_bus():
    import numpy as np

    with shmbus.EventEmitter("raw") as em, em.subscribe() as sub:
        em.emit("skipped")
        sub.recv(timeout=1)
        em.emit_many([{"small": 1}, np.arange(10_000), b"x" * 2000])
        raw = sub.recv_raw(10, timeout=1)
        assert [r.seq for r in raw] == [1, 2, 3] and sub.last_seq == 3
        assert [r.laid_out for r in raw] == [False, True, True]
        assert raw[0].decode() == {"small": 1} and raw[2].decode() == b"x" * 2000
        assert np.array_equal(raw[1].decode(), np.arange(10_000))
        assert sub.bus_id == helpers.token_of(em)


def test_local_and_remote_subscriptions_are_one_protocol():
    with shmbus.EventEmitter("proto") as em, shmbus.subscribe("proto") as sub:
        assert isinstance(sub, shmbus.Subscription)
        assert isinstance(sub, shmbus.LocalSubscription)
        assert isinstance(em.subscribe(), shmbus.Subscription)  # dropped: it closes itself


def test_a_dropped_handle_closes_itself():
    with shmbus.EventEmitter("dropped") as em:
        token = helpers.token_of(em)
        em.subscribe()  # not kept
        em.subscribe(capacity=4)
        assert em.subscriber_count == 0
    assert helpers.objects_of(token) == []
    shmbus.EventEmitter("dropped-too")  # not kept either
    assert shmbus.buses() == []


def test_a_subscriber_still_joining_is_not_counted_as_one_that_gets_every_event(monkeypatch):
    # Its record is in the registry before its ring exists: an event emitted then would
    # not reach it, so wait_for_subscribers must not return on its account yet.
    go_on, created = threading.Event(), threading.Event()
    create = _ring.Ring.create

    def slow_create(*args, **kwargs):
        created.set()
        go_on.wait(10)
        return create(*args, **kwargs)

    monkeypatch.setattr(_ring.Ring, "create", slow_create)
    with shmbus.EventEmitter("joining") as em:
        subs: list = []
        joiner = threading.Thread(target=lambda: subs.append(shmbus.subscribe("joining")))
        joiner.start()
        try:
            assert created.wait(10)
            with pytest.raises(shmbus.Timeout):
                em.wait_for_subscribers(1, timeout=0.3)
            go_on.set()
            joiner.join(10)
            assert em.wait_for_subscribers(1, timeout=5) == 1
            assert em.emit("first") == 1
            assert subs[0].recv(timeout=5) == "first"
        finally:
            go_on.set()
            joiner.join(10)
            for sub in subs:
                sub.close()


def test_waiting_for_subscribers_beside_a_blocked_emit_says_why_it_cannot_tell():
    with shmbus.EventEmitter("busy", capacity=1) as em, em.subscribe() as sub:
        em.emit("fills the ring")
        blocked = threading.Thread(target=lambda: em.emit("waits", timeout=1))
        blocked.start()
        try:
            time.sleep(0.1)
            began = time.monotonic()
            with pytest.raises(shmbus.Timeout, match="1 of 1 .* another thread's emit"):
                em.wait_for_subscribers(1, timeout=0.2)
            assert time.monotonic() - began < 0.2 + 0.1
        finally:
            sub.recv(timeout=5)
            blocked.join(5)
        assert em.wait_for_subscribers(1, timeout=1) == 1


def test_a_generator_that_raises_midway_has_what_it_gave_emitted_first():
    def events():
        yield from range(10)
        raise LookupError("the source failed")

    with shmbus.EventEmitter("halfgen") as em, em.subscribe() as sub:
        with pytest.raises(LookupError) as failed:
            em.emit_many(events())
        assert failed.value.emitted == 10
        assert sub.recv_many(20, timeout=1) == list(range(10))
