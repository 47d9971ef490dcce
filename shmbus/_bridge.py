"""Moved: the bridge is `shmbus.nats.Bridge` and `shmbus.nats.run_bridge` now.

This name stays, re-exporting them, only while the CLI still imports it from here.
"""

from __future__ import annotations

from .nats import Bridge, run_bridge

__all__ = ["Bridge", "run_bridge"]
