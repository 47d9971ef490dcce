"""The codec: Python objects to bytes and back, once per event.

## Shape

`encode` runs in the caller of `emit`, before any ring is touched, so an unpicklable
event fails there with `SerializationError` and nothing is half-sent. It tries the C
`pickle` first and falls back to `cloudpickle` for what plain pickle cannot carry across
processes: lambdas, closures, and classes or functions defined in `__main__` (plain pickle
records those as a reference `__main__.Name`, which the subscriber's own `__main__` does
not have, so any payload naming `__main__` is re-pickled by value).

## Large events: pickled in parts, copied once in and once out

`pickle.dumps` of a 1 MiB `bytes` copies it into a growing buffer (page faults and all),
and scanning the result for `__main__` reads it again: both cost more than the copy into
shared memory. `encode_in_parts` instead pickles into a list: protocol 5 hands a large
`bytes` or `bytearray` to the writer as the object itself, between small frames of
opcodes, and hands numpy arrays (anything that offers a `PickleBuffer`) to a callback,
out of band. `Parts.write_into` then lays the event out in shared memory (a small table,
the in-band pickle, each buffer 64-byte aligned): the only copy on the way in. Only the
frames are scanned for `__main__` (a raw payload is data, not a reference).
`decode_laid_out` copies each out-of-band buffer once on the way out, or, for a caller
that asks, hands numpy read-only views of shared memory: no copy at all (see
`Subscription.recv(view=True)` for how long they stay valid). The emitter encodes the
next event in parts whenever the last one was large: the events of one bus tend to be
alike, and a small event encoded that way costs only a microsecond more.

## Why not cloudpickle for everything

cloudpickle's pickler runs a Python-level hook for every object; for a small dict that is
several times slower than the C pickler, and the hot path pays it on every `emit`.
`decode` is always plain `pickle.loads`: cloudpickle output is ordinary pickle data.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any, Callable, NoReturn

import cloudpickle

from ._errors import DeserializationError, SerializationError

PROTOCOL = 5
"""Protocol 5 hands large `bytes` and buffers to the writer whole (see above)."""

_RAW_PAYLOAD = 256 * 1024
"""A part at least this long is a raw payload: a frame of opcodes holds under 64 KiB
plus one opcode whose argument is under 64 KiB (larger ones are written on their own)."""

_MAIN_REFERENCE = b"__main__"
_STACK_GLOBAL = 0x93
"""An int, not b"\x93": `bytes in bytes` makes and drops an exception before it searches,
and an int goes straight to memchr, ten times faster."""


def encode(event: Any) -> bytes:
    """Pickle `event` so that any process of this user can load it."""
    data = plain_pickle(event)
    return data if data is not None else _encode_by_value(event)


def plain_pickle(event: Any) -> bytes | None:
    """`event` pickled by the C pickler, or None if that pickle would not load in another
    process (see the module docstring): then only `encode` serves. The compiled core's
    `Fanout.fast_emit` follows the same rule."""
    try:
        data = pickle.dumps(event, PROTOCOL)
    except Exception:
        return None
    # Only a reference to a class or function names a module, and in protocol 5 that is
    # STACK_GLOBAL's doing (EXT codes name none): one byte looked for first, since most
    # events name nothing and a search for a word costs a third of the pickling.
    if _STACK_GLOBAL in data and data.find(_MAIN_REFERENCE) >= 0:
        return None
    return data


def encode_batch(events: list[Any]) -> bytes | None:
    """`events` pickled as one list, if nothing in them names a class or function: then
    no code runs when it is loaded, so it cannot fail for one event and not the others.
    None if they do (send them one by one, so that an event a subscriber cannot load is
    reported alone, not with its chunk-mates).

    Pickling a list of small events costs a third of pickling them one by one, and
    loading it less than half (one C-level call each way, and a memo shared by all).
    """
    out = io.BytesIO()
    pickler = _PlainOnly(out, PROTOCOL)
    try:
        pickler.dump(events)
    except Exception:
        return None  # found out one by one, for the event's own error
    if pickler.named:
        return None
    return out.getvalue()


class _PlainOnly(pickle.Pickler):
    """A pickler that notes whether anything it pickled names a class or function.

    The C pickler asks `reducer_override` about every object except None, True, False
    and exact ints, floats, bytes, str, dicts, sets, frozensets, lists, tuples, bytearrays
    and pickle buffers, which it pickles by value; everything else (an instance, a class,
    a function, a subclass of those types) is named in the pickle. So plain data costs
    nothing more, and the answer is exact: a search of the pickle for the opcodes that
    name things also finds their bytes among the data (an event with a nanosecond
    timestamp has some nearly always) and sent every such chunk event by event.
    """

    named = False

    def reducer_override(self, obj: Any) -> Any:
        self.named = True
        return NotImplemented  # pickled as it would be without this


class Parts:
    """A large event's pickle as it goes into shared memory: the in-band pickle in
    pieces (written one after another) and the out-of-band buffers (written each on its
    own, 64-byte aligned). `len()` is its size in bytes, as laid out (see `layout`)."""

    __slots__ = ("pieces", "inband", "buffers", "readonly", "size")

    def __init__(self, pieces: list[Any], buffers: list[memoryview],
                 readonly: list[bool]) -> None:
        self.pieces = pieces
        self.inband = sum(map(len, pieces))
        self.buffers = buffers
        self.readonly = readonly
        self.size = layout(self.inband, [len(b) for b in buffers])[-1]

    def __len__(self) -> int:
        return self.size

    def names_main(self) -> bool:
        return any(_MAIN_REFERENCE in piece for piece in self.pieces
                   if len(piece) < _RAW_PAYLOAD)

    def write_into(self, view: memoryview) -> None:
        """Lay this event out at the start of `view` (at least `len(self)` bytes)."""
        offsets = layout(self.inband, [len(b) for b in self.buffers])
        _HEADER.pack_into(view, 0, len(self.buffers), 0, self.inband)
        for index, (buffer, readonly) in enumerate(zip(self.buffers, self.readonly)):
            _BUFFER.pack_into(view, _HEADER.size + index * _BUFFER.size,
                              offsets[index + 1], len(buffer), int(readonly))
        position = offsets[0]
        for piece in self.pieces:
            view[position : position + len(piece)] = piece
            position += len(piece)
        for index, buffer in enumerate(self.buffers):
            view[offsets[index + 1] : offsets[index + 1] + len(buffer)] = buffer

    def copied(self) -> "Parts":
        """The same event with every piece and buffer copied: what the caller's objects
        hold now, whatever they hold later."""
        return Parts([bytes(p) for p in self.pieces], [memoryview(bytes(b)) for b in
                                                       self.buffers], self.readonly)


_HEADER = struct.Struct("<IIQ")  # buffer count, reserved, in-band pickle length
_BUFFER = struct.Struct("<QQQ")  # offset, length, read-only
_ALIGN = 64


def layout(inband: int, buffers: list[int]) -> list[int]:
    """Offsets of the in-band pickle and of each buffer in a laid-out large event, then
    its total size."""
    position = _HEADER.size + len(buffers) * _BUFFER.size
    offsets = [position]
    position += inband
    for size in buffers:
        position = -(-position // _ALIGN) * _ALIGN
        offsets.append(position)
        position += size
    offsets.append(position)
    return offsets


def encode_in_parts(event: Any) -> "Parts | bytes":
    """As `encode`, without copying large buffers (see the module docstring)."""
    pieces: list[Any] = []
    buffers: list[pickle.PickleBuffer] = []
    try:
        pickle.Pickler(_Collector(pieces), PROTOCOL, buffer_callback=buffers.append).dump(event)
        raw = [b.raw() for b in buffers]
    except Exception:  # BufferError: a buffer that is not contiguous
        return _encode_by_value(event)
    parts = Parts([memoryview(p).cast("B") if not isinstance(p, bytes) else p
                   for p in pieces], raw, [r.readonly for r in raw])
    if parts.names_main():
        return _encode_by_value(event)
    return parts


def decode_laid_out(view: memoryview, lend: "Callable[[int, int], memoryview] | None" = None
                    ) -> Any:
    """Unpickle a large event laid out by `Parts.write_into`.

    The out-of-band buffers (numpy arrays, `PickleBuffer`s) are copied once; or, with
    `lend`, each is `lend(offset, length)` (offsets from the start of `view`): a view of
    the memory itself, which the event then holds.
    """
    count, _, inband = _HEADER.unpack_from(view, 0)
    start = _HEADER.size + count * _BUFFER.size
    buffers: list[Any] = []
    for index in range(count):
        offset, length, readonly = _BUFFER.unpack_from(view, _HEADER.size + index * _BUFFER.size)
        if lend is not None:
            buffers.append(lend(offset, length))
        else:
            with view[offset : offset + length] as data:
                buffers.append(bytes(data) if readonly else bytearray(data))
    with view[start : start + inband] as pickled:
        return decode(pickled, buffers)


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


def decode(data: Any, buffers: "list[Any] | None" = None) -> Any:
    """Unpickle one event; a failure is reported for this event alone.

    An event whose unpickling raises, even `KeyboardInterrupt` or `SystemExit`, is
    undecodable, not an interruption of the caller. But a signal handler's exception (a
    real Ctrl-C, `signal.alarm` raising `TimeoutError`) may land while an event is being
    unpickled; it is told apart by unpickling once more: only an event that raises the
    same again is the event's doing (see `_interrupted_or_undecodable`).
    """
    try:
        return pickle.loads(data, buffers=buffers)
    except BaseException as exc:
        _interrupted_or_undecodable(exc, lambda: pickle.loads(data, buffers=buffers))


def _interrupted_or_undecodable(exc: BaseException, again: Callable[[], Any]) -> NoReturn:
    """Raise `exc` (an interruption: nothing is consumed) if unpickling succeeds on a
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
