"""Once and in order (`shmbus/nats/_order.py`): how a cursor judges each message.

Pure bookkeeping, so no server: messages are made here, as a bridge would write them.
"""

from __future__ import annotations

import pickle
from typing import Any

from nats.aio.msg import Msg

import shmbus
from shmbus.nats._order import RESYNC, SKIP, Cursor, Outcome
from shmbus.nats._wire import end_message, lost_message, read_envelope


def message(bus_id: str, seq: int, value: Any = None) -> Msg:
    return Msg(None, data=pickle.dumps(value if value is not None else seq),  # type: ignore[arg-type]
               headers={"Nats-Msg-Id": f"{bus_id}:{seq}"})


def judge(cursor: Cursor, msg: Msg) -> Any:
    envelope = read_envelope(msg.headers)
    assert envelope is not None
    verdict = cursor.judge(msg, envelope)
    if isinstance(verdict, Outcome):
        cursor.advance(verdict)
    return verdict


def test_events_in_order_and_redeliveries_skipped() -> None:
    cursor = Cursor("jobs")
    for seq in (5, 6, 7):  # a subscription starts wherever the stream is
        outcome = judge(cursor, message("a", seq))
        assert isinstance(outcome, Outcome) and outcome.value == seq and outcome.consumes
    assert judge(cursor, message("a", 6)) is SKIP
    assert judge(cursor, message("a", 7)) is SKIP
    assert cursor.last == ("a", 7)


def test_a_jump_is_suspect_first_and_lost_if_it_stays() -> None:
    cursor = Cursor("jobs")
    judge(cursor, message("a", 0))
    assert judge(cursor, message("a", 3)) is RESYNC  # maybe only out of order
    lost = judge(cursor, message("a", 3))  # the same jump after the resync: real
    assert isinstance(lost.error, shmbus.EventsLost) and not lost.consumes
    assert (lost.error.first, lost.error.last, lost.error.count) == (1, 2, 2)
    assert judge(cursor, message("a", 3)).value == 3  # then the event after the gap


def test_a_jump_that_a_resync_fills_is_no_loss() -> None:
    cursor = Cursor("jobs")
    judge(cursor, message("a", 0))
    assert judge(cursor, message("a", 2)) is RESYNC
    assert judge(cursor, message("a", 1)).value == 1  # redelivered in order
    assert judge(cursor, message("a", 2)).value == 2


def test_a_new_bus_instance_starts_its_own_numbering() -> None:
    cursor = Cursor("jobs")
    judge(cursor, message("a", 40))
    assert judge(cursor, message("b", 0)).value == 0


def test_markers_and_undecodable_events() -> None:
    cursor = Cursor("jobs")
    judge(cursor, message("a", 0))
    marker = lost_message("a", 1, "too large")
    lost = judge(cursor, Msg(None, headers=marker.headers))  # type: ignore[arg-type]
    assert isinstance(lost.error, shmbus.EventsLost) and lost.consumes
    broken = Msg(None, data=b"not a pickle", headers={"Nats-Msg-Id": "a:2"})  # type: ignore[arg-type]
    assert isinstance(judge(cursor, broken).error, shmbus.DeserializationError)
    end = judge(cursor, Msg(None, headers=end_message(  # type: ignore[arg-type]
        "a", shmbus.EndReason.EMITTER_DIED).headers))
    assert isinstance(end.error, shmbus.EmitterDied) and end.ends is shmbus.EndReason.EMITTER_DIED
    assert cursor.ended is shmbus.EndReason.EMITTER_DIED
    again = cursor.end_again()
    assert isinstance(again.error, shmbus.EmitterDied) and again.msg is None
