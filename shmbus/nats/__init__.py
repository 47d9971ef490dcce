"""The scale-out layer: a bus carried to NATS JetStream and read back on any host.

(Being restructured: for now it re-exports the modules that still live beside the core.)
"""

from __future__ import annotations

from typing import Any

from .._remote import RemoteSubscription, subscribe_remote


def __getattr__(name: str) -> Any:
    if name in ("Bridge", "run_bridge"):
        from .. import _bridge

        return getattr(_bridge, name)
    raise AttributeError(f"module 'shmbus.nats' has no attribute {name!r}")


__all__ = ["Bridge", "RemoteSubscription", "run_bridge", "subscribe_remote"]
