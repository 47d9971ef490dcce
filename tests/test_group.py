"""Groups: members share one ring, each event goes to one of them, and what a dead member
held goes to another. Real processes, real shared memory."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmbus
from tests import helpers

pytestmark = [pytest.mark.usefixtures("wait_mode"), pytest.mark.timeout(60)]


# -- member processes ---------------------------------------------------------------------


def member(name: str, group: str, out: Any, ready: Any, delay: float = 0.0,
           auto_ack: bool = True, hold: int = 0) -> None:
    """Join `group`; report each event taken as ("got", pid, value). With `hold`, take
    that many events, report, and then never finish them (until killed)."""
    sub = shmbus.subscribe(name, group=group, auto_ack=auto_ack)
    ready.put(os.getpid())
    if hold:
        got = []
        while len(got) < hold:
            got += sub.recv_many(hold - len(got), timeout=10)
        for value in got:
            out.put(("got", os.getpid(), value))
        out.put(("holding", os.getpid(), None))
        while True:
            time.sleep(1)
    try:
        for value in sub:
            out.put(("got", os.getpid(), value))
            if delay:
                time.sleep(delay)
    finally:
        reason = sub.end_reason.value if sub.end_reason else None
        sub.close()
        out.put(("end", os.getpid(), reason))


def drain(out: Any, ends: int, timeout: float = 30) -> list[tuple[str, int, Any]]:
    """Messages until `ends` members said they ended."""
    messages = []
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < ends:
        message = out.get(timeout=max(0.1, deadline - time.monotonic()))
        messages.append(message)
        seen += message[0] == "end"
    return messages


# -- delivery ------------------------------------------------------------------------------


def test_each_event_goes_to_one_member_and_every_group_and_subscriber_gets_it(procs):
    ctx = helpers.context()
    out, ready = ctx.Queue(), ctx.Queue()
    with shmbus.EventEmitter("share", capacity=16) as em:
        for _ in range(3):
            procs(member, "share", "a", out, ready, 0.001)
        for _ in range(2):
            procs(member, "share", "b", out, ready)
        for _ in range(5):
            ready.get(timeout=10)
        plain = em.subscribe(capacity=400)
        assert em.subscriber_count == 3  # two groups and one subscriber: three rings
        for n in range(300):
            assert em.emit(n, timeout=5) == 3
    messages = drain(out, 5)
    assert list(plain) == list(range(300))
    plain.close()
    by_pid: dict[int, list[int]] = {}
    for kind, pid, value in messages:
        if kind == "got":
            by_pid.setdefault(pid, []).append(value)
    ends = {pid: value for kind, pid, value in messages if kind == "end"}
    assert set(ends.values()) == {"closed"}
    # Each group got every event exactly once, shared among its members, each member's
    # share in order.
    values = sorted(v for got in by_pid.values() for v in got)
    assert values == sorted(list(range(300)) * 2)
    for got in by_pid.values():
        assert got == sorted(got)
    assert sum(1 for got in by_pid.values() if got) >= 3, "the work was not shared"


def test_members_in_one_process_share_and_auto_ack_frees_room():
    with shmbus.EventEmitter("one", capacity=4) as em:
        a = em.subscribe(group="g")
        b = shmbus.subscribe("one", group="g")
        assert isinstance(a, shmbus.QueueSubscription) and a.id == b.id
        assert (a.group, a.durable, a.capacity) == ("g", None, 4)
        for n in range(4):
            em.emit(n, timeout=1)
        assert a.recv(timeout=1) == 0
        assert b.recv_many(10, timeout=1) == [1, 2, 3]
        # Nothing is finished yet: the ring is full, and emit waits.
        with pytest.raises(shmbus.Timeout):
            em.emit(4, timeout=0.2)
        a.ack()  # event 0 finished: one slot
        em.emit(4, timeout=1)
        with pytest.raises(shmbus.Timeout):
            em.emit(5, timeout=0.2)
        assert a.recv(timeout=1) == 4  # b's three are still held
        with pytest.raises(shmbus.Timeout):
            a.recv(timeout=0.1)
        with pytest.raises(shmbus.Timeout):
            b.recv(timeout=0.1)  # auto_ack: this finished b's three
        for n in range(5, 8):
            em.emit(n, timeout=1)
        assert sorted(a.recv_many(2, timeout=1) + b.recv_many(2, timeout=1)) == [5, 6, 7]
        a.close()
        b.close()
        assert em.subscriber_count == 0
        assert helpers.objects_of(helpers.token_of(em)) == [f"sb_{helpers.token_of(em)}"]


def test_without_auto_ack_only_ack_finishes_and_close_gives_the_rest_back():
    with shmbus.EventEmitter("explicit", capacity=8) as em:
        a = em.subscribe(group="g", auto_ack=False)
        b = em.subscribe(group="g", auto_ack=False)
        for n in range(6):
            em.emit(n, timeout=1)
        taken = a.recv_many(4, timeout=1)
        assert taken == [0, 1, 2, 3]
        assert a.ack(1) == 2  # events 0 and 1
        assert a.ack(1) == 0
        assert b.recv_many(10, timeout=1) == [4, 5]
        a.close()  # 2 and 3 were never acknowledged: they go back
        assert b.recv_many(10, timeout=1) == [2, 3]
        assert b.ack() == 4
        b.close()


def test_close_with_auto_ack_finishes_what_was_handed_out():
    with shmbus.EventEmitter("handed", capacity=8) as em:
        a = em.subscribe(group="g")
        b = em.subscribe(group="g")
        em.emit("x")
        em.emit("y")
        assert a.recv(timeout=1) == "x"
        a.close()
        assert b.recv(timeout=1) == "y"
        with pytest.raises(shmbus.Timeout):
            b.recv(timeout=0.2)
        b.close()


def test_a_killed_members_events_go_to_another_within_a_second_in_order(procs):
    ctx = helpers.context()
    out, ready = ctx.Queue(), ctx.Queue()
    with shmbus.EventEmitter("killed", capacity=32) as em:
        holder = procs(member, "killed", "g", out, ready, 0.0, False, 5)
        ready.get(timeout=10)
        survivor = em.subscribe(group="g")
        for n in range(8):
            em.emit(n, timeout=1)
        assert out.get(timeout=10)[0] == "got"
        while out.get(timeout=10)[0] != "holding":
            pass
        held = [0, 1, 2, 3, 4]
        assert survivor.recv_many(10, timeout=1) == [5, 6, 7]
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        holder.join(5)
        again = []
        while len(again) < len(held):
            again += survivor.recv_many(10, timeout=2)
        took = time.monotonic() - killed
        assert again == held  # given back, and handed out lowest first
        assert took < 1.0, f"redelivery took {took:.2f} s"
        em.emit(8, timeout=1)
        assert survivor.recv(timeout=1) == 8
        survivor.close()


def test_the_emitter_blocked_on_a_group_with_a_dead_holder_moves_on(procs):
    ctx = helpers.context()
    out, ready = ctx.Queue(), ctx.Queue()
    with shmbus.EventEmitter("unwedge", capacity=4) as em:
        holder = procs(member, "unwedge", "g", out, ready, 0.0, False, 4)
        ready.get(timeout=10)
        survivor = em.subscribe(group="g", auto_ack=False)
        for n in range(4):
            em.emit(n, timeout=1)
        while out.get(timeout=10)[0] != "holding":
            pass
        blocked = threading.Thread(target=lambda: em.emit(4, timeout=5))
        blocked.start()
        time.sleep(0.2)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(5)
        got = survivor.recv_many(10, timeout=2)
        assert got == [0, 1, 2, 3]
        survivor.ack()
        blocked.join(5)
        assert not blocked.is_alive()
        assert survivor.recv(timeout=1) == 4
        survivor.close()


def test_a_member_ends_only_when_the_bus_ended_and_every_event_is_finished():
    with shmbus.EventEmitter("ending") as em:
        a = em.subscribe(group="g", auto_ack=False)
        b = em.subscribe(group="g")
        em.emit(1)
        em.emit(2)
        assert a.recv(timeout=1) == 1
        em.close()
        assert b.recv(timeout=1) == 2
        with pytest.raises(shmbus.Timeout):
            b.recv(timeout=0.3)  # a still holds event 1: it could die and give it back
        a.ack()
        with pytest.raises(shmbus.Closed):
            b.recv(timeout=1)
        assert b.end_reason is shmbus.EndReason.CLOSED
        with pytest.raises(shmbus.Closed):
            a.recv(timeout=1)
        a.close()
        b.close()


def test_the_group_of_a_dead_emitter_ends_with_emitter_died(procs):
    ctx = helpers.context()
    progress = ctx.Value("q", 0, lock=False)

    def emitter(name: str) -> None:
        em = shmbus.EventEmitter(name)
        while em.subscriber_count < 1:
            time.sleep(0.005)
        for n in range(10):
            em.emit(n)
        progress.value = 10
        time.sleep(60)

    proc = procs(emitter, "doomed")
    sub = shmbus.subscribe("doomed", group="g", wait=10)
    helpers.wait_until(lambda: progress.value == 10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(5)
    got = []
    with pytest.raises(shmbus.EmitterDied):
        for value in sub:
            got.append(value)
    assert got == list(range(10))
    sub.close()


def test_large_events_and_emit_many_reach_a_group():
    with shmbus.EventEmitter("large", capacity=64) as em:
        a = em.subscribe(group="g")
        arrays = [np.full(100_000, n, dtype=np.int64) for n in range(5)]
        em.emit_many([{"n": n} for n in range(40)])
        for array in arrays:
            em.emit(array)
        got: list[Any] = []
        while len(got) < 45:
            got += a.recv_many(100, timeout=1)
        assert got[:40] == [{"n": n} for n in range(40)]
        for n in range(5):
            assert np.array_equal(got[40 + n], arrays[n])
        a.close()


def test_recv_raw_from_a_group():
    with shmbus.EventEmitter("raw") as em:
        a = em.subscribe(group="g")
        em.emit({"x": 1})
        (event,) = a.recv_raw(5, timeout=1)
        assert event.seq == 0 and event.decode() == {"x": 1}
        assert a.last_seq == 0
        a.close()


def test_arecv_polls_and_cancelling_loses_nothing():
    async def run(em: shmbus.EventEmitter, sub: shmbus.QueueSubscription) -> list[Any]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sub.arecv(), 0.1)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, em.emit, "late")
        first = await sub.arecv(timeout=2)
        em.emit("more")
        return [first, await sub.arecv_many(5, timeout=2)]

    with shmbus.EventEmitter("async") as em:
        sub = em.subscribe(group="g")
        assert asyncio.run(run(em, sub)) == ["late", ["more"]]
        sub.close()


def test_bad_arguments_are_refused_clearly():
    with shmbus.EventEmitter("bad", capacity=8) as em:
        for kwargs, words in [
            ({"group": ""}, "invalid group name"),
            ({"group": "a/b"}, "invalid group name"),
            ({"group": 3}, "group must be a str"),
            ({"group": "g", "durable": "d"}, "one of group= and durable="),
            ({"group": "g", "expire_after": 5}, "durable subscription only"),
            ({"durable": "d", "expire_after": 0}, "expire_after must be"),
            ({"group": "g", "auto_ack": "yes"}, "auto_ack must be"),
            ({"auto_ack": False}, "group or a durable"),
        ]:
            with pytest.raises(shmbus.InvalidArgument, match=words):
                shmbus.subscribe("bad", **kwargs)
        with pytest.raises(shmbus.InvalidArgument, match="apply to a group"):
            em.subscribe(expire_after=3)
        with pytest.raises(shmbus.InvalidArgument, match="durable consumer in the URL"):
            shmbus.subscribe("nats://localhost:4222/bad", group="g")
        with em.subscribe(group="g") as a:
            with pytest.raises(shmbus.InvalidArgument, match="ring of 8 slots"):
                em.subscribe(group="g", capacity=16)
            with pytest.raises(shmbus.InvalidArgument, match="max_n"):
                a.recv_many(0)
            with pytest.raises(shmbus.InvalidArgument, match="seq must be"):
                a.ack("1")  # type: ignore[arg-type]
