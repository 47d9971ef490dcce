"""`shmbus.subscribe`: the one entry point that spans the layers.

## Shape

A name is a local bus (`jobs`), read through shared memory by a `LocalSubscription`, or
`nats://host:port/jobs`, read back from NATS JetStream by a
`shmbus.nats.RemoteSubscription` (what `shmbus bridge` publishes there). Both are a
`Subscription`, so the code that reads does not care which.

## Why here, and not in `_subscription`

The local core never imports the NATS layer (an import contract checks it): that layer
needs an optional extra, and builds on the core, not the other way round. This module
sits above both and imports the NATS layer only for a `nats://` name.
"""

from __future__ import annotations

import math

from ._errors import InvalidArgument, shown
from ._subscription import Subscription, subscribe_local

REMOTE_SCHEME = "nats://"


def subscribe(name: str, *, capacity: int | None = None, wait: float = 0.0) -> Subscription:
    """Subscribe to the bus called `name`, from any process of the same user.

    The subscription receives every event whose `emit` begins after this returns, in
    order, once each. `capacity` is how many events it holds before the emitter waits
    for it (default: the bus's). Raises `BusNotFound` if no live bus has that name, after
    waiting up to `wait` seconds for one to appear (`math.inf`: as long as it takes),
    so that subscribers may start before their emitter.

    `name` may also be `nats://HOST:PORT/NAME`: bus NAME as a bridge (`shmbus bridge`)
    publishes it to NATS JetStream, read from any host (needs `pip install
    'shmbus[nats]'`; see `shmbus.nats`).
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"subscribe() takes a bus name, a str, got {shown(name)}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise InvalidArgument(f"wait must be a number of seconds >= 0, got {shown(wait)}")
    if name.startswith(REMOTE_SCHEME):
        from .nats import subscribe_remote  # the optional layer, only when asked for

        return subscribe_remote(name, capacity=capacity, wait=wait)
    return subscribe_local(name, capacity=capacity, wait=math.inf if wait >= 1e15
                           else float(wait))  # an int too large for a float waits forever
