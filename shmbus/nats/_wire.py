"""The wire format: what the bridge and every remote subscription must agree on.

## Shape

One stream per bus, `SHMBUS_<NAME>`, with subject `shmbus.<NAME>` (dots become `_`: NATS
reserves them). Each event is one message:

- its body is the event exactly as it lay in the bus's shared memory (`RawEvent.data`):
  the pickle, or, for a large event, its layout (the pickle and its out-of-band buffers,
  see `_codec.Parts`), which the header `Shmbus-Laid-Out: 1` marks;
- its `Nats-Msg-Id` is `<bus>:<seq>`: the bus instance's id (`LocalSubscription.bus_id`)
  and the event's own number on that bus (`RawEvent.seq`).

Two kinds of marker share the numbering: `Shmbus-Lost: <why>` stands for an event that
cannot be carried (too large for the server), and `Shmbus-End: closed` or `emitter
died`, id `<bus>:end`, ends the stream. A message without such an id is not a bridge's,
and is skipped.

## Why the bytes from shared memory, and not a pickle made again

The bridge never unpickles: an event goes out as the emitter pickled it, so the bridge
costs no decode and encode per event, and carries events its own process could not
unpickle (a class only the subscribers import). Both body forms decode with
`RawEvent.decode()`, which is what a local subscriber would have run.

## Why the bus's numbers in the id

An id that means the same event to every bridge is what lets JetStream's de-duplication
drop the copy a retrying or second bridge sends, and what lets a remote subscriber tell
a skipped number (lost events) from a late one (a redelivery). A counter of the bridge's
own would restart with the bridge and collide with ids still in the duplicate window.

This module imports nothing from nats-py: it is names, strings and bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._errors import DeserializationError, InvalidArgument, shown
from .._receiver import EndReason
from .._registry import validate_name
from .._subscription import RawEvent

REMOTE_SCHEME = "nats://"
STREAM_PREFIX = "SHMBUS_"
SUBJECT_PREFIX = "shmbus."

MSG_ID = "Nats-Msg-Id"
END = "Shmbus-End"
LOST = "Shmbus-Lost"
LAID_OUT = "Shmbus-Laid-Out"
END_ID = "end"

HEADROOM = 256
"""Bytes a message needs beyond its body (headers, protocol line) under `max_payload`."""

_DURABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,255}")


# -- names --------------------------------------------------------------------------------


def stream_for(bus: str) -> str:
    """The JetStream stream a bridge publishes bus `bus` to, unless told another."""
    return STREAM_PREFIX + bus.replace(".", "_")


def subject_for(bus: str) -> str:
    """The subject of bus `bus`'s events: grant publishing on it to its bridge only."""
    return SUBJECT_PREFIX + bus.replace(".", "_")


def message_id(bus_id: str, seq: int | str) -> str:
    return f"{bus_id}:{seq}"


def description_for(bus: str) -> str:
    return f"shmbus bus {bus}"


def validate_stream(stream: str) -> str:
    if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
        raise InvalidArgument(f"invalid stream name {shown(stream)}: use A-Z a-z 0-9 _ -")
    return stream


def validate_durable(durable: str) -> str:
    if not isinstance(durable, str) or not _DURABLE.fullmatch(durable):
        raise InvalidArgument(
            f"invalid durable name {shown(durable)}: use 1 to 64 of A-Z a-z 0-9 _ -")
    return durable


# -- addresses ----------------------------------------------------------------------------


