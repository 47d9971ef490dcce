"""The codec: Python objects to bytes and back, once per event.

## Shape

`encode` runs in the caller of `emit`, before any ring is touched, so an unpicklable
event fails there with `SerializationError` and nothing is half-sent. It tries the C
`pickle` first and falls back to `cloudpickle` for what plain pickle cannot carry across
processes: lambdas, closures, and classes or functions defined in `__main__` (plain pickle
records those as a reference `__main__.Name`, which the subscriber's own `__main__` does
not have, so any payload naming `__main__` is re-pickled by value).

## Why not cloudpickle for everything

cloudpickle's pickler runs a Python-level hook for every object; for a small dict that is
several times slower than the C pickler, and the hot path pays it on every `emit`.
`decode` is always plain `pickle.loads`: cloudpickle output is ordinary pickle data.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from ._errors import DeserializationError, SerializationError

PROTOCOL = 5
"""Protocol 5 keeps large `bytes` and buffers in one contiguous frame."""

_MAIN_REFERENCE = b"__main__"


def encode(event: Any) -> bytes:
    """Pickle `event` so that any process of this user can load it."""
    try:
        data = pickle.dumps(event, PROTOCOL)
    except Exception:
        return _encode_by_value(event)
    if _MAIN_REFERENCE in data:
        return _encode_by_value(event)
    return data


def _encode_by_value(event: Any) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(event, PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle event of type {type(event).__qualname__}: {exc}. "
            "Send plain data, or make the object picklable (see the pickle docs on "
            "__reduce__); nothing was sent."
        ) from exc
    return data


def decode(data: Any) -> Any:
    """Unpickle one event; a failure is reported for this event alone."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise DeserializationError(
            f"received an event that cannot be unpickled in this process: {exc!r}. "
            "It has been consumed; the next recv() returns the next event. Make sure the "
            "modules the event refers to are importable here."
        ) from exc
