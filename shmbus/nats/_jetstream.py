"""The server side: connecting to NATS, and the bus's stream on it.

## Shape

`connect` fails fast when nothing answers at first (a wrong URL is a mistake to report,
not an outage to wait out), then reconnects forever: once running, a bridge and a
remote subscription outlive server restarts. `ensure_stream` creates the bus's stream or
checks that the one there is it; `require_jetstream` turns a server without JetStream
into one clear error. Both the bridge and a remote subscription use them, with the same
configuration, so whichever starts first makes the stream the other expects.

## The stream: interest retention, discard new

Each remote subscription is a durable pull consumer, and the stream keeps a message until
every consumer has acknowledged it (interest retention). So, as on the local bus, every
subscriber gets every event and the slowest one sets the pace: the stream is bounded
(`max_msgs`, `max_bytes`, discard policy *new*), a subscriber that stops reading fills
it, the server refuses the bridge's next publish, the bridge stops reading its ring and
the local emitter blocks. Limits retention would never free a slot, since
acknowledgements remove nothing, and a work queue would hand each event to one
subscriber only. Like a local bus, a message no consumer existed for is not kept.

Every message says which server it is about with `redact(url)`: never a password.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from .._errors import NatsError, NatsUnavailable
from ._wire import description_for, scrub, subject_for

log = logging.getLogger("shmbus.nats")

DEFAULT_MAX_MSGS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a message id: a retry or a second bridge arriving later
than this would store a duplicate (the subscriber still skips it, by number)."""
CONNECT_TIMEOUT = 2.0
RECONNECT_WAIT = 0.25
API_TIMEOUT = 5.0

_STREAM_NAME_IN_USE = 10058


async def connect(servers: list[str], url: str, *, name: str,
                  reconnected_cb: Callable[[], Awaitable[None]] | None = None,
                  disconnected_cb: Callable[[], Awaitable[None]] | None = None) -> NatsClient:
    """A connection that fails fast if nothing answers now, and reconnects forever later.

    `url` is the redacted URL, for messages.
    """

    async def quietly(exc: Exception) -> None:
        log.debug("nats %s: %r", url, exc)

    options: dict[str, Any] = {}
    if reconnected_cb is not None:
        options["reconnected_cb"] = reconnected_cb
    if disconnected_cb is not None:
        options["disconnected_cb"] = disconnected_cb
    try:
        nc = await nats.connect(
            servers, name=name, connect_timeout=CONNECT_TIMEOUT, max_reconnect_attempts=1,
            reconnect_time_wait=0.1, error_cb=quietly, **options,
        )
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        raise NatsUnavailable(
            f"no NATS server answers at {url} ({scrub(repr(exc), servers)}); start one "
            "with JetStream on (`nats-server -js`) or pass the URL of a running one"
        ) from exc
    # From now on an outage is waited out; nats-py reads these options at each attempt.
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = RECONNECT_WAIT
    return nc


def stream_config(bus: str, stream: str, max_msgs: int, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=stream,
        description=description_for(bus),
        subjects=[subject_for(bus)],
        retention=RetentionPolicy.INTEREST,
        discard=DiscardPolicy.NEW,
        max_msgs=max_msgs,
        max_bytes=max_bytes,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
    )


async def ensure_stream(js: JetStreamContext, url: str, bus: str, stream: str, *,
                        max_msgs: int | None = None, max_bytes: int | None = None) -> None:
    """Create the bus's stream, or check that the existing one is it.

    Limits given are applied to an existing stream; limits left out keep its own.
    """
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        config = stream_config(bus, stream, max_msgs or DEFAULT_MAX_MSGS,
                               max_bytes or DEFAULT_MAX_BYTES)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # not made by someone else meanwhile
                raise _stream_refused(url, stream, exc) from exc
        except nats.js.errors.APIError as exc:
            raise _stream_refused(url, stream, exc) from exc
        return
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
        raise NatsError(
            f"the NATS server at {url} has JetStream turned off; start it with "
            "`nats-server -js`"
        ) from exc
    existing = info.config
    if (existing.subjects != [subject_for(bus)]
            or existing.retention != RetentionPolicy.INTEREST
            or existing.discard != DiscardPolicy.NEW):
        raise NatsError(
            f"stream {stream!r} at {url} is not the stream of bus {bus!r} (subjects "
            f"{existing.subjects}, {existing.retention} retention, discard "
            f"{existing.discard}); pass another stream name, or delete that stream"
        )
    wanted = {"max_msgs": max_msgs or existing.max_msgs,
              "max_bytes": max_bytes or existing.max_bytes}
    if (existing.max_msgs, existing.max_bytes) != (wanted["max_msgs"], wanted["max_bytes"]):
        await js.update_stream(existing.evolve(**wanted))


def _stream_refused(url: str, stream: str, exc: Exception) -> NatsError:
    return NatsError(f"the NATS server at {url} refused to create stream {stream!r}: {exc!r}")


async def require_jetstream(js: JetStreamContext, url: str) -> None:
    try:
        await js.account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.APIError,
            nats.errors.TimeoutError) as exc:
        raise NatsError(
            f"the NATS server at {url} has no JetStream ({exc!r}); start it with "
            "`nats-server -js`"
        ) from exc


async def reset_consumer(nc: NatsClient, stream: str, consumer: str) -> None:
    """Make the server forget what it delivered and was not acknowledged: it comes
    again, in stream order, from the acknowledgement floor.

    The JetStream API call directly (nats-server 2.14+), not nats-py's wrapper, which
    only recent nats-py releases have.
    """
    reply = await nc.request(f"$JS.API.CONSUMER.RESET.{stream}.{consumer}", b"",
                             timeout=API_TIMEOUT)
    error = json.loads(reply.data).get("error")
    if error:
        nats.js.errors.APIError.from_error(error)  # raises the matching error
