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
from ._member import subscribe_queue
from ._subscription import Subscription, subscribe_local

REMOTE_SCHEME = "nats://"


def subscribe(name: str, *, capacity: int | None = None, wait: float = 0.0,
              history: bool = False, group: str | None = None, durable: str | None = None,
              auto_ack: bool = True, expire_after: float | None = None) -> Subscription:
    """Subscribe to the bus called `name`, from any process of the same user.

    The subscription receives every event whose `emit` begins after this returns, in
    order, once each. `capacity` is how many events it holds before the emitter waits
    for it (default: the bus's). Raises `BusNotFound` if no live bus has that name, after
    waiting up to `wait` seconds for one to appear (`math.inf`: as long as it takes),
    so that subscribers may start before their emitter.

    With `group="workers"`, this process joins group `workers` instead: the group's
    members share one ring (the emitter waits for it as for one subscriber), and each
    event goes to one of them. With `durable="bridge1"`, it takes durable subscription
    `bridge1`: a ring that outlives this process, and that the next process subscribing
    with the same name resumes. Either way an event is the member's until it is finished,
    by the next `recv` (`auto_ack`) or by `ack()`, and is given to another member (or the
    next owner) if its process dies first. A durable subscription without an owner is
    removed after `expire_after` seconds (default `DEFAULT_EXPIRE_AFTER`). See
    `QueueSubscription`.

    With `history=True`, the subscription first receives the last events emitted before
    it joined, as many as the bus keeps (`EventEmitter(name, history=K)`), then the live
    stream: no gap, no repeat. Its ring holds at least K events. For a group or a durable
    subscription, this applies when the call creates its ring.

    `name` may also be `nats://HOST:PORT/NAME`: bus NAME as a bridge (`shmbus bridge`)
    publishes it to NATS JetStream, read from any host (needs `pip install
    'shmbus[nats]'`; see `shmbus.nats`).
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"subscribe() takes a bus name, a str, got {shown(name)}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise InvalidArgument(f"wait must be a number of seconds >= 0, got {shown(wait)}")
    wait = math.inf if wait >= 1e15 else float(wait)  # an int too large for a float, too
    queued = group is not None or durable is not None
    if name.startswith(REMOTE_SCHEME):
        if queued or not auto_ack or expire_after is not None or history:
            raise InvalidArgument(
                "group=, durable=, auto_ack=, expire_after= and history= are for a bus on "
                "this host; "
                "a remote subscription names its durable consumer in the URL "
                "(nats://HOST:PORT/NAME?durable=NAME)")
        from .nats import subscribe_remote  # the optional layer, only when asked for

        return subscribe_remote(name, capacity=capacity, wait=wait)
    if queued:
        return subscribe_queue(name, group=group, durable=durable, capacity=capacity,
                               wait=wait, auto_ack=auto_ack, expire_after=expire_after,
                               history=history)
    if not auto_ack or expire_after is not None:
        raise InvalidArgument("auto_ack= and expire_after= apply to a group or a durable "
                              "subscription only")
    return subscribe_local(name, capacity=capacity, wait=wait, history=history)