def redact(url: str) -> str:
    """`url` fit for messages and logs: a password or token replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = credentials.partition(":")
    hidden = f"{user}:***" if colon else "***"  # a lone `TOKEN@host` is a secret too
    return f"{scheme}{sep}{hidden}@{hosts}{slash}{tail}"


def scrub(text: str, servers: list[str]) -> str:
    """`text` (a message from nats-py, say) with the secrets of `servers` hidden."""
    for server in servers:
        netloc = server.partition("://")[2].partition("/")[0]
        credentials = netloc.rpartition("@")[0]
        secret = credentials.partition(":")[2] or credentials
        if secret:
            text = text.replace(secret, "***")
    return text


def parse_servers(url: str) -> list[str]:
    """`nats://a:4222,b:4222` (or a bare `host:port`) as the list nats-py connects to."""
    if not isinstance(url, str):
        raise InvalidArgument(f"a NATS server is a URL, nats://HOST:PORT, not {shown(url)}")
    if "://" not in url:
        url = REMOTE_SCHEME + url
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if not netloc:
        raise InvalidArgument(
            f"no NATS server in {shown(redact(url), 80)}: use nats://HOST:PORT")
    credentials, at, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{credentials}{at}"
    return [prefix + host for host in hosts.split(",")]


@dataclass(frozen=True)
class RemoteAddress:
    """What `nats://HOST:PORT/NAME?durable=D&stream=S` names."""

    url: str = field(repr=False)
    servers: list[str] = field(repr=False)
    bus: str
    stream: str
    durable: str | None

    @property
    def subject(self) -> str:
        return subject_for(self.bus)

    @property
    def shown(self) -> str:
        """The URL without its password: the only form a message or a log may carry."""
        return redact(self.url)

    @classmethod
    def parse(cls, url: str, durable: str | None = None) -> "RemoteAddress":
        if not isinstance(url, str) or not url.startswith(REMOTE_SCHEME):
            shown_url = shown(redact(url) if isinstance(url, str) else url, 80)
            raise InvalidArgument(
                f"a remote bus is named nats://HOST:PORT/NAME, not {shown_url}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed [IPv6 address, say
            raise InvalidArgument(f"{shown(redact(url), 80)} is not a URL: {exc}") from exc
        bus = validate_name(parts.path.lstrip("/"))
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        unknown = set(query) - {"durable", "stream"}
        if unknown:
            raise InvalidArgument(f"unknown option(s) {sorted(unknown)} in "
                                  f"{shown(redact(url), 80)}; use durable=NAME and/or "
                                  "stream=NAME")
        durable = durable or query.get("durable")
        if durable is not None:
            validate_durable(durable)
        stream = validate_stream(query.get("stream") or stream_for(bus))
        servers = parse_servers(f"{parts.scheme}://{parts.netloc}")
        return cls(url, servers, bus, stream, durable)


# -- what the bridge publishes ------------------------------------------------------------


@dataclass
class Message:
    """One message for the stream: an event, a lost-event marker, or the end marker."""

    seq: int | None  # None for the end marker
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def event_message(bus_id: str, event: RawEvent, max_payload: int) -> Message:
    """`event` as the message that carries it, or a lost marker if the server's
    `max_payload` cannot hold it."""
    if len(event.data) + HEADROOM > max_payload:
        return lost_message(bus_id, event.seq,
                            f"its {len(event.data)} bytes exceed the NATS server's "
                            f"max_payload of {max_payload} bytes")
    headers = {MSG_ID: message_id(bus_id, event.seq)}
    if event.laid_out:
        headers[LAID_OUT] = "1"
    return Message(event.seq, event.data, headers)


def lost_message(bus_id: str, seq: int, why: str) -> Message:
    # A header value is one line.
    return Message(seq, b"", {MSG_ID: message_id(bus_id, seq),
                              LOST: why.replace("\r", " ").replace("\n", " ")})


def end_message(bus_id: str, reason: EndReason) -> Message:
    return Message(None, b"", {MSG_ID: message_id(bus_id, END_ID), END: reason.value})


# -- what a remote subscription reads -----------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """What a message of a bus's stream stands for."""

    bus_id: str
    seq: int | None  # None for the end marker
    end: EndReason | None = None
    lost: str | None = None
    laid_out: bool = False


def read_envelope(headers: Mapping[str, str] | None) -> Envelope | None:
    """The meaning of a message with these headers, or None if no bridge wrote it."""
    headers = headers or {}
    bus_id, _, tail = headers.get(MSG_ID, "").partition(":")
    if not bus_id or not tail:
        return None
    if tail == END_ID:
        try:
            reason = EndReason(headers.get(END, EndReason.CLOSED.value))
        except ValueError:
            reason = EndReason.CLOSED
        return Envelope(bus_id, None, end=reason)
    if not tail.isdigit():
        return None
    return Envelope(bus_id, int(tail), lost=headers.get(LOST),
                    laid_out=headers.get(LAID_OUT) == "1")


def decode_body(envelope: Envelope, body: bytes) -> Any:
    """The event a message carries, as a local subscriber would have received it."""
    assert envelope.seq is not None
    try:
        return RawEvent(envelope.seq, body, envelope.laid_out).decode()
    except DeserializationError:
        raise
    except Exception as exc:  # a layout cut short or made by something else
        raise DeserializationError(
            f"event {envelope.seq} arrived malformed ({len(body)} bytes laid out): "
            f"{exc!r}; it has been consumed, the next recv() returns the next event"
        ) from exc
