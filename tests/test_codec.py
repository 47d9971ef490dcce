"""The codec: fast plain pickle where it works, cloudpickle where it must."""

from __future__ import annotations

import pickle
import threading

import pytest

import shmbus
from shmbus import _codec


def test_plain_data_uses_the_c_pickler_and_round_trips():
    event = {"a": 1, "b": [1.5, "x"], "c": b"\x00" * 10}
    data = _codec.encode(event)
    assert data == pickle.dumps(event, _codec.PROTOCOL)
    assert _codec.decode(data) == event


def test_lambdas_and_closures_fall_back_to_cloudpickle():
    k = 5
    fn = _codec.decode(_codec.encode(lambda x: x + k))
    assert fn(1) == 6


def test_unpicklable_events_raise_serialization_error_naming_the_type():
    with pytest.raises(shmbus.SerializationError, match="dict"):
        _codec.encode({"lock": threading.Lock()})


def test_undecodable_bytes_raise_deserialization_error():
    with pytest.raises(shmbus.DeserializationError, match="has been consumed"):
        _codec.decode(b"not a pickle")


def test_plain_events_go_as_one_batch_whatever_bytes_their_data_holds():
    # Nanosecond timestamps and binary payloads hold bytes that look like the opcodes
    # naming a class (0x93, 0x82-0x84): they must not send a chunk event by event.
    events = [{"seq": i, "ts": 0x93_82_83_84 << (i % 30), "raw": bytes([0x93, 0x82] * i),
               "set": {i}, "pair": (i, 1.5), "none": None, "flag": True, "buf": bytearray(2)}
              for i in range(64)]
    data = _codec.encode_batch(events)
    assert data is not None and pickle.loads(data) == events


class _Named:
    pass


class _Text(str):
    pass


@pytest.mark.parametrize("odd_one", [_Named(), _Named, len, _Text("x"), complex(1, 2),
                                     {"deep": [(_Named(),)]}])
def test_a_chunk_with_anything_that_names_a_class_goes_event_by_event(odd_one):
    assert _codec.encode_batch([1, "two", odd_one]) is None
