"""The wire format (`shmbus/nats/_wire.py`): names, addresses, messages both ways.

No server needed: events come from a real local bus (`recv_raw`), go through
`event_message` and come back through `read_envelope` and `decode_body`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import shmbus
from shmbus.nats import _wire
from shmbus.nats._wire import (
    LAID_OUT,
    LOST,
    MSG_ID,
    RemoteAddress,
    decode_body,
    end_message,
    event_message,
    parse_servers,
    read_envelope,
    redact,
    scrub,
)


def raw_events(events: list[Any]) -> tuple[str, list[shmbus.RawEvent]]:
    with shmbus.EventEmitter("wire") as emitter, shmbus.subscribe("wire") as sub:
        assert isinstance(sub, shmbus.LocalSubscription)
        for event in events:
            emitter.emit(event)
        raw: list[shmbus.RawEvent] = []
        while len(raw) < len(events):
            raw += sub.recv_raw(len(events), timeout=5)
        return sub.bus_id, raw


def test_an_event_travels_as_it_lay_in_shared_memory() -> None:
    array = np.arange(50_000)
    events = [{"small": 1}, b"x" * 4000, array]
    bus_id, raw = raw_events(events)
    assert [r.laid_out for r in raw] == [False, True, True]
    for event, original in zip(raw, events):
        message = event_message(bus_id, event, max_payload=1 << 20)
        assert message.body is event.data  # passed on, never pickled again
        assert message.headers[MSG_ID] == f"{bus_id}:{event.seq}"
        assert (LAID_OUT in message.headers) == event.laid_out
        envelope = read_envelope(message.headers)
        assert envelope is not None
        assert (envelope.bus_id, envelope.seq, envelope.laid_out) == (
            bus_id, event.seq, event.laid_out)
        back = decode_body(envelope, message.body)
        if isinstance(original, np.ndarray):
            assert np.array_equal(back, original)
        else:
            assert back == original


def test_an_event_too_large_for_the_server_becomes_a_lost_marker() -> None:
    bus_id, [event] = raw_events([b"y" * 10_000])
    message = event_message(bus_id, event, max_payload=4096)
    assert message.body == b"" and message.seq == event.seq
    envelope = read_envelope(message.headers)
    assert envelope is not None and envelope.seq == event.seq
    assert envelope.lost is not None and "max_payload of 4096" in envelope.lost


def test_markers_and_foreign_messages() -> None:
    died = read_envelope(end_message("abc", shmbus.EndReason.EMITTER_DIED).headers)
    assert died is not None and died.seq is None and died.end is shmbus.EndReason.EMITTER_DIED
    odd = read_envelope({MSG_ID: "abc:end", _wire.END: "no such reason"})
    assert odd is not None and odd.end is shmbus.EndReason.CLOSED
    lost = _wire.lost_message("abc", 7, "a\nmultiline\r\nreason")
    assert "\n" not in lost.headers[LOST] and "\r" not in lost.headers[LOST]
    for foreign in (None, {}, {MSG_ID: "no-colon"}, {MSG_ID: "abc:x7"}, {"Other": "1"}):
        assert read_envelope(foreign) is None


def test_a_malformed_layout_is_an_undecodable_event() -> None:
    envelope = read_envelope({MSG_ID: "abc:3", LAID_OUT: "1"})
    assert envelope is not None
    with pytest.raises(shmbus.DeserializationError, match="event 3"):
        decode_body(envelope, b"\xff" * 10)
    with pytest.raises(shmbus.DeserializationError):
        decode_body(read_envelope({MSG_ID: "abc:4"}) or envelope, b"not a pickle")


def test_names() -> None:
    assert _wire.stream_for("a.b-c") == "SHMBUS_a_b-c"
    assert _wire.subject_for("a.b-c") == "shmbus.a_b-c"


def test_passwords_never_show() -> None:
    assert redact("nats://me:s3cret@h:4222/jobs") == "nats://me:***@h:4222/jobs"
    assert redact("nats://t0ken@h:4222") == "nats://***@h:4222"
    assert redact("nats://h:4222/jobs") == "nats://h:4222/jobs"
    servers = parse_servers("nats://me:s3cret@a:1,b:2")
    assert servers == ["nats://me:s3cret@a:1", "nats://me:s3cret@b:2"]
    assert scrub("failed nats://me:s3cret@a:1", servers) == "failed nats://me:***@a:1"
    address = RemoteAddress.parse("nats://me:s3cret@a:1/jobs?durable=w")
    assert "s3cret" not in repr(address) and address.shown == "nats://me:***@a:1/jobs?durable=w"
    for bad in ("nats://me:s3cret@a:1/bad name", "nats://me:s3cret@a:1/jobs?what=1",
                "nats://me:s3cret@a:1/jobs?durable=no spaces",
                "nats://me:s3cret@a:1/jobs?stream=no.dots", "http://me:s3cret@a:1/jobs",
                "nats://me:s3cret@[::1/jobs"):
        with pytest.raises(shmbus.InvalidArgument) as raised:
            RemoteAddress.parse(bad)
        assert "s3cret" not in str(raised.value), bad


def test_an_address_names_bus_stream_and_durable() -> None:
    address = RemoteAddress.parse("nats://a:1,b:2/jobs.x?stream=S1", durable="d1")
    assert (address.bus, address.stream, address.durable) == ("jobs.x", "S1", "d1")
    assert address.servers == ["nats://a:1", "nats://b:2"]
    assert address.subject == "shmbus.jobs_x"
    assert parse_servers("h:4222") == ["nats://h:4222"]
    with pytest.raises(shmbus.InvalidArgument):
        parse_servers("nats:///jobs")
