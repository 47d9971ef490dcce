"""The codec: Python objects to bytes and back, once per event.

## Shape

`encode` runs in the caller of `emit`, before any ring is touched, so an unpicklable
event fails there with `SerializationError` and nothing is half-sent. It tries the C
`pickle` first and falls back to `cloudpickle` for what plain pickle cannot carry across
processes: lambdas, closures, and classes or functions defined in `__main__` (plain pickle
records those as a reference `__main__.Name`, which the subscriber's own `__main__` does
not have, so any payload naming `__main__` is re-pickled by value).

## Large events: pickled in parts, copied once

`pickle.dumps` of a 1 MiB `bytes` copies it into a growing buffer (page faults and all),
and scanning the result for `__main__` reads it again: both cost more than the copy into
shared memory. `encode_in_parts` instead pickles into a list: protocol 5 hands a large
`bytes`, `bytearray`, or numpy buffer to the writer as the object itself, between small
frames of opcodes, so the only copy is the one into the large-event segment, and only the
frames are scanned for `__main__` (a raw payload is data, not a reference). The emitter
uses it for the next event whenever the last one was large: the events of one bus tend to
be alike, and a small event encoded that way costs only a microsecond more.

## Why not cloudpickle for everything

cloudpickle's pickler runs a Python-level hook for every object; for a small dict that is
several times slower than the C pickler, and the hot path pays it on every `emit`.
`decode` is always plain `pickle.loads`: cloudpickle output is ordinary pickle data.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, NoReturn

import cloudpickle

from ._errors import DeserializationError, SerializationError

PROTOCOL = 5
"""Protocol 5 hands large `bytes` and buffers to the writer whole (see above)."""

_RAW_PAYLOAD = 256 * 1024
"""A part at least this long is a raw payload: a frame of opcodes holds under 64 KiB
plus one opcode whose argument is under 64 KiB (larger ones are written on their own)."""

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


class Parts:
    """A pickle in pieces, in order; `len()` is its size in bytes."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[Any]) -> None:
        self.pieces = pieces
        self.size = sum(map(len, pieces))

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)

    def names_main(self) -> bool:
        return any(_MAIN_REFERENCE in piece for piece in self.pieces
                   if len(piece) < _RAW_PAYLOAD)


def encode_in_parts(event: Any) -> "Parts | bytes":
    """As `encode`, without copying large buffers (see the module docstring)."""
    pieces: list[Any] = []
    try:
        pickle.Pickler(_Collector(pieces), PROTOCOL).dump(event)
    except Exception:
        return _encode_by_value(event)
    parts = Parts([memoryview(p).cast("B") if not isinstance(p, bytes) else p
                   for p in pieces])
    if parts.names_main():
        return _encode_by_value(event)
    return parts


class _Collector:
    __slots__ = ("write",)

    def __init__(self, pieces: list[Any]) -> None:
        self.write = pieces.append


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
    """Unpickle one event; a failure is reported for this event alone.

    An event whose unpickling raises `KeyboardInterrupt` or `SystemExit` is undecodable
    like any other, not an interruption of the caller. A real Ctrl-C that happens to
    land while an event is being unpickled is told apart by unpickling once more: only
    an event that raises it again is the event's doing (see `_interrupted_or_undecodable`).
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise _undecodable(exc) from exc
    except BaseException as exc:
        _interrupted_or_undecodable(exc, lambda: pickle.loads(data))


def decode_all(payloads: list[Any]) -> list[Any]:
    """`decode` each, in one C-level loop; `DeserializationError` if any fails (then
    decode them one by one to find which)."""
    try:
        return list(map(pickle.loads, payloads))
    except Exception as exc:
        raise DeserializationError(f"one of {len(payloads)} events cannot be unpickled") from exc
    except BaseException as exc:
        _interrupted_or_undecodable(exc, lambda: list(map(pickle.loads, payloads)))


def _interrupted_or_undecodable(exc: BaseException, again: Callable[[], Any]) -> NoReturn:
    """Raise `exc` (a real interruption: nothing is consumed) if unpickling succeeds on a
    second try, or `DeserializationError` if it raises the same again (the event does).

    Only a second signal landing inside the second try could fool this, and then an
    event is reported undecodable rather than lost silently.
    """
    try:
        again()
    except BaseException as repeated:
        if type(repeated) is type(exc):
            raise _undecodable(repeated) from repeated
        raise
    raise exc


def _undecodable(exc: BaseException) -> DeserializationError:
    return DeserializationError(
        f"received an event that cannot be unpickled in this process: {exc!r}. "
        "It has been consumed; the next recv() returns the next event. Make sure the "
        "modules the event refers to are importable here."
    )
