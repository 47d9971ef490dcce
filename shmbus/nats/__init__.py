"""shmbus.nats: a bus carried to NATS JetStream, and read back on any host.

    from shmbus.nats import Bridge, run_bridge        # on the bus's host
    run_bridge("jobs", "nats://nats-host:4222")

    import shmbus                                     # on any host
    for event in shmbus.subscribe("nats://nats-host:4222/jobs?durable=worker1"):
        ...

Needs the `nats` extra (nats-py): `pip install 'shmbus[nats]'`. The modules, one concept
each: `_wire` (names, message ids, markers, URLs), `_jetstream` (the connection and the
stream), `_publisher` and `_pump` (the bridge's publishing, leadership and standby),
`_bridge` (`Bridge`), `_loop`, `_notice`, `_feed` and `_order` (a remote
subscription's loop thread, wake-ups, consumer and ordering), `_remote`
(`RemoteSubscription`). docs/design.md tells the whole story.
"""

from __future__ import annotations

from .._errors import NatsError


class MissingExtra(NatsError, ModuleNotFoundError):
    """nats-py is not installed: the NATS layer cannot be imported."""


try:
    import nats as _nats_py  # noqa: F401  (nats-py, not this package)
except ImportError as _exc:
    raise MissingExtra(
        "shmbus.nats needs nats-py, which is not installed: pip install 'shmbus[nats]'",
        name="nats",
    ) from _exc

from ._bridge import Bridge, run_bridge
from ._jetstream import DEFAULT_MAX_BYTES, DEFAULT_MAX_MSGS
from ._remote import DEFAULT_CAPACITY, RemoteSubscription, subscribe_remote
from ._wire import stream_for, subject_for

__all__ = (
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MSGS",
    "Bridge",
    "RemoteSubscription",
    "run_bridge",
    "stream_for",
    "subject_for",
    "subscribe_remote",
)
