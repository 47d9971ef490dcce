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
